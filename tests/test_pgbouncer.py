"""The service behind PgBouncer in transaction mode, which is what a Neon `-pooler` host is.

A real pgbouncer 1.18-style pooler (no prepared-statement tracking) with 2 server connections
sits in front of a private cluster, on a host name that says nothing about pooling; the app,
with a pool of 10 and default settings, serves 30 concurrent users through it. Each
transaction may land on any server connection, so anything kept in session state (a setting,
a prepared statement) would leak between users or break.
"""

import shutil
import subprocess
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx
import psycopg
import pytest
import uvicorn
from cluster import (
    PrivateCluster,
    free_port,
    migrated_cluster,
    pgbouncer_config,
    require,
    stop_process,
    wait_until,
)
from conftest import app_client, app_settings, id_of, new_user
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.engine import make_url

from api.cli import migrate
from api.main import create_app
from db.connection import PREPARE_AFTER

TODOS = "/api/v1/todos"
SERVER_CONNECTIONS = 2  # pgbouncer's default_pool_size
USERS = 30
ROUNDS = 4  # per user: create one todo, then list them all
PREPARE_RUNS = 10  # well past psycopg's prepare threshold of 5


@pytest.fixture(scope="module")
def backend() -> Iterator[PrivateCluster]:
    """A private cluster, migrated directly (not through pgbouncer)."""
    with migrated_cluster() as cluster:
        yield cluster


@pytest.fixture(scope="module")
def bouncer_url(backend: PrivateCluster) -> Iterator[str]:
    """pgbouncer in transaction mode in front of `backend`, run as the cluster's OS user."""
    program = shutil.which("pgbouncer")
    require(program, "pgbouncer")
    port = free_port()
    config = pgbouncer_config(backend, program, port, SERVER_CONNECTIONS)
    log = backend.root / "pgbouncer.log"
    as_user = {"user": backend.user, "group": backend.user} if backend.user else {}
    with open(log, "w") as output:
        process = subprocess.Popen(
            [program, str(config)],
            stdout=output,
            stderr=subprocess.STDOUT,
            **as_user,
        )
    url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
    try:
        wait_until(lambda: accepts(url, process, log), "pgbouncer to accept connections")
        yield url
    finally:
        stop_process(process)


def accepts(url: str, process: subprocess.Popen, log: Path) -> bool:
    if process.poll() is not None:
        pytest.fail(f"pgbouncer exited:\n{log.read_text()}")
    try:
        psycopg.connect(url, connect_timeout=2).close()
        return True
    except psycopg.OperationalError:
        return False


@contextmanager
def serving(app: FastAPI) -> Iterator[str]:
    """`app` on a real uvicorn server in a thread; yields its base URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started or not thread.is_alive(), "uvicorn to start")
        if not server.started:
            pytest.fail("uvicorn did not start")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def one_user(base_url: str, start: threading.Barrier) -> None:
    """Creates ROUNDS todos, listing after each; every list is exactly what this user made."""
    user = new_user()
    made: list[tuple[str, str]] = []
    with httpx.Client(base_url=base_url, headers=user, timeout=30) as http:
        start.wait(timeout=60)
        for n in range(ROUNDS):
            created = http.post(TODOS, json={"title": f"{id_of(user)} #{n}"})
            assert created.status_code == 201, created.text
            made.append((created.json()["id"], created.json()["title"]))
            listed = http.get(TODOS)
            assert listed.status_code == 200, listed.text
            items = listed.json()["items"]
            assert sorted((todo["id"], todo["title"]) for todo in items) == sorted(made)
            assert {todo["user_id"] for todo in items} == {id_of(user)}


STATE = """
SELECT pg_backend_pid(), current_user, current_setting('role'),
       coalesce(current_setting('app.user_id', true), ''),
       (SELECT count(*) FROM pg_prepared_statements)
