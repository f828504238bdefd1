"""The `todo-api` command: migrate, serve, check, psql, token."""

import argparse
import asyncio
import json
import logging
import os
import re
import signal
import subprocess
import sys
import tempfile
from contextlib import nullcontext
from uuid import UUID

import psycopg
from pydantic import ValidationError

from api import identity, logs
from api.main import pool_for
from api.settings import Settings, get_settings
from db import safety
from db.connection import EMBEDDED_DATA, PROJECT_ROOT, psql_path, resolve_url, sqlalchemy_url
from db.probe import run_probe
from db.transaction import RUNTIME_ROLE

log = logging.getLogger("todo.cli")

# The development issuer's secret lives beside the embedded database's data.
DEV_KEY_FOLDER = EMBEDDED_DATA.parent
TTL_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def ttl_seconds(text: str) -> int:
    """`90s`, `15m`, `1h` or `7d` in seconds."""
    match = re.fullmatch(r"([1-9][0-9]{0,5})([smhd])", text)
    if not match:
        raise argparse.ArgumentTypeError("write it as a number and a unit: 90s, 15m, 1h or 7d")
    return int(match[1]) * TTL_UNITS[match[2]]


def json_object(text: str) -> str:
    """A JSON object, as the probe's claims must be."""
    try:
        valid = isinstance(json.loads(text), dict)
    except ValueError:
        valid = False
    if not valid:
        raise argparse.ArgumentTypeError("write it as a JSON object: '{\"emailVerified\": true}'")
    return text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="todo-api", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("migrate", help="apply the Alembic migrations (schema and policies.sql)")
    serve = commands.add_parser("serve", help="check the database, then serve the API")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1)
    check = commands.add_parser(
        "check", help="verify that the database enforces per-user isolation"
    )
    check.add_argument(
        "--deep",
        action="store_true",
        help="then prove it by behaviour: the rolled-back RLS probe (db/rls_probe.sql), via psql",
    )
    check.add_argument(
        "--claims",
        type=json_object,
        metavar="JSON",
        help="with --deep: the probe's users' token claims, for restrictive policies reading them",
    )
    psql = commands.add_parser("psql", help=f"open psql as {RUNTIME_ROLE} with a user's context")
    who = psql.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", type=UUID, help="the user id (a UUID)")
    who.add_argument("--subject", help="a token's sub; the user id is derived as the API does")
    psql.add_argument("--issuer", help="the token's iss (with --subject)")
    token = commands.add_parser("token", help="print a token from the development issuer")
    token.add_argument("--user", type=UUID, required=True, help="the user id (a UUID)")
    token.add_argument("--ttl", type=ttl_seconds, default="1h", help="lifetime, e.g. 15m, 1h")
    args = parser.parse_args(argv)
    if args.command == "psql" and (args.subject is None) != (args.issuer is None):
        parser.error("--subject and --issuer go together")
    if args.command == "check" and args.claims and not args.deep:
        parser.error("--claims goes with --deep")

    try:
        settings = get_settings()
    except ValidationError as error:
        sys.exit(f"todo-api: {settings_problems(error)}")
    # The server logs to stdout; every other command keeps its stdout for what it prints.
    logs.configure(settings.log_format, sys.stdout if args.command == "serve" else sys.stderr)
    try:
        if args.command == "token":
            print_dev_token(settings, args.user, args.ttl)
            return
        if args.command == "serve" and not settings.identity_configured:
            use_dev_issuer(settings.neon_database_url)
        url = resolve_url(settings.neon_database_url)
    except ValueError as error:
        sys.exit(f"todo-api: {error}")
    if args.command == "migrate":
        migrate(url)
    elif args.command == "check":
        passed = print_checks(url)
        if args.deep:
            sys.stdout.flush()  # psql writes to the same stdout
            passed = run_probe(url, args.claims or "{}") and passed
        sys.exit(0 if passed else 1)
    elif args.command == "serve":
        if not print_checks(url):
            sys.exit("todo-api: refusing to serve: this database does not enforce isolation.")
        serve_api(url, args.host, args.port, args.workers)
    elif args.command == "psql":
        if args.subject is not None:
            args.user = identity.user_id_for(args.issuer, args.subject)
        sys.exit(open_psql(url, args.user))


def settings_problems(error: ValidationError) -> str:
    """What is wrong with the settings, without pydantic's echo of the input (secrets too)."""
    problems = []
    for problem in error.errors():
        setting = "".join(str(part) for part in problem["loc"]).upper()
        message = problem["msg"].removeprefix("Value error, ")
        problems.append(f"{setting}: {message}" if setting else message)
    return "; ".join(problems)


