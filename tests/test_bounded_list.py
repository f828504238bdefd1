"""A list without `limit` is bounded: one user's 150,000 todos cannot stall the others.

An outside review found that `GET /api/v1/todos` without `limit` answered every todo the
user had: at 200,000 todos it returned 90 MB in 7 s, the worker's RSS went from 82 MB to
620 MB, and every other user waited about 6 s, because building and serializing the list
held the worker's event loop. Now `limit` defaults to 100 (at most 1000) and `next_cursor`
says when more exist, so no request returns an unbounded list.

The test gives one user 150,000 todos and has 4 threads list them without `limit`, 20 times
in all, while another user polls their own list. It proves that each answer is a page of
100 with a next_cursor, that the other user's worst latency stays under 1 s, and that the
serving process's memory (its own: `todo-api serve` runs in a subprocess) grows by under 50 MB, peak
included. The old behaviour fails every one of these by a wide margin (about 6 s of
waiting and hundreds of MB).
"""

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psycopg
import pytest
from cluster import Server, wait_until
from conftest import id_of, new_user

TODOS = "/api/v1/todos"
TODO_COUNT = 150_000
LISTS, LIST_THREADS = 20, 4
DEFAULT_PAGE = 100
MAX_POLL_S = 1.0
MAX_RSS_GROWTH_MB = 50

# One statement; created_at one millisecond apart, so every todo has its own position.
# The description makes a todo about as large in JSON (~450 bytes) as in the review.
SEED = """
WITH owner AS (INSERT INTO users (id) VALUES (%(user)s) RETURNING id)
INSERT INTO todos (user_id, title, description, is_completed, created_at, updated_at)
SELECT owner.id, 'todo #' || n, repeat('lorem ipsum ', 15), n %% 3 = 0,
       now() - n * interval '1 millisecond', now() - n * interval '1 millisecond'
FROM owner, generate_series(1, %(count)s) AS n
"""


@pytest.fixture(scope="module")
def seeded(make_database: Callable[..., str]) -> tuple[str, dict[str, str]]:
    """A database of its own (the rows would slow the shared one) and the heavy user."""
    url = make_database()
    heavy = new_user()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(SEED, {"user": id_of(heavy), "count": TODO_COUNT})
        conn.execute("ANALYZE todos")
    return url, heavy


@pytest.fixture
def server(seeded: tuple[str, dict[str, str]], tmp_path: Path) -> Iterator[Server]:
    """`todo-api serve` in its own process, so that its memory is its own."""
    url, _ = seeded
    server = Server(url, tmp_path)
    try:
        wait_until(server.ready, "the server to be ready")
        yield server
    finally:
        server.stop()


def memory_mb(pid: int) -> dict[str, float]:
    """VmRSS (now) and VmHWM (peak since start) of a process, in MB."""
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    fields = dict(line.split(":", 1) for line in status)
    return {name: int(fields[name].split()[0]) / 1024 for name in ("VmRSS", "VmHWM")}


def test_a_list_without_limit_is_one_page_and_does_not_stall_other_users(
    seeded: tuple[str, dict[str, str]], server: Server
) -> None:
    _, heavy = seeded
    base, pid = server.base, server.process.pid
    light = new_user()
    with (
        httpx.Client(base_url=base, headers=heavy, timeout=120) as heavy_http,
        httpx.Client(base_url=base, headers=light, timeout=30) as light_http,
    ):
        assert light_http.post(TODOS, json={"title": "mine"}).status_code == 201
        # Warm up with explicit limits (the same in the old and the new code): code paths
        # loaded and the pool grown to what 4 concurrent lists use, before the baseline.
        with ThreadPoolExecutor(LIST_THREADS) as warm:
            pages = list(warm.map(lambda _: heavy_http.get(TODOS, params={"limit": 100}), "1234"))
        assert all(page.status_code == 200 for page in pages), pages[0].text
        before = memory_mb(pid)

        done = threading.Event()
        poll_times: list[float] = []
        poll_failures: list[str] = []

        def poll() -> None:
            """Until the lists are done, and at least once."""
            while True:
                started = time.perf_counter()
                try:
                    response = light_http.get(TODOS)
                except httpx.HTTPError as error:
                    poll_failures.append(repr(error))
                else:
                    if response.status_code != 200 or response.json()["count"] != 1:
                        poll_failures.append(f"{response.status_code} {response.text[:200]}")
                poll_times.append(time.perf_counter() - started)
                if done.is_set():
                    return

        def list_everything(_: int) -> tuple[int, int | None, str | None, int, float]:
            started = time.perf_counter()
            response = heavy_http.get(TODOS)
            elapsed = time.perf_counter() - started
            if response.status_code != 200:
                return response.status_code, None, None, len(response.content), elapsed
            body = response.json()
            return 200, len(body["items"]), body["next_cursor"], len(response.content), elapsed

        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        listed_at = time.perf_counter()
        with ThreadPoolExecutor(LIST_THREADS) as lists:
            results = list(lists.map(list_everything, range(LISTS)))
        listing_s = time.perf_counter() - listed_at
        done.set()
        poller.join(timeout=60)
        after = memory_mb(pid)

    growth = after["VmRSS"] - before["VmRSS"]
    peak_growth = after["VmHWM"] - before["VmRSS"]
    worst_poll = max(poll_times)
    measured = (
        f"{LISTS} unlimited lists from {LIST_THREADS} threads took {listing_s:.2f} s"
        f" (slowest {max(r[4] for r in results):.2f} s, largest answer"
        f" {max(r[3] for r in results) / 1e6:.2f} MB); the other user's worst latency"
        f" {worst_poll * 1000:.0f} ms over {len(poll_times)} polls; server RSS"
        f" {before['VmRSS']:.1f} -> {after['VmRSS']:.1f} MB (+{growth:.1f}),"
        f" peak {after['VmHWM']:.1f} MB (+{peak_growth:.1f})"
    )
    print(measured)
    statuses = sorted(
        {(status, items, cursor is not None) for status, items, cursor, *_ in results}
    )
    assert statuses == [(200, DEFAULT_PAGE, True)], (
        f"(status, items, has next_cursor) of the lists: {statuses}; {measured}"
    )
    assert not poll_failures, f"{poll_failures[:3]}; {measured}"
    assert worst_poll < MAX_POLL_S, f"the other user waited too long: {measured}"
    assert growth < MAX_RSS_GROWTH_MB, f"the server's RSS grew too much: {measured}"
    assert peak_growth < MAX_RSS_GROWTH_MB, f"the server's peak RSS grew too much: {measured}"
