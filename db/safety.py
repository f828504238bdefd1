"""The startup self-check: does this database really enforce per-user isolation?

`todo-api check`, `todo-api serve` and `/readyz` all run `run_checks`. The expected
policies are read from policies.sql, the one place they are written.
"""

import re
from dataclasses import dataclass
from functools import cache
from typing import Any, LiteralString

import psycopg
from psycopg import AsyncConnection
from psycopg.abc import Params

from db.connection import PROJECT_ROOT
from db.transaction import RUNTIME_ROLE, SET_CONTEXT, context

POLICIES_SQL = PROJECT_ROOT / "policies.sql"
TABLES = ["users", "todos", "idempotency_keys"]
NOT_MIGRATED_FIX = "run `todo-api migrate`"
REAPPLY_FIX = "run `todo-api migrate`, or apply policies.sql again as the tables' owner"


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    fix: str = ""


def expected_policies() -> list[tuple[str, str, bool]]:
    """(policy, table, restrictive) for each policy that policies.sql creates."""
    found = re.findall(r"CREATE POLICY (\w+) ON (\w+)(\s+AS RESTRICTIVE)?", _policies())
    return [(policy, table, bool(restrictive)) for policy, table, restrictive in found]


def expected_privileges() -> set[tuple[str, str]]:
    """(table, privilege) pairs that policies.sql grants to the runtime role."""
    grants = re.findall(rf"GRANT ([A-Z, ]+) ON (\w+) TO {RUNTIME_ROLE};", _policies())
    return {(table, p.strip()) for privileges, table in grants for p in privileges.split(",")}


def expected_user_function() -> str:
    """The body of current_app_user() as policies.sql writes it."""
    found = re.search(r"FUNCTION current_app_user\(\).*?AS \$\$(.*?)\$\$", _policies(), re.S)
    assert found, "policies.sql defines current_app_user()"
    return found.group(1).strip()


@cache  # read once: /readyz runs the checks often
def _policies() -> str:
    return POLICIES_SQL.read_text()


FACTS = """
SELECT c.relname, c.relrowsecurity, c.relforcerowsecurity
FROM pg_class c
WHERE c.relnamespace = 'public'::regnamespace AND c.relkind = 'r' AND c.relname = ANY(%s)
"""
POLICIES = """
SELECT tablename, policyname, permissive, roles, cmd, qual, with_check
FROM pg_policies WHERE schemaname = 'public' AND tablename = ANY(%s)
"""
# The column that names a row's owner, and what every owner policy compares it with.
OWNER_COLUMN = {"users": "id", "todos": "user_id", "idempotency_keys": "user_id"}
OWNER_TEST = "({} = ( SELECT current_app_user() AS current_app_user))"
# The permissive policies that are not an owner test, as PostgreSQL shows them.
OTHER_POLICIES = {
    "idempotency_keys_expired": (
        "PERMISSIVE",
        [RUNTIME_ROLE],
        "DELETE",
        "(created_at <= (now() - '24:00:00'::interval))",
        None,
    ),
}
ROLE = "SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = %s"
# Every table-level privilege the runtime role holds on any relation outside the system
# schemas, whether granted to it, to PUBLIC, or to a role it belongs to; a privilege on
# some columns counts too. An extension's own relations are its business: pg_stat_statements
# grants its views to PUBLIC.
PRIVILEGES = """
SELECT c.relname, p.privilege
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
CROSS JOIN unnest(ARRAY['SELECT', 'INSERT', 'UPDATE', 'DELETE', 'TRUNCATE', 'REFERENCES',
                        'TRIGGER']) AS p(privilege)
WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_(toast|temp)'
  AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
  AND NOT EXISTS (SELECT FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
                  AND d.objid = c.oid AND d.deptype = 'e')
  AND CASE WHEN p.privilege IN ('SELECT', 'INSERT', 'UPDATE', 'REFERENCES')
           THEN has_any_column_privilege(%(role)s, c.oid, p.privilege)
           ELSE has_table_privilege(%(role)s, c.oid, p.privilege) END
"""
# Where the runtime role could create objects: the database itself or any schema.
CREATE_RIGHTS = """
SELECT 'database ' || current_database()
WHERE has_database_privilege(%(role)s, current_database(), 'CREATE')
UNION ALL
SELECT 'schema ' || nspname FROM pg_namespace
WHERE nspname NOT IN ('pg_catalog', 'information_schema') AND nspname !~ '^pg_(toast|temp)'
  AND has_schema_privilege(%(role)s, oid, 'CREATE')
"""
MEMBERSHIPS = "SELECT roleid::regrole::text FROM pg_auth_members WHERE member = %(role)s::regrole"
USER_FUNCTION = """
SELECT btrim(p.prosrc), p.prosecdef, l.lanname
FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang
WHERE p.oid = to_regprocedure('public.current_app_user()')
"""


