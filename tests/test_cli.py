"""The `todo-api` command as a user runs it: in a subprocess, with only the environment."""

import uuid
from collections.abc import Callable

import psycopg
from cluster import TODO_API, todo_api


def test_migrate_then_check_on_a_new_database(make_database: Callable[..., str]) -> None:
    url = make_database(migrated=False)
    assert todo_api("check", database=url).returncode == 1
    assert todo_api("migrate", database=url).returncode == 0
    checked = todo_api("check", database=url)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "FAIL" not in checked.stdout


def test_without_neon_database_url_the_embedded_database_is_used() -> None:
    """What `make run` does: migrate and check the embedded PostgreSQL in .data/."""
    for command in ("migrate", "check"):
        result = todo_api(command, database="")
        assert result.returncode == 0, result.stdout + result.stderr
        assert "using the embedded PostgreSQL" in result.stderr


def test_a_url_that_is_not_postgresql_is_refused_with_a_message() -> None:
    result = todo_api("check", database="mysql://root@localhost/todos")
    assert result.returncode == 1
    assert "must start with postgresql://" in result.stderr
    assert "Traceback" not in result.stderr


def test_psql_opens_a_session_as_todo_app_for_one_user(database_url: str) -> None:
    """With no psql on PATH, the one that ships with pgserver is used."""
    mine, theirs = uuid.uuid4(), uuid.uuid4()
    with psycopg.connect(database_url, autocommit=True) as conn:
        for user in (mine, theirs):
            conn.execute("INSERT INTO users (id) VALUES (%s)", (user,))
            conn.execute("INSERT INTO todos (user_id, title) VALUES (%s, 'x')", (user,))
    query = "SELECT concat_ws(' ', current_user, current_setting('app.user_id'), count(*))"
    query += " AS who FROM todos;\n"
    result = todo_api(
        "psql",
        "--user",
        str(mine),
        database=database_url,
        input=query,
        PATH=str(TODO_API.parent),
    )
    assert result.returncode == 0, result.stderr
    assert f"As todo_app for user {mine}: policies active." in result.stdout
    assert f" todo_app {mine} 1\n" in result.stdout  # that user's one todo, not the other
