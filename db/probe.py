"""The RLS probe (rls_probe.sql): isolation proved by behaviour on the live database, in a
transaction that always rolls back. `todo-api check --deep` runs it with psql, as people do."""

import subprocess
from pathlib import Path

from db.connection import psql_path

PROBE_SQL = Path(__file__).with_name("rls_probe.sql")


def run_probe(url: str, claims: str = "{}") -> bool:
    """Print the probe's TAP lines to stdout; True when every check passed. `claims` (JSON)
    are the synthetic users' token claims, for restrictive policies that read them."""
    command = [psql_path(), "--no-psqlrc", "-v", "ON_ERROR_STOP=1", "-v", f"claims={claims}"]
    return subprocess.run([*command, "-f", str(PROBE_SQL), url], check=False).returncode == 0
