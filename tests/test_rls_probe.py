"""The RLS probe (db/rls_probe.sql), run as the README says, with psql: on a migrated database
every check passes and nothing is left behind; every way of breaking isolation makes it fail,
naming what failed."""

import re
import subprocess
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from cluster import wait_until
from conftest import as_superuser, as_user, execute, run_cli, with_url
from database_states import (
    EVERYONE_IS_ONE_USER,
    HARMLESS_STATE,
    UNSAFE_ROLE_STATES,
    UNSAFE_TABLE_STATES,
    VERIFIED_EMAIL_POLICY,
)
from sqlalchemy.engine import make_url

from db import safety
from db.connection import psql_path
from db.probe import PROBE_SQL
from db.safety import POLICIES_SQL

TAP_LINE = re.compile(r"(ok|not ok) (\d+) - (.*)")


def probe_command(url: str, *options: str) -> list[str]:
    """`psql "$NEON_DATABASE_URL" -v ON_ERROR_STOP=1 -f db/rls_probe.sql`, as the README has it."""
    return [psql_path(), url, "-v", "ON_ERROR_STOP=1", *options, "-f", str(PROBE_SQL)]


def probe(url: str, *options: str) -> subprocess.CompletedProcess[str]:
    command = probe_command(url, *options)
    return subprocess.run(command, capture_output=True, text=True, check=False, timeout=60)


def results(stdout: str) -> dict[str, bool]:
    """Each check's name and whether it passed, asserting the TAP plan matches them."""
    lines = stdout.splitlines()
    plan = re.fullmatch(r"1\.\.(\d+)", lines[0])
    assert plan, stdout
    checks = [TAP_LINE.fullmatch(line) for line in lines]
    found = {m[3]: m[1] == "ok" for m in checks if m}
    assert [int(m[2]) for m in checks if m] == list(range(1, int(plan[1]) + 1)), stdout
    return found


def row_counts(url: str) -> dict[str, int]:
    with psycopg.connect(url) as conn:
        return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in safety.TABLES}


@pytest.fixture
def owned(owner_database: str, owner: str, server_url: str) -> Iterator[str]:
    """A fresh clone of a database owned and migrated by the non-superuser `owner`, as on Neon,
    logged in to as its owner; dropped afterwards."""
    template = make_url(owner_database).database
    name = f"todo_test_{uuid.uuid4().hex[:12]}"
    execute(server_url, f'CREATE DATABASE "{name}" TEMPLATE "{template}" OWNER "{owner}"')
    try:
        yield with_url(server_url, database=name, username=owner)
    finally:
        execute(server_url, f'DROP DATABASE "{name}" WITH (FORCE)')


def test_every_check_passes_on_the_run_database_and_nothing_is_left_behind(database_url):
    """Other users' rows are there: the probe sees none of them, and leaves the counts as they
    were. It connects as a superuser here, which it warns about."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        for user in (str(uuid.uuid4()), str(uuid.uuid4())):
            with as_user(conn, user):
                conn.execute("INSERT INTO users (id) VALUES (%s)", (user,))
                conn.execute("INSERT INTO todos (user_id, title) VALUES (%s, 'theirs')", (user,))
    before = row_counts(database_url)
    result = probe(database_url)
    assert result.returncode == 0, result.stdout + result.stderr
    checks = results(result.stdout)
    assert all(checks.values()), result.stdout
    assert len(checks) >= 25
    assert result.stdout.splitlines()[-1] == f"# all {len(checks)} checks passed"
    user = make_url(database_url).username
    assert f"# WARNING: {user} is a superuser: never serve as one" in result.stdout
    assert result.stderr == ""
    assert row_counts(database_url) == before


def test_an_extensions_relations_and_another_interval_style_pass(owned, server_url):
    """As with pg_stat_statements (its views are granted to PUBLIC) and IntervalStyle set to
    iso_8601 on the database: nothing about isolation, so the probe passes."""
    database = make_url(owned).database
    execute(as_superuser(owned, server_url), HARMLESS_STATE.format(database=database))
    result = probe(owned)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_check_passes_for_a_neon_like_owner(owned, owner):
    """As the tables' owner, neither superuser nor BYPASSRLS: nothing to skip or warn about."""
    result = probe(owned)
    assert result.returncode == 0, result.stdout + result.stderr
    checks = results(result.stdout)
    assert all(checks.values())
    assert UNFORCED.format(owner=owner) in checks
    assert "SKIP" not in result.stdout
    assert "WARNING" not in result.stdout


