"""Creates retried through a database crash are written exactly once.

8 writers (one user each) create todos against `todo-api serve`, each create with a fresh
Idempotency-Key and a unique title, and retry the same request (same key, same body) on a
503, a 409, a connection error or a client timeout until it is acknowledged. Meanwhile the
private cluster is stopped with `pg_ctl stop -m immediate` (a crash) and started again.
The client times out (0.5 s) before the service's pool does (3 s), so requests abandoned
during the outage commit after the restart while their retries are under way: the
ambiguous case a key exists for, and some acknowledgements must be replays.

Afterwards, as the superuser: every acknowledged id is in todos with its title, no title
has two rows, there are as many rows as acknowledged creates, and each key has exactly one
idempotency_keys row; no request got a 500. A create written twice, or an acknowledged one
lost, fails the test; so does an outage that no writer noticed.
"""

import itertools
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psycopg
import pytest
from cluster import PrivateCluster, Server, migrated_cluster, wait_until
from conftest import id_of, new_user

TODOS = "/api/v1/todos"
WRITERS = 8
RETRY_PAUSE_S = 0.075
# The client gives up before the service does: a request abandoned during the outage waits
# for a connection, gets one after the restart and commits, so its retry must be a replay.
CLIENT_TIMEOUT_S = 0.5
POOL_TIMEOUT_S = "3"
GIVE_UP_S = 30  # from the writers' start: no create may take longer to be acknowledged


@dataclass
class Ack:
    user: str
    key: str
    id: str
    replayed: bool


@dataclass
class Tally:
    acks: dict[str, Ack] = field(default_factory=dict)  # title -> acknowledgement
    retries: Counter[str] = field(default_factory=Counter)  # reason -> how many
    failures: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


@pytest.fixture
def service(tmp_path: Path) -> Iterator[tuple[PrivateCluster, Server]]:
    with migrated_cluster() as cluster:
        server = Server(cluster.url(), tmp_path, DB_POOL_TIMEOUT_S=POOL_TIMEOUT_S)
        try:
            wait_until(server.ready, "the server to be ready")
            yield cluster, server
        finally:
            server.stop()


def create_once(http: httpx.Client, user: str, title: str, deadline: float, tally: Tally) -> str:
    """POST one todo until acknowledged; what went wrong, if anything."""
    key = str(uuid.uuid4())
    while time.monotonic() < deadline:
        try:
            response = http.post(TODOS, json={"title": title}, headers={"Idempotency-Key": key})
        except httpx.TransportError as error:
            reason = type(error).__name__
        else:
            if response.status_code == 201:
                body, replayed = response.json(), response.headers.get("Idempotent-Replayed")
                if body["title"] != title:
                    return f"201 for {title!r} answered {body}"
                with tally.lock:
                    tally.acks[title] = Ack(user, key, body["id"], replayed == "true")
                return ""
            if response.status_code not in (409, 503):
                return f"{title}: {response.status_code} {response.text[:200]}"
            reason = str(response.status_code)
        with tally.lock:
            tally.retries[reason] += 1
        time.sleep(RETRY_PAUSE_S)
    return f"{title}: not acknowledged within {GIVE_UP_S} s"


def write(base: str, writer: int, stop: threading.Event, deadline: float, tally: Tally) -> None:
    user = new_user()
    with httpx.Client(base_url=base, headers=user, timeout=CLIENT_TIMEOUT_S) as http:
        for n in itertools.count():
            failure = create_once(http, id_of(user), f"w{writer}-{n}", deadline, tally)
            if failure:
                with tally.lock:
                    tally.failures.append(failure)
                return
            if stop.is_set():
                return


def test_creates_retried_through_a_crash_are_written_exactly_once(
    service: tuple[PrivateCluster, Server],
) -> None:
    cluster, server = service
    tally, stop = Tally(), threading.Event()
    deadline = time.monotonic() + GIVE_UP_S
    writers = [
        threading.Thread(target=write, args=(server.base, n, stop, deadline, tally), daemon=True)
        for n in range(WRITERS)
    ]
    for writer in writers:
        writer.start()
    try:
        time.sleep(1.5)
        cluster.stop("immediate")
        time.sleep(1.5)
    finally:
        if not cluster.is_running():
            cluster.start()
    time.sleep(3)
    stop.set()
    for writer in writers:
        writer.join(timeout=max(deadline - time.monotonic(), 0) + CLIENT_TIMEOUT_S)
    assert not any(writer.is_alive() for writer in writers), "a writer hung"

    with psycopg.connect(cluster.url(), autocommit=True) as conn:
        rows = conn.execute("SELECT id::text, title FROM todos").fetchall()
        keys = Counter(conn.execute("SELECT user_id::text, key FROM idempotency_keys").fetchall())
    titles = Counter(title for _, title in rows)
    duplicates = sum(count - 1 for count in titles.values())
    acks = tally.acks
    replays = sum(ack.replayed for ack in acks.values())
    print(
        f"\nwriters={WRITERS} retries={sum(tally.retries.values())} {dict(tally.retries)}"
        f" acknowledged={len(acks)} replays={replays} rows={len(rows)} duplicates={duplicates}"
    )

    assert tally.failures == [], tally.failures
    noticed = sum(count for reason, count in tally.retries.items() if reason != "409")
    assert noticed, f"no writer saw a 503 or a connection error: {dict(tally.retries)}"
    assert duplicates == 0, [title for title, count in titles.items() if count > 1]
    stored = dict(rows)
    lost = {title: ack.id for title, ack in acks.items() if stored.get(ack.id) != title}
    assert lost == {}, "acknowledged creates missing from todos"
    assert len(rows) == len(acks)
    assert all(keys[(ack.user, ack.key)] == 1 for ack in acks.values())
    assert keys.total() == len(acks)
    assert replays, "no abandoned request committed: the retries were never ambiguous"
