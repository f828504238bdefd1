"""The database goes away and comes back: restarts, crashes, outages and slow statements.

Each test runs the app (TestClient) against a private cluster that it stops and starts
itself. Pooled connections die with the server; the pool's zero-round-trip check at
checkout replaces them. While the database is down every request answers 503 quickly,
and the service recovers by itself once it is back.
"""

import time
from collections.abc import Iterator

import httpx
import psycopg
import pytest
from cluster import PrivateCluster, migrated_cluster, wait_until
from conftest import app_client, new_user
from fastapi.testclient import TestClient

TODOS = "/api/v1/todos"
APP_NAME = "todo-outage-test"  # marks the app's connections in pg_stat_activity


@pytest.fixture(scope="module")
def cluster() -> Iterator[PrivateCluster]:
    with migrated_cluster() as cluster:
        yield cluster


def app_on(cluster: PrivateCluster, **settings) -> TestClient:
    return app_client(cluster.url(application_name=APP_NAME), **settings)


def assert_unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["error_code"] == "SERVICE_UNAVAILABLE"
    assert int(response.headers["retry-after"]) > 0


def answers(client: TestClient, path: str, **kwargs) -> bool:
    """Whether GET `path` succeeds; while it does not, it must be a 503, never a 500."""
    response = client.get(path, **kwargs)
    if response.status_code != 200:
        assert_unavailable(response)
    return response.status_code == 200


def app_backends(cluster: PrivateCluster) -> set[int]:
    with psycopg.connect(cluster.url(), autocommit=True) as conn:
        query = "SELECT pid FROM pg_stat_activity WHERE application_name = %s"
        return {pid for (pid,) in conn.execute(query, [APP_NAME])}


def test_steady_state_requests_open_no_connection(cluster: PrivateCluster) -> None:
    """The check at checkout neither reconnects nor discards a healthy connection."""
    user = new_user()
    with app_on(cluster) as client:
        todo = client.post(TODOS, json={"title": "warm"}, headers=user).json()
        pool = client.app.state.pool
        opened, backends = pool.get_stats()["connections_num"], app_backends(cluster)
        for _ in range(10):
            assert client.get(TODOS, headers=user).status_code == 200
            assert client.get(f"{TODOS}/{todo['id']}", headers=user).status_code == 200
        assert pool.get_stats()["connections_num"] == opened
        assert app_backends(cluster) == backends


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_first_request_after_a_restart_succeeds(cluster: PrivateCluster, mode: str) -> None:
    """`immediate` is a crash: the server's backends die without saying goodbye."""
    user = new_user()
    with app_on(cluster) as client:
        todo = client.post(TODOS, json={"title": "before the restart"}, headers=user).json()
        cluster.stop(mode)
        cluster.start()
        response = client.get(f"{TODOS}/{todo['id']}", headers=user)
        assert response.status_code == 200, response.text
        assert response.json() == todo


def test_idle_connections_closed_by_the_server_fail_no_request(cluster: PrivateCluster) -> None:
    """A restart, a failover or Neon's suspend closes every idle connection at once. The
    first one found dead makes the pool test its siblings too, instead of finding them one
    at a time with a growing backoff (it answered 503, 503, 503, then 200 before)."""
    user = new_user()
    with app_on(cluster, db_pool_min_size=10) as client:
        pool = client.app.state.pool
        wait_until(lambda: pool.get_stats()["pool_available"] == 10, "ten idle connections")
        with psycopg.connect(cluster.url(), autocommit=True) as admin:
            killed = admin.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE application_name = %s",
                [APP_NAME],
            ).fetchone()
        assert killed == (10,)
        wait_until(lambda: not app_backends(cluster), "the backends to exit")
        for _ in range(5):
            started = time.monotonic()
            response = client.get(TODOS, headers=user)
            elapsed = time.monotonic() - started
            assert response.status_code == 200, response.text
            assert elapsed < 1, f"took {elapsed:.2f} s"


def test_statement_timeout_is_set_and_answers_503(cluster: PrivateCluster) -> None:
    """A statement blocked on a lock is cancelled after DB_STATEMENT_TIMEOUT_MS.

    The lock is held for at most 3 s, shorter than the 5 s default: a request that ignored
    the setting would wait the lock out and answer 200.
    """
    options = "-c idle_in_transaction_session_timeout=3s"
    with (
        app_on(cluster, db_statement_timeout_ms=200) as client,
        psycopg.connect(cluster.url(), autocommit=True, options=options) as locker,
        locker.transaction(),
    ):
        locker.execute("LOCK TABLE todos IN ACCESS EXCLUSIVE MODE")
        assert_unavailable(client.get(TODOS, headers=new_user()))
    log = (cluster.root / "server.log").read_text()
    assert "canceling statement due to statement timeout" in log


def test_outage_answers_503_quickly_and_recovers_without_restart(
    cluster: PrivateCluster,
) -> None:
    user = new_user()
    # A short pool timeout keeps the test quick; without any, a request would wait 30 s.
    with app_on(cluster, db_pool_timeout_s=1) as client:
        todo = client.post(TODOS, json={"title": "before the outage"}, headers=user).json()
        path = f"{TODOS}/{todo['id']}"
        cluster.stop("fast")
        try:
            for method, url, body in [
                ("POST", TODOS, {"title": "during the outage"}),
                ("GET", TODOS, None),
                ("GET", path, None),
                ("PATCH", path, {"is_completed": True}),
                ("DELETE", path, None),
                ("GET", "/readyz", None),
            ]:
                started = time.monotonic()
                response = client.request(method, url, json=body, headers=user)
                assert time.monotonic() - started < 10, f"{method} {url} hung"
                assert_unavailable(response)
            assert client.get("/healthz").status_code == 200
        finally:
            cluster.start()
        wait_until(lambda: answers(client, "/readyz"), "/readyz to recover")
        wait_until(lambda: answers(client, path, headers=user), "requests to recover")
        assert client.get(path, headers=user).json() == todo  # nothing changed while down