async def run_checks(conn: AsyncConnection) -> list[Check]:
    """Every check, in order; stops early where later checks would only repeat the cause."""
    async with conn.transaction():
        # Policies are compared as PostgreSQL prints them, intervals included.
        await conn.execute("SET LOCAL IntervalStyle = 'postgres'", prepare=False)
        facts = await _rows(conn, FACTS, (TABLES,))
        tables = {name: (rls, forced) for name, rls, forced in facts}
        policies = {(row[0], row[1]): row[2:] for row in await _rows(conn, POLICIES, (TABLES,))}
        role = await _rows(conn, ROLE, (RUNTIME_ROLE,))

    missing = [t for t in TABLES if t not in tables]
    checks = [Check(f"tables {', '.join(TABLES)} exist", not missing, NOT_MIGRATED_FIX)]
    if missing:
        return checks
    for table in TABLES:
        rls, forced = tables[table]
        checks.append(Check(f"RLS enabled on {table}", rls, REAPPLY_FIX))
        checks.append(Check(f"RLS forced on {table}", forced, REAPPLY_FIX))
    expected = {(table, policy): narrows for policy, table, narrows in expected_policies()}
    for (table, policy), restrictive in sorted(expected.items()):
        found = policies.get((table, policy))
        if restrictive:
            # A restrictive policy can only narrow what the owner test allows, e.g. by a claim.
            as_written = found is not None and found[:2] == ("RESTRICTIVE", [RUNTIME_ROLE])
        else:
            test = OWNER_TEST.format(OWNER_COLUMN[table])
            owner_test = ("PERMISSIVE", [RUNTIME_ROLE], "ALL", test, test)
            as_written = found == OTHER_POLICIES.get(policy, owner_test)
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
        checks.extend(await _role_checks(conn))
        checks.append(await _switch_check(conn))
    return checks


async def _role_checks(conn: AsyncConnection) -> list[Check]:
    """todo_app holds what policies.sql grants and nothing more, and the function every
    policy calls is the one policies.sql defines."""
    role = {"role": RUNTIME_ROLE}
    async with conn.transaction():
        held = set(await _rows(conn, PRIVILEGES, role))
        create_rights = [where for (where,) in await _rows(conn, CREATE_RIGHTS, role)]
        member_of = [name for (name,) in await _rows(conn, MEMBERSHIPS, role)]
        function = await _rows(conn, USER_FUNCTION)
    expected = expected_privileges()
    extra = [f"{privilege} on {table}" for table, privilege in sorted(held - expected)]
    missing = [f"{privilege} on {table}" for table, privilege in sorted(expected - held)]
    return [
        _none(
            f"role {RUNTIME_ROLE} has no table privilege beyond policies.sql",
            "has",
            extra,
            f"REVOKE them FROM {RUNTIME_ROLE} (or from PUBLIC, or the role that passes them on)",
        ),
        _none(
            f"role {RUNTIME_ROLE} has every table privilege policies.sql grants",
            "lacks",
            missing,
            REAPPLY_FIX,
        ),
        _none(
            f"role {RUNTIME_ROLE} cannot create objects",
            "can in",
            create_rights,
            f"REVOKE CREATE ON ... FROM PUBLIC, {RUNTIME_ROLE}",
        ),
        _none(
            f"role {RUNTIME_ROLE} is a member of no other role",
            "is of",
            member_of,
            f"REVOKE <role> FROM {RUNTIME_ROLE}",
        ),
        Check(
            "current_app_user() is the function policies.sql defines",
            function == [(expected_user_function(), False, "sql")],
            REAPPLY_FIX,
        ),
    ]


def _none(name: str, verb: str, found: list[str], fix: str) -> Check:
    """A check that passes when `found` is empty, and names what it found otherwise."""
    return Check(name + (f" ({verb} {', '.join(found)})" if found else ""), not found, fix)


async def _switch_check(conn: AsyncConnection) -> Check:
    """Switch to todo_app with no user set, as a request would: it must see no todo at all."""
    name = f"connecting role can switch to {RUNTIME_ROLE}, and sees no rows without a user"
    try:
        async with conn.transaction():
            await conn.execute(SET_CONTEXT, context(5000), prepare=False)
            [(visible,)] = await _rows(conn, "SELECT count(*) FROM todos")
    except psycopg.errors.InsufficientPrivilege:
        return Check(name, False, f"as an admin: GRANT {RUNTIME_ROLE} TO <the connecting role>")
    return Check(name, visible == 0, REAPPLY_FIX)


async def _rows(
    conn: AsyncConnection, query: LiteralString, params: Params = ()
) -> list[tuple[Any, ...]]:
    # Never prepared: /readyz runs these often on the same connection.
    cursor = await conn.execute(query, params, prepare=False)
    return await cursor.fetchall()


def failures(checks: list[Check]) -> list[Check]:
    return [check for check in checks if not check.ok]