"""


def server_connection_states(url: str) -> list[tuple]:
    """STATE of every server connection: as many open transactions as pgbouncer has servers."""
    with ExitStack() as stack:
        connections = [stack.enter_context(psycopg.connect(url)) for _ in range(SERVER_CONNECTIONS)]
        return [conn.execute(STATE).fetchone() for conn in connections]


def test_thirty_users_through_two_server_connections_with_default_settings(
    bouncer_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With DB_PREPARED_STATEMENTS=auto (the default), the pool sees the pooler and prepares
    nothing. Before, "auto" looked only for `-pooler` in the host name: behind this one,
    340 of 480 requests failed."""
    monkeypatch.delenv("DB_PREPARED_STATEMENTS", raising=False)
    settings = app_settings(
        bouncer_url,
        db_pool_max_size=10,
        db_pool_timeout_s=30,  # a busy test machine must not turn waiting into 503s
    )
    start = threading.Barrier(USERS)
    app = create_app(settings)
    with serving(app) as base_url, ThreadPoolExecutor(USERS) as users:
        sessions = [users.submit(one_user, base_url, start) for _ in range(USERS)]
        for session in sessions:
            session.result()  # re-raises a user's failed assertion or error
        assert app.state.pool.prepare_threshold is None

    # Nothing outlived its transaction on the server connections the users shared.
    states = server_connection_states(bouncer_url)
    assert len({pid for pid, *_ in states}) == SERVER_CONNECTIONS
    assert [state[1:] for state in states] == [("postgres", "none", "", 0)] * SERVER_CONNECTIONS


def test_auto_keeps_prepared_statements_on_without_a_pooler(database_url: str) -> None:
    with app_client(database_url) as client:
        assert client.get("/readyz").status_code == 200
        assert client.app.state.pool.prepare_threshold == PREPARE_AFTER


@pytest.fixture
def second_database(backend: PrivateCluster, bouncer_url: str) -> str:
    """A migrated database of its own behind the pooler, so that the statements a test
    leaves prepared on its server connections stay out of the other tests' way."""
    name = "prepared_" + uuid.uuid4().hex[:8]
    with psycopg.connect(backend.url(), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    migrate(backend.url(name))
    return make_url(bouncer_url).set(database=name).render_as_string(hide_password=False)


def test_a_prepared_statement_lost_behind_an_undetected_pooler_is_retried_once(
    second_database: str, caplog: pytest.LogCaptureFixture
) -> None:
    """DB_PREPARED_STATEMENTS=on skips the detection, as with a pooler that hides itself.
    The request whose statement went missing is run again without preparing, and so is
    every later one: a 200, never a 500, and one warning."""
    settings = app_settings(
        second_database,
        db_prepared_statements="on",
        db_pool_min_size=1,
        db_pool_max_size=1,
    )
    user = new_user()
    with TestClient(create_app(settings)) as client:
        for _ in range(PREPARE_RUNS):  # alone, each runs on the same server connection
            assert client.get(TODOS, headers=user).status_code == 200
        with psycopg.connect(second_database) as other:
            other.execute("SELECT 1")  # an open transaction now holds that server connection
            for _ in range(3):
                response = client.get(TODOS, headers=user)
                assert response.status_code == 200, response.text
        assert client.app.state.pool.prepare_threshold is None
    warnings = [r for r in caplog.records if "prepared statements turned off" in r.message]
    assert len(warnings) == 1


@pytest.mark.parametrize(("threshold", "breaks"), [(None, False), (PREPARE_AFTER, True)])
def test_prepared_statements_break_behind_the_pooler(
    bouncer_url: str, threshold: int | None, breaks: bool
) -> None:
    """Why preparing must stop behind this pooler: a statement prepared on one server
    connection is missing on the next one pgbouncer hands out."""
    # pgbouncer pools per database: what this leaves prepared stays out of the other tests' way.
    url = bouncer_url.removesuffix("/postgres") + "/template1"
    query = "SELECT %s::int"
    with (
        psycopg.connect(url, autocommit=True, prepare_threshold=threshold) as conn,
        psycopg.connect(url) as other,
    ):
        for n in range(PREPARE_RUNS):  # alone, each run gets the same (last used) server
            conn.execute(query, (n,))
        other.execute("SELECT 1")  # an open transaction now holds that server
        if breaks:
            with pytest.raises(psycopg.errors.InvalidSqlStatementName):
                conn.execute(query, (0,))
        else:
            assert conn.execute(query, (0,)).fetchone() == (0,)
