"""The RLS probe (rls_probe.sql): isolation proved by behaviour on the live database, in a
transaction that always rolls back. `todo-api check --deep` runs it with psql, as people do."""

import os
import subprocess
from pathlib import Path

from db.connection import psql_path

PROBE_SQL = Path(__file__).with_name("rls_probe.sql")


def run_probe(url: str, claims: str) -> bool:
    """Print the probe's TAP lines to stdout; True when every check passed. `claims` (JSON)
    are the synthetic users' token claims, for restrictive policies that read them."""
    command = [psql_path(), "--no-psqlrc", "-v", "ON_ERROR_STOP=1", "-v", f"claims={claims}"]
    # From the folder above db/, psql names the file in its messages as the README shows.
    probe = subprocess.run(
        [*command, "-f", f"{PROBE_SQL.parent.name}/{PROBE_SQL.name}", url],
        cwd=PROBE_SQL.parent.parent,
        env={"PGCONNECT_TIMEOUT": "10", **os.environ},
        check=False,
    )
    return probe.returncode == 0
