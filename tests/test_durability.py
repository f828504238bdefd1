"""A crash under write load loses no acknowledged todo.

Eight writers create todos concurrently while PostgreSQL is killed (`immediate` stop: no
checkpoint, recovery from WAL) and restarted. A 201 is a promise: every todo answered with
one is in the database afterwards. Every other answer is a 503, never a 500.
"""

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest
from cluster import PrivateCluster, migrated_cluster, wait_until
from conftest import app_client, new_user
from fastapi.testclient import TestClient

TODOS = "/api/v1/todos"
WRITERS = 8
MAX_PER_WRITER = 150  # bounds the load even if the test's waits misbehave
ACKS_PER_PHASE = 40  # 201s to see before the crash, and again after the restart


@pytest.fixture
def cluster() -> Iterator[PrivateCluster]:
    with migrated_cluster() as cluster:
        yield cluster


class Load:
    """Writers that create todos until told to stop; records every answer."""

    def __init__(self, client: TestClient):
        self.client = client
        self.acknowledged: list[str] = []  # ids of todos answered 201
        self.statuses: list[int] = []
        self.done = threading.Event()

    def write(self, writer: int) -> None:
        user = new_user()
        for n in range(MAX_PER_WRITER):
            if self.done.is_set():
                return
            response = self.client.post(TODOS, json={"title": f"{writer}-{n}"}, headers=user)
            self.statuses.append(response.status_code)
            if response.status_code == 201:
                self.acknowledged.append(response.json()["id"])

    def acks_reach(self, count: int) -> None:
        wait_until(lambda: len(self.acknowledged) >= count, f"{count} acknowledged creates")


def test_acknowledged_creates_survive_a_crash_mid_load(cluster: PrivateCluster) -> None:
    with app_client(cluster.url()) as client, ThreadPoolExecutor(WRITERS) as writers:
        load = Load(client)
        running = [writers.submit(load.write, writer) for writer in range(WRITERS)]
        try:
            load.acks_reach(ACKS_PER_PHASE)
            cluster.stop("immediate")
            wait_until(lambda: 503 in load.statuses, "a request to fail during the crash")
            cluster.start()
            load.acks_reach(len(load.acknowledged) + ACKS_PER_PHASE)
        finally:
            load.done.set()
            for writer in running:
                writer.result(timeout=30)  # re-raises a writer's exception

    assert set(load.statuses) <= {201, 503}
    with psycopg.connect(cluster.url(), autocommit=True) as conn:
        query = "SELECT id::text FROM todos WHERE id = ANY(%s::uuid[])"
        stored = {id_ for (id_,) in conn.execute(query, [load.acknowledged])}
    assert set(load.acknowledged) - stored == set()