# Each breakage the static self-check refuses (tests/test_safety.py), and the check of the
# probe that fails because of it, by behaviour where the probe can try it safely.
NO_ROWS = "with no user set, todo_app sees no rows in {}"
WRITES_ITS_OWN = "A writes its own users row, todos and idempotency key"
RUNS_AS = "runs as another role"
UNFORCED = "{owner}, without the switch to todo_app and with no user set, sees no rows"
PRIVILEGES = "todo_app holds exactly the table privileges the API uses"
CREATES = "todo_app cannot create objects"
POLICIES = "the permissive policies for todo_app are exactly the API's"
FAILS_FOR_STATIC = {
    "ALTER TABLE users DISABLE ROW LEVEL SECURITY": NO_ROWS.format("users"),
    "ALTER TABLE todos DISABLE ROW LEVEL SECURITY": NO_ROWS.format("todos"),
    "ALTER TABLE idempotency_keys DISABLE ROW LEVEL SECURITY": NO_ROWS.format("idempotency_keys"),
    "ALTER TABLE users NO FORCE ROW LEVEL SECURITY": UNFORCED,
    "ALTER TABLE todos NO FORCE ROW LEVEL SECURITY": UNFORCED,
    "ALTER TABLE idempotency_keys NO FORCE ROW LEVEL SECURITY": UNFORCED,
    "ALTER POLICY todos_own_rows ON todos USING (true)": NO_ROWS.format("todos"),
    "ALTER POLICY idempotency_keys_expired ON idempotency_keys USING (true)": POLICIES,
    "CREATE POLICY everyone ON users USING (true)": NO_ROWS.format("users"),
    "DROP POLICY users_own_row ON users": WRITES_ITS_OWN,
    "DROP POLICY todos_own_rows ON todos": WRITES_ITS_OWN,
    "DROP POLICY idempotency_keys_own_rows ON idempotency_keys": WRITES_ITS_OWN,
    "DROP POLICY idempotency_keys_expired ON idempotency_keys": POLICIES,
    "GRANT TRUNCATE ON todos TO todo_app": PRIVILEGES,
    "GRANT REFERENCES ON users TO todo_app": PRIVILEGES,
    "GRANT TRIGGER ON todos TO todo_app": PRIVILEGES,
    "GRANT UPDATE (id) ON users TO todo_app": PRIVILEGES,
    "GRANT SELECT ON alembic_version TO PUBLIC": PRIVILEGES,
    "REVOKE DELETE ON todos FROM todo_app": "A can change and delete its own todo",
    "GRANT UPDATE ON idempotency_keys TO todo_app": PRIVILEGES,
    "GRANT CREATE ON SCHEMA public TO todo_app": CREATES,
    "GRANT CREATE ON SCHEMA public TO PUBLIC": CREATES,
    "GRANT CREATE ON DATABASE {database} TO todo_app": CREATES,
    EVERYONE_IS_ONE_USER: WRITES_ITS_OWN,
    "ALTER FUNCTION current_app_user() SECURITY DEFINER": RUNS_AS,
}
COPY_TRIGGER = """
CREATE TABLE todo_copies (LIKE todos);
GRANT SELECT, INSERT ON todo_copies TO todo_app;
CREATE FUNCTION copy_todo() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO todo_copies SELECT NEW.*;
    RETURN NEW;
END $$;
CREATE TRIGGER copy_todo AFTER INSERT ON todos FOR EACH ROW EXECUTE FUNCTION copy_todo();
"""
# Made by the superuser, so it runs as one, past every policy.
ALL_TODOS_FUNCTION = """
CREATE FUNCTION all_todos() RETURNS SETOF todos LANGUAGE sql SECURITY DEFINER
    AS 'SELECT * FROM todos';
GRANT EXECUTE ON FUNCTION all_todos() TO todo_app;
"""
ALL_TODOS_VIEW = (
    "CREATE VIEW all_todos AS SELECT * FROM todos; GRANT SELECT ON all_todos TO todo_app"
)
WIDENING_CLAIM_POLICY = """
CREATE POLICY by_claim ON todos FOR SELECT TO todo_app
    USING (user_id::text = current_setting('request.jwt.claims', true)::jsonb ->> 'sub')
"""
# A permissive policy for UPDATE: a statement with no WHERE takes every user's todos.
UPDATE_POLICY = """
CREATE POLICY take_all ON todos FOR UPDATE TO todo_app
    USING (true) WITH CHECK (user_id = (SELECT current_app_user()))
"""
# Each new todo's description gets every other user's titles.
SHARING_TRIGGER = """
CREATE FUNCTION share_titles() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER AS $$
BEGIN
    NEW.description := (SELECT string_agg(title, ',') FROM todos WHERE user_id <> NEW.user_id);
    RETURN NEW;
END $$;
REVOKE EXECUTE ON FUNCTION share_titles() FROM PUBLIC;
CREATE TRIGGER share_titles BEFORE INSERT ON todos FOR EACH ROW EXECUTE FUNCTION share_titles();
"""
# (Here its actions run as the tables' owner, whom forced RLS holds; with a superuser or BYPASSRLS
# owner they would copy titles across.)
SHARING_RULE = """
CREATE RULE share_titles AS ON INSERT TO todos DO ALSO
    UPDATE todos SET description = (SELECT string_agg(t.title, ',') FROM todos t
                                    WHERE t.user_id <> NEW.user_id)
    WHERE user_id = NEW.user_id
"""
# Not SECURITY DEFINER, but it leaves todo_app for the connecting role.
ROLE_SWITCHING_FUNCTION = """
CREATE FUNCTION titles_of(u uuid) RETURNS SETOF text LANGUAGE sql SET role = 'none'
    AS 'SELECT title FROM todos WHERE user_id = u'
"""
# The sweep may delete every key, not only expired ones.
WIDER_SWEEP = """
ALTER POLICY idempotency_keys_expired ON idempotency_keys
    USING (created_at <= now() - interval '24 hours' OR user_id IS NOT NULL)
"""
FOUND_IN = "A finds none of B's rows in any relation todo_app can read"
FOUND_BY_B = "B finds none of A's rows in any relation todo_app can read"
# (breakage, a check that must fail, what its diagnostic line must name)
FAILS_FOR_MORE = [
    (COPY_TRIGGER, FOUND_IN, "B's rows are in todo_copies"),
    (ALL_TODOS_FUNCTION, RUNS_AS, "these do: all_todos()"),
    (ROLE_SWITCHING_FUNCTION, RUNS_AS, "these do: titles_of(uuid)"),
    (SHARING_TRIGGER, FOUND_BY_B, "A's rows are in todos"),
    (SHARING_TRIGGER, RUNS_AS, "these do: share_titles()"),
    (SHARING_RULE, "no rule rewrites", "found share_titles on todos"),
    (UPDATE_POLICY, POLICIES, "beyond them: take_all on todos for UPDATE USING true"),
    (WIDER_SWEEP, POLICIES, "OR (user_id IS NOT NULL)"),
    (ALL_TODOS_VIEW, FOUND_IN, "B's rows are in all_todos"),
    (WIDENING_CLAIM_POLICY, "claims naming B do not widen what A sees", "it sees"),
    ("ALTER POLICY todos_own_rows ON todos USING (true)", FOUND_IN, "B's rows are in todos"),
]


