"""The startup self-check (README, "How isolation works"): `check`, `serve` and /readyz
refuse an unsafe database."""

import os
import subprocess

import pytest
from cluster import TODO_API
from conftest import app_client, execute, run_cli, with_url
from database_states import (
    HARMLESS_STATE,
    UNSAFE_ROLE_STATES,
    UNSAFE_TABLE_STATES,
    VERIFIED_EMAIL_POLICY,
)
from sqlalchemy.engine import make_url

from api import cli
from db import safety
from db.safety import POLICIES_SQL, expected_policies

UNREACHABLE_URL = "postgresql://postgres@127.0.0.1:1/postgres?connect_timeout=2"


def failed_line(stdout: str, check_name: str) -> str:
    """The FAIL line naming `check_name`; asserts that a `fix:` line follows it."""
    lines = stdout.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("FAIL") and check_name in line:
            assert i + 1 < len(lines) and lines[i + 1].strip().startswith("fix:"), stdout
            return lines[i + 1]
    raise AssertionError(f"no FAIL line for {check_name!r} in:\n{stdout}")


@pytest.fixture
def no_uvicorn(monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    """Replaces the server start (it would block); records each call instead."""
    calls: list[tuple] = []
    monkeypatch.setattr(cli, "serve_api", lambda *args: calls.append(args))
    return calls


def assert_check_and_serve_refuse(url, check_name, use_database, no_uvicorn, capsys) -> str:
    """Both commands refuse `url` because of `check_name`; returns the check's fix line."""
    use_database(url)

    assert run_cli("check").code == 1
    fix = failed_line(capsys.readouterr().out, check_name)

    refusal = run_cli("serve")
    assert isinstance(refusal.code, str) and "refusing" in refusal.code
    failed_line(capsys.readouterr().out, check_name)
    assert no_uvicorn == []
    return fix


@pytest.mark.parametrize(("unsafe_sql", "check_name", "fix_says"), UNSAFE_TABLE_STATES)
def test_unsafe_table_state_is_refused(
    make_database, use_database, no_uvicorn, capsys, unsafe_sql, check_name, fix_says
):
    url = make_database()
    execute(url, unsafe_sql)
    fix = assert_check_and_serve_refuse(url, check_name, use_database, no_uvicorn, capsys)
    assert fix_says in fix


@pytest.mark.parametrize(("unsafe_sql", "check_name", "fix_says"), UNSAFE_ROLE_STATES)
def test_todo_app_with_more_than_policies_sql_grants_is_refused(
    make_database, use_database, no_uvicorn, capsys, unsafe_sql, check_name, fix_says
):
    url = make_database()
    execute(url, unsafe_sql.format(database=make_url(url).database))
    fix = assert_check_and_serve_refuse(url, check_name, use_database, no_uvicorn, capsys)
    assert fix_says in fix


def test_todo_app_member_of_another_role_is_refused(
    make_database, todo_app_in_another_role, use_database, no_uvicorn, capsys
):
    url = make_database()
    check_name = f"member of no other role (is of {todo_app_in_another_role})"
    fix = assert_check_and_serve_refuse(url, check_name, use_database, no_uvicorn, capsys)
    assert "REVOKE" in fix


def test_todo_app_with_bypassrls_is_refused(
    make_database, todo_app_bypasses_rls, use_database, no_uvicorn, capsys
):
    url = make_database()
    fix = assert_check_and_serve_refuse(
        url, "role todo_app cannot bypass RLS", use_database, no_uvicorn, capsys
    )
    assert "NOBYPASSRLS" in fix


def test_role_that_cannot_switch_to_todo_app_is_refused(
    make_database, unswitchable_role, use_database, no_uvicorn, capsys
):
    url = with_url(make_database(), username=unswitchable_role)
    fix = assert_check_and_serve_refuse(
        url, "can switch to todo_app", use_database, no_uvicorn, capsys
    )
    assert "GRANT todo_app" in fix


def test_unmigrated_database_is_refused(make_database, use_database, no_uvicorn, capsys):
    url = make_database(migrated=False)
    fix = assert_check_and_serve_refuse(
        url, "tables users, todos, idempotency_keys exist", use_database, no_uvicorn, capsys
    )
    assert "todo-api migrate" in fix


def test_an_extensions_relations_and_another_interval_style_pass(make_database, use_database):
    url = make_database()
    execute(url, HARMLESS_STATE.format(database=make_url(url).database))
    use_database(url)
    assert run_cli("check").code == 0


def test_healthy_database_passes_every_check(database_url, use_database, capsys):
    use_database(database_url)
    assert run_cli("check").code == 0
    lines = capsys.readouterr().out.splitlines()
    # tables, RLS enabled and forced on three tables, the policies, the role's eight checks
    assert len(lines) == 1 + 6 + len(expected_policies()) + 8
    assert all(line.startswith("ok  ") for line in lines), lines


@pytest.mark.parametrize(
    ("applied", "ok"),
    [(VERIFIED_EMAIL_POLICY, True), (VERIFIED_EMAIL_POLICY.replace("AS RESTRICTIVE ", ""), False)],
)
def test_a_restrictive_policy_written_in_policies_sql_is_accepted(
    make_database, use_database, monkeypatch, capsys, applied, ok
):
    """docs/api.md's claim policy: restrictive, it can only narrow the owner check, so the
    self-check accepts it once policies.sql has it; applied as permissive, it would widen."""
    monkeypatch.setattr(
        safety, "_policies", lambda: POLICIES_SQL.read_text() + VERIFIED_EMAIL_POLICY
    )
    url = make_database()
    execute(url, applied)
    use_database(url)
    assert run_cli("check").code == (0 if ok else 1)
    out = capsys.readouterr().out
    assert ("FAIL  policy todos_verified_email on todos" in out) is not ok, out


def test_serve_starts_the_server_on_a_healthy_database(database_url, use_database, no_uvicorn):
    use_database(database_url)
    cli.main(["serve"])
    assert len(no_uvicorn) == 1


def test_unreachable_database_fails_with_a_message(use_database, monkeypatch, capsys):
    monkeypatch.setenv("DB_RECONNECT_TIMEOUT_S", "2")  # retries with backoff, then gives up
    use_database(UNREACHABLE_URL)
    assert run_cli("check").code == 1
    err = capsys.readouterr().err
    assert "FAIL  database reachable" in err
    assert "fix: check NEON_DATABASE_URL" in err
    assert "Traceback" not in err


def test_readyz_answers_503_on_an_unsafe_database(make_database):
    url = make_database()
    execute(url, "ALTER TABLE todos DISABLE ROW LEVEL SECURITY")
    with app_client(url) as client:
        response = client.get("/readyz")
    assert response.status_code == 503
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["error_code"] == "SERVICE_UNAVAILABLE"
    assert "RLS enabled on todos" in response.json()["detail"]


def test_readyz_answers_200_on_a_safe_database(database_url):
    with app_client(database_url) as client:
        response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ready"}


def test_console_script_check_passes_on_a_healthy_database(database_url):
    result = subprocess.run(
        [str(TODO_API), "check"],
        env={**os.environ, "NEON_DATABASE_URL": database_url},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "FAIL" not in result.stdout