def use_dev_issuer(neon_database_url: str | None) -> None:
    """With no identity configured, trust the development issuer, but only on the embedded
    database: anywhere else, refuse (ValueError)."""
    if neon_database_url:
        raise ValueError(f"refusing to serve: {identity.NOT_CONFIGURED}")
    # The environment carries it to the server (and to every worker process).
    os.environ["AUTH_JWT_SECRET"] = identity.dev_secret(DEV_KEY_FOLDER)
    os.environ["AUTH_ISSUER"] = identity.DEV_ISSUER
    get_settings.cache_clear()
    log.info("identity: the development issuer; `todo-api token --user <uuid>` prints a token")


def print_dev_token(settings: Settings, user_id: UUID, ttl_s: int) -> None:
    if settings.neon_database_url or settings.identity_configured:
        raise ValueError(
            "the development issuer is trusted only on the embedded database (NEON_DATABASE_URL"
            " unset) with no AUTH_* identity configured: get tokens from your identity provider"
        )
    print(identity.dev_token(identity.dev_secret(DEV_KEY_FOLDER), user_id, ttl_s))


def migrate(url: str) -> None:
    from alembic import command
    from alembic.config import Config

    config = Config(str(PROJECT_ROOT / "alembic.ini"))
    config.attributes["url"] = sqlalchemy_url(url)
    command.upgrade(config, "head")


def print_checks(url: str) -> bool:
    """Print each check as it stands; True when all pass."""

    async def run() -> list[safety.Check]:
        settings = get_settings()
        pool = pool_for(settings, url)
        try:
            # Retries with backoff: a Neon compute may be waking up.
            await pool.open(wait=True, timeout=settings.db_reconnect_timeout_s)
            async with pool.connection() as conn:
                return await safety.run_checks(conn)
        finally:
            await pool.close()

    try:
        checks = asyncio.run(run())
    except psycopg.OperationalError as error:
        print(f"FAIL  database reachable: {error}", file=sys.stderr)
        print("      fix: check NEON_DATABASE_URL and that the database is up", file=sys.stderr)
        return False
    for check in checks:
        print(f"{'ok  ' if check.ok else 'FAIL'}  {check.name}")
        if not check.ok:
            print(f"      fix: {check.fix}")
    return not safety.failures(checks)


def serve_api(url: str, host: str, port: int, workers: int) -> None:
    import uvicorn

    # Workers read the database from the environment; this hands them the one just checked
    # (the embedded server keeps running while this process lives).
    os.environ["NEON_DATABASE_URL"] = url
    # After a graceful shutdown uvicorn re-raises the signal it caught; the work is done by
    # then, so exit 0 rather than die by the signal.
    for stop in (signal.SIGTERM, signal.SIGINT):
        signal.signal(stop, lambda *_: sys.exit(0))
    # Several workers each write their metrics to files in one folder; /metrics sums them.
    shared = tempfile.TemporaryDirectory(prefix="todo-metrics-") if workers > 1 else nullcontext()
    with shared as metrics_dir:
        if metrics_dir:
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
        uvicorn.run(
            "api.main:create_app",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            # SIGTERM: stop accepting, finish in-flight requests (at most this long), close
            # the pool.
            timeout_graceful_shutdown=get_settings().shutdown_timeout_s,
            # Our logging (api.logs), and our access line (api.observability) instead of
            # uvicorn's.
            log_config=None,
            access_log=False,
        )


def open_psql(url: str, user_id: UUID) -> int:
    """Interactive psql as todo_app for one user, as README "Inspecting with psql" shows."""
    psql = psql_path()
    startup = (  # user_id is a parsed UUID, safe to place in SQL
        "\\set QUIET on\n"
        f"SET ROLE {RUNTIME_ROLE};\n"
        f"SELECT set_config('app.user_id', '{user_id}', false) \\g /dev/null\n"
        "\\set QUIET off\n"
        f"\\echo 'As {RUNTIME_ROLE} for user {user_id}: policies active.'\n"
        f"\\set PROMPT1 '{RUNTIME_ROLE}:{user_id}=> '\n"
    )
    with tempfile.NamedTemporaryFile("w", suffix=".psqlrc") as rc:
        rc.write(startup)
        rc.flush()
        return subprocess.call([psql, url], env={**os.environ, "PSQLRC": rc.name})