def assert_fails(result: subprocess.CompletedProcess[str], check: str, says: str = "") -> None:
    """The probe exited non-zero, with a `not ok` line for `check` followed by a diagnostic
    that contains `says`."""
    assert result.returncode == 3, result.stdout + result.stderr
    assert "ERROR:  RLS probe:" in result.stderr
    lines = result.stdout.splitlines()
    failing = [i for i, line in enumerate(lines) if line.startswith("not ok") and check in line]
    assert failing, f"no failed check {check!r} in:\n{result.stdout}"
    diagnostic = lines[failing[0] + 1]
    assert diagnostic.startswith("#   ") and says in diagnostic, result.stdout
    assert lines[-1].startswith("# FAILED"), result.stdout


@pytest.mark.parametrize(
    "breakage", [state[0] for state in UNSAFE_TABLE_STATES + UNSAFE_ROLE_STATES]
)
def test_every_breakage_the_static_check_refuses_fails_the_probe(
    owned, owner, server_url, breakage
):
    database = make_url(owned).database
    execute(as_superuser(owned, server_url), breakage.format(database=database))
    assert_fails(probe(owned), FAILS_FOR_STATIC[breakage].format(owner=owner))


@pytest.mark.parametrize(("breakage", "check", "says"), FAILS_FOR_MORE)
def test_leaks_the_catalog_cannot_show_fail_the_probe(owned, server_url, breakage, check, says):
    execute(as_superuser(owned, server_url), breakage)
    assert_fails(probe(owned), check, says)


