"""Migrations and policies.sql: repeatable, reversible, and in step with the code."""

import asyncio

import psycopg
import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlalchemy import create_engine
from sqlmodel import SQLModel

import db.models  # noqa: F401  (registers the tables on SQLModel.metadata)
from db import safety
from db.connection import PROJECT_ROOT, sqlalchemy_url

# What policies.sql decides, as the catalogs show it.
SECURITY_SNAPSHOT = {
    "policies": """
        SELECT tablename, policyname, permissive, roles, cmd, qual, with_check
        FROM pg_policies WHERE schemaname = 'public' ORDER BY tablename, policyname""",
    "row level security": """
        SELECT relname, relrowsecurity, relforcerowsecurity FROM pg_class
        WHERE oid IN ('public.users'::regclass, 'public.todos'::regclass,
                      'public.idempotency_keys'::regclass) ORDER BY relname""",
    "current_app_user()": """
        SELECT pg_get_functiondef(oid), proacl::text FROM pg_proc
        WHERE oid = 'public.current_app_user()'::regprocedure""",
    "table grants": """
        SELECT table_name, privilege_type FROM information_schema.role_table_grants
        WHERE grantee = 'todo_app' ORDER BY table_name, privilege_type""",
}
# Everything policies.sql sets on this database, removed (todo_app itself is cluster-wide: kept).
UNDO_POLICIES_SQL = """
DO $$
DECLARE p record;
BEGIN
    FOR p IN SELECT tablename, policyname FROM pg_policies WHERE schemaname = 'public' LOOP
        EXECUTE format('DROP POLICY %I ON %I', p.policyname, p.tablename);
    END LOOP;
END
$$;
DROP FUNCTION current_app_user();
REVOKE ALL ON users, todos, idempotency_keys FROM todo_app;
ALTER TABLE users NO FORCE ROW LEVEL SECURITY, DISABLE ROW LEVEL SECURITY;
ALTER TABLE todos NO FORCE ROW LEVEL SECURITY, DISABLE ROW LEVEL SECURITY;
ALTER TABLE idempotency_keys NO FORCE ROW LEVEL SECURITY, DISABLE ROW LEVEL SECURITY;
"""


def alembic_config(url: str) -> Config:
    """The configuration `todo-api migrate` (api.cli.migrate) builds."""
    config = Config(str(PROJECT_ROOT / "alembic.ini"))
    config.attributes["url"] = sqlalchemy_url(url)
    return config


def failed_checks(url: str) -> list[str]:
    async def run() -> list[safety.Check]:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            return await safety.run_checks(conn)

    return [check.name for check in safety.failures(asyncio.run(run()))]


def execute(url: str, sql: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql)


def query(url: str, sql: str) -> list[tuple]:
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(sql).fetchall()


def snapshot(conn: psycopg.Connection) -> dict[str, list[tuple]]:
    return {name: conn.execute(sql).fetchall() for name, sql in SECURITY_SNAPSHOT.items()}


def apply_policies_sql(conn: psycopg.Connection) -> None:
    # No parameters: psycopg sends the script as one simple query (DO blocks, several statements).
    conn.execute(safety.POLICIES_SQL.read_text())


def drift_from_policies_sql(url: str) -> dict[str, tuple]:
    """What differs between the database and what policies.sql makes ({} when in step).

    In a transaction that is rolled back: snapshot, undo policies.sql, apply it, snapshot again.
    The undo matters: policies.sql alone would not remove an extra policy or grant.
    """
    with psycopg.connect(url, autocommit=True) as conn:
        before = snapshot(conn)
        with conn.transaction(force_rollback=True):
            conn.execute(UNDO_POLICIES_SQL)
            apply_policies_sql(conn)
            after = snapshot(conn)
    return {name: (before[name], after[name]) for name in before if before[name] != after[name]}


def test_upgrade_head_twice_is_a_no_op(make_database):
    url = make_database()
    versions_and_policies = """
        SELECT version_num, (SELECT array_agg(oid ORDER BY oid) FROM pg_policy) FROM alembic_version
    """
    before = query(url, versions_and_policies)

    command.upgrade(alembic_config(url), "head")

    # Same revision, and the very same policy objects (re-running 0002 would recreate them).
    assert query(url, versions_and_policies) == before
    assert failed_checks(url) == []


def test_downgrade_base_removes_everything(make_database):
    url = make_database()
    command.downgrade(alembic_config(url), "base")

    assert query(url, "SELECT to_regclass('public.users'), to_regclass('public.todos')") == [
        (None, None)
    ]
    assert query(url, "SELECT * FROM pg_policies WHERE schemaname = 'public'") == []
    assert query(
        url,
        "SELECT to_regprocedure('public.current_app_user()'),"
        " to_regprocedure('public.set_updated_at()')",
    ) == [(None, None)]
    assert query(url, "SELECT * FROM alembic_version") == []


def test_downgrade_base_then_upgrade_head_passes_the_self_check(make_database):
    url = make_database()
    command.downgrade(alembic_config(url), "base")
    command.upgrade(alembic_config(url), "head")
    assert failed_checks(url) == []


def test_migrate_works_when_todo_app_already_exists(make_database):
    make_database()  # creates todo_app, which belongs to the whole cluster
    url = make_database(migrated=False)
    assert query(url, "SELECT 1 FROM pg_roles WHERE rolname = 'todo_app'") == [(1,)]

    command.upgrade(alembic_config(url), "head")
    assert failed_checks(url) == []


def test_policies_sql_can_be_applied_again(make_database):
    url = make_database()
    with psycopg.connect(url, autocommit=True) as conn:
        before = snapshot(conn)
        apply_policies_sql(conn)
        assert snapshot(conn) == before
    assert failed_checks(url) == []


def test_migrated_database_matches_policies_sql(make_database):
    assert drift_from_policies_sql(make_database()) == {}


@pytest.mark.parametrize(
    ("change", "drifted"),
    [
        ("ALTER POLICY todos_own_rows ON todos USING (true)", "policies"),
        ("CREATE POLICY everyone ON todos FOR SELECT TO todo_app USING (true)", "policies"),
        ("ALTER TABLE users NO FORCE ROW LEVEL SECURITY", "row level security"),
        (
            "CREATE OR REPLACE FUNCTION current_app_user() RETURNS uuid LANGUAGE sql STABLE"
            " AS $$ SELECT NULL::uuid $$",
            "current_app_user()",
        ),
        ("GRANT TRUNCATE ON todos TO todo_app", "table grants"),
    ],
    ids=["policy altered", "extra policy", "not forced", "function replaced", "extra grant"],
)
def test_drift_from_policies_sql_is_reported(make_database, change, drifted):
    url = make_database()
    execute(url, change)
    assert set(drift_from_policies_sql(url)) == {drifted}


def test_models_match_the_migrations(make_database):
    engine = create_engine(sqlalchemy_url(make_database()))
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_server_default": True})
            differences = compare_metadata(context, SQLModel.metadata)
    finally:
        engine.dispose()
    assert differences == []
