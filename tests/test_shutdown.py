"""Graceful shutdown of `todo-api serve`: on SIGTERM the request in flight still gets its
answer, the pool is closed and the process exits 0.

The request is held in flight deterministically: a superuser transaction locks `todos`, so
the request waits inside PostgreSQL (seen in pg_stat_activity) until the test lets it go.
"""

import signal
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psycopg
import pytest
from cluster import PrivateCluster, Server, migrated_cluster, wait_until
from conftest import app_client, new_user

TODOS = "/api/v1/todos"
APP_NAME = "todo-shutdown-test"  # marks the server's connections in pg_stat_activity


@pytest.fixture(scope="module")
def cluster() -> Iterator[PrivateCluster]:
    with migrated_cluster() as cluster:
        yield cluster


def server_backends(conn: psycopg.Connection, waiting_on_lock: bool = False) -> int:
    query = "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s"
    if waiting_on_lock:
        query += " AND wait_event_type = 'Lock'"
    return conn.execute(query, [APP_NAME]).fetchone()[0]


def test_sigterm_finishes_the_request_in_flight_closes_the_pool_and_exits_0(
    cluster: PrivateCluster, tmp_path: Path
) -> None:
    # A statement timeout longer than the test holds a request: only SIGTERM can end it early.
    server = Server(
        cluster.url(application_name=APP_NAME), tmp_path, DB_STATEMENT_TIMEOUT_MS="60000"
    )
    try:
        wait_until(server.ready, "the server to be ready")
        with (
            psycopg.connect(cluster.url(), autocommit=True) as admin,
            psycopg.connect(cluster.url(), autocommit=True) as locker,
            ThreadPoolExecutor(1) as background,
        ):
            with locker.transaction():
                locker.execute("LOCK TABLE todos IN ACCESS EXCLUSIVE MODE")
                answer = background.submit(
                    httpx.post,
                    f"{server.base}{TODOS}",
                    json={"title": "in flight"},
                    headers=new_user(),
                    timeout=30,
                )
                wait_until(
                    lambda: server_backends(admin, waiting_on_lock=True),
                    "the request to wait in the database",
                )
                server.process.send_signal(signal.SIGTERM)
                wait_until(
                    lambda: "Waiting for connections to close" in server.output(),
                    "the server to wait for the request in flight",
                    timeout=10,
                )
            # The lock is released: the request in flight finishes.
            response = answer.result(timeout=30)
            assert response.status_code == 201, response.text
            assert response.json()["title"] == "in flight"
            assert server.process.wait(timeout=30) == 0, server.output()
            assert "Application shutdown complete" in server.output()
            wait_until(lambda: server_backends(admin) == 0, "the server's connections to close")
    finally:
        server.stop()


def test_the_app_closes_its_pool_when_it_stops(cluster: PrivateCluster) -> None:
    """Seen from PostgreSQL, a process that exits without closing its pool looks the same
    (libpq says goodbye as the connections are freed), so this is checked from inside."""
    with app_client(cluster.url()) as client:
        assert client.get("/readyz").status_code == 200
        pool = client.app.state.pool
    assert pool.closed