def test_todo_app_with_bypassrls_fails_the_probe(owned, todo_app_bypasses_rls):
    assert_fails(probe(owned), NO_ROWS.format("todos"), "it sees")


def test_todo_app_in_another_role_fails_the_probe(owned, todo_app_in_another_role):
    result = probe(owned)
    assert_fails(result, "todo_app is a member of no other role", todo_app_in_another_role)


def test_a_role_that_cannot_switch_fails_the_probe_and_bails_out(owned, unswitchable_role):
    result = probe(with_url(owned, username=unswitchable_role))
    assert_fails(result, "the connecting role can switch to todo_app", "permission denied")
    assert "Bail out! every other check runs as todo_app" in result.stdout


def test_an_unmigrated_database_fails_the_probe(make_database):
    result = probe(make_database(migrated=False))
    assert_fails(result, WRITES_ITS_OWN, 'relation "users" does not exist')
    assert "Bail out!" in result.stdout


def test_a_locked_table_makes_the_probe_give_up_rather_than_wait(owned, server_url):
    """Behind a migration's lock the probe fails after lock_timeout, naming it."""
    with psycopg.connect(as_superuser(owned, server_url)) as locker:
        locker.execute("LOCK TABLE idempotency_keys IN ACCESS EXCLUSIVE MODE")
        assert_fails(probe(owned), WRITES_ITS_OWN, "lock timeout")


# A view todo_app may read that takes longer than the probe's statement_timeout (10 s).
SLOW_VIEW = """
CREATE VIEW slow AS SELECT clock_timestamp()::text AS now FROM pg_sleep(11);
GRANT SELECT ON slow TO todo_app;
"""


def test_a_probe_stopped_by_its_timeout_prints_its_lines_and_leaves_nothing_behind(
    owned, server_url
):
    admin = as_superuser(owned, server_url)
    execute(admin, SLOW_VIEW)
    before = row_counts(admin)
    result = probe(owned)
    assert_fails(result, "the probe runs to its end", "statement timeout")
    assert "Bail out!" in result.stdout
    assert row_counts(admin) == before


