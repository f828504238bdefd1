"""The startup self-check: does this database really enforce per-user isolation?

`todo-api check`, `todo-api serve` and `/readyz` all run `run_checks`. The expected
policies are read from policies.sql, the one place they are written.
"""

import re
from dataclasses import dataclass

import psycopg
from psycopg import AsyncConnection

from db.connection import PROJECT_ROOT
from db.transaction import RUNTIME_ROLE, SET_CONTEXT

POLICIES_SQL = PROJECT_ROOT / "policies.sql"
TABLES = ("users", "todos")
NOT_MIGRATED_FIX = "run `todo-api migrate`"
REAPPLY_FIX = "run `todo-api migrate`, or apply policies.sql again as the tables' owner"


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    fix: str = ""


def expected_policies() -> list[tuple[str, str]]:
    """(policy, table) pairs that policies.sql creates."""
    return re.findall(r"CREATE POLICY (\w+) ON (\w+)", POLICIES_SQL.read_text())


FACTS = """
SELECT c.relname, c.relrowsecurity, c.relforcerowsecurity
FROM pg_class c
WHERE c.oid IN (to_regclass('public.users'), to_regclass('public.todos'))
"""
POLICIES = """
SELECT tablename, policyname, permissive, roles, cmd, qual, with_check
FROM pg_policies WHERE schemaname = 'public' AND tablename IN ('users', 'todos')
"""
# The column that names a row's owner, and what every policy must compare it with.
OWNER_COLUMN = {"users": "id", "todos": "user_id"}
OWNER_TEST = "({} = ( SELECT current_app_user() AS current_app_user))"
ROLE = "SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = %s"


async def run_checks(conn: AsyncConnection) -> list[Check]:
    """Every check, in order; stops early where later checks would only repeat the cause."""
    async with conn.transaction():
        tables = {name: (rls, forced) for name, rls, forced in await _rows(conn, FACTS)}
        policies = {(row[0], row[1]): row[2:] for row in await _rows(conn, POLICIES)}
        role = await _rows(conn, ROLE, (RUNTIME_ROLE,))

    missing = [t for t in TABLES if t not in tables]
    checks = [Check("tables users and todos exist", not missing, NOT_MIGRATED_FIX)]
    if missing:
        return checks
    for table in TABLES:
        rls, forced = tables[table]
        checks.append(Check(f"RLS enabled on {table}", rls, REAPPLY_FIX))
        checks.append(Check(f"RLS forced on {table}", forced, REAPPLY_FIX))
    expected = {(table, policy) for policy, table in expected_policies()}
    for table, policy in sorted(expected):
        test = OWNER_TEST.format(OWNER_COLUMN[table])
        as_written = policies.get((table, policy)) == (
            "PERMISSIVE",
            [RUNTIME_ROLE],
            "ALL",
            test,
            test,
        )
        checks.append(
            Check(f"policy {policy} on {table} as policies.sql writes it", as_written, REAPPLY_FIX)
        )
    for table, policy in sorted(policies.keys() - expected):
        checks.append(
            Check(
                f"no policy on {table} beyond policies.sql: {policy}",
                False,
                "drop it, or write it into policies.sql",
            )
        )

    checks.append(Check(f"role {RUNTIME_ROLE} exists", bool(role), NOT_MIGRATED_FIX))
    if role:
        superuser, bypass = role[0]
        checks.append(
            Check(
                f"role {RUNTIME_ROLE} cannot bypass RLS",
                not superuser and not bypass,
                f"as a superuser: ALTER ROLE {RUNTIME_ROLE} NOSUPERUSER NOBYPASSRLS",
            )
        )
        checks.append(await _switch_check(conn))
    return checks


async def _switch_check(conn: AsyncConnection) -> Check:
    """Switch to todo_app with no user set, as a request would: it must see no todo at all."""
    name = f"connecting role can switch to {RUNTIME_ROLE}, and sees no rows without a user"
    try:
        async with conn.transaction():
            await conn.execute(SET_CONTEXT, (RUNTIME_ROLE, "", "5000"), prepare=False)
            [(visible,)] = await _rows(conn, "SELECT count(*) FROM todos")
    except psycopg.errors.InsufficientPrivilege:
        return Check(name, False, f"as an admin: GRANT {RUNTIME_ROLE} TO <the connecting role>")
    return Check(name, visible == 0, REAPPLY_FIX)


async def _rows(conn: AsyncConnection, query: str, params: tuple = ()) -> list[tuple]:
    # Never prepared: /readyz runs these often on the same connection.
    cursor = await conn.execute(query, params, prepare=False)
    return await cursor.fetchall()


def failures(checks: list[Check]) -> list[Check]:
    return [check for check in checks if not check.ok]
