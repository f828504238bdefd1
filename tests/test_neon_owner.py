"""Serving as a non-superuser database owner, like Neon's `neondb_owner`: the owner migrates,
the self-check passes, the API keeps users apart, and the owner itself is held by forced RLS."""

import uuid
from collections.abc import Iterator

import psycopg
import pytest
from conftest import app_client, as_superuser, new_user
from psycopg import sql
from psycopg.errors import InsufficientPrivilege

from api.cli import print_checks

TODOS = "/api/v1/todos"


def count(conn: psycopg.Connection, table: str) -> int:
    query = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))
    return conn.execute(query).fetchone()[0]


@pytest.fixture(scope="module")
def client(owner_database: str):
    with app_client(owner_database) as test_client:
        yield test_client


@pytest.fixture
def owner_conn(owner_database: str) -> Iterator[psycopg.Connection]:
    """The owner, connected directly, without switching to todo_app."""
    with psycopg.connect(owner_database, autocommit=True) as conn:
        yield conn


@pytest.fixture
def admin_conn(owner_database: str, database_url: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(as_superuser(owner_database, database_url), autocommit=True) as conn:
        yield conn


def test_the_owner_role_is_neither_superuser_nor_bypassrls(admin_conn, owner):
    row = admin_conn.execute(
        "SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = %s", (owner,)
    ).fetchone()
    assert row == (False, False)


def test_the_owner_ran_the_migrations(admin_conn, owner):
    owners = admin_conn.execute(
        "SELECT tablename, tableowner FROM pg_tables WHERE tablename IN ('users', 'todos')"
    ).fetchall()
    assert sorted(owners) == [("todos", owner), ("users", owner)]


def test_the_self_check_passes(owner_database):
    assert print_checks(owner_database) is True


def test_the_api_keeps_users_apart(client):
    a, b = new_user(), new_user()
    created = client.post(TODOS, json={"title": "A's secret"}, headers=a)
    assert created.status_code == 201
    location = created.headers["location"]

    assert client.get(location, headers=b).status_code == 404
    assert client.get(TODOS, headers=b).json()["items"] == []
    assert client.patch(location, json={"title": "mine"}, headers=b).status_code == 404
    assert client.delete(location, headers=b).status_code == 404
    assert client.get(location, headers=a).json() == created.json()


def test_the_owner_without_the_switch_sees_no_rows(client, owner_conn, admin_conn):
    assert client.post(TODOS, json={"title": "hidden"}, headers=new_user()).status_code == 201
    assert count(admin_conn, "todos") > 0  # the rows are there...
    assert count(admin_conn, "users") > 0
    assert count(owner_conn, "todos") == 0  # ...but forced RLS hides them from their owner
    assert count(owner_conn, "users") == 0


def test_the_owner_without_the_switch_cannot_write(owner_conn):
    with pytest.raises(InsufficientPrivilege, match="row-level security"):
        owner_conn.execute("INSERT INTO users (id) VALUES (%s)", (str(uuid.uuid4()),))