def test_a_probe_killed_halfway_leaves_nothing_behind(owned, server_url):
    """Its backend terminated while it searches, its users' rows written: the server rolls
    the transaction back."""
    admin = as_superuser(owned, server_url)
    execute(admin, SLOW_VIEW)
    before = row_counts(admin)
    command = probe_command(owned)
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as running:
        with psycopg.connect(admin, autocommit=True) as conn:
            wait_until(
                lambda: conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE application_name = 'todo-api rls probe' AND wait_event = 'PgSleep'"
                ).fetchall(),
                "the probe to search the slow view",
                timeout=9,
            )
        assert running.wait(timeout=30) != 0
    assert row_counts(admin) == before


def test_a_failing_probe_leaves_nothing_behind(owned, server_url):
    admin = as_superuser(owned, server_url)
    execute(admin, "ALTER TABLE todos DISABLE ROW LEVEL SECURITY")
    before = row_counts(admin)
    assert probe(owned).returncode == 3
    assert row_counts(admin) == before


def test_the_probe_runs_beside_an_open_write(owned, server_url):
    """A request's transaction holding its row and table locks does not stop the probe: the
    probe takes no lock a write would hold against it."""
    admin = as_superuser(owned, server_url)
    user = str(uuid.uuid4())
    with psycopg.connect(admin, autocommit=True) as writer, as_user(writer, user, rollback=True):
        writer.execute("INSERT INTO users (id) VALUES (%s)", (user,))
        writer.execute("INSERT INTO todos (user_id, title) VALUES (%s, 'held')", (user,))
        result = probe(owned)
    assert result.returncode == 0, result.stdout + result.stderr


def test_check_deep_prints_the_static_checks_then_the_probe(owned, use_database, capfd):
    use_database(owned)
    assert run_cli("check", "--deep").code == 0
    out = capfd.readouterr().out
    static, tap = out.split("\n1..", 1)
    assert static.splitlines() and all(line.startswith("ok  ") for line in static.splitlines())
    assert all(results("1.." + tap).values())


def test_check_deep_fails_on_a_leak_the_static_check_passes(owned, server_url, use_database, capfd):
    execute(as_superuser(owned, server_url), ALL_TODOS_FUNCTION)
    use_database(owned)
    assert run_cli("check", "--deep").code == 1
    out = capfd.readouterr().out
    static, tap = out.split("\n1..", 1)
    assert "FAIL" not in static  # the catalog looks as policies.sql writes it...
    assert "#   these do: all_todos()" in tap  # ...but the probe finds the leak


def test_restrictive_claim_policies_pass_with_the_claims_they_need(owned, server_url):
    """docs/api.md's verified-email policy narrows every user to verified ones: the probe's
    users need the claim to write at all, and with it every check passes."""
    execute(as_superuser(owned, server_url), VERIFIED_EMAIL_POLICY)
    assert_fails(probe(owned), WRITES_ITS_OWN, "row-level security")
    result = probe(owned, "-v", 'claims={"emailVerified": true}')
    assert result.returncode == 0, result.stdout + result.stderr


def test_check_deep_passes_the_claims_on(owned, server_url, use_database, monkeypatch, capfd):
    monkeypatch.setattr(
        safety, "_policies", lambda: POLICIES_SQL.read_text() + VERIFIED_EMAIL_POLICY
    )
    execute(as_superuser(owned, server_url), VERIFIED_EMAIL_POLICY)
    use_database(owned)
    assert run_cli("check", "--deep", "--claims", '{"emailVerified": true}').code == 0
    assert "# all " in capfd.readouterr().out


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--claims", "{}"], "--claims goes with --deep"),
        (["--deep", "--claims", "nope"], "write it as a JSON object"),
        (["--deep", "--claims", "[1]"], "write it as a JSON object"),
    ],
)
def test_claims_are_a_json_object_given_with_deep(argv, says, capsys):
    assert run_cli("check", *argv).code == 2
    assert says in capsys.readouterr().err
