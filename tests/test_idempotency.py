"""Idempotency keys: a keyed write's retry replays the recorded answer and writes nothing;
a key names one request of one user; only successes are recorded; racing duplicates write
once; keys expire after 24 hours; and, in plain SQL as todo_app, a user can neither see nor
plant nor change another user's keys, nor delete them before they expire."""

import asyncio
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest
import requests
from cluster import wait_until
from conftest import SWITCH, app_client, app_settings, as_user, id_of, new_user
from fastapi.testclient import TestClient
from psycopg.errors import InsufficientPrivilege
from test_api import TODOS, assert_invalid, assert_problem, create, fetch, items
from test_fuzz_schema import serving
from test_safety import UNREACHABLE_URL

from api.main import create_app, pool_for
from db import idempotency
from db.idempotency import sweep

KEY = "Idempotency-Key"
REPLAYED = "Idempotent-Replayed"
BODY = b'{"title": "Buy milk"}'
JSON = {"Content-Type": "application/json"}


def send(client, user, method, url, key, content=BODY, **headers):
    headers = {**user, **JSON, KEY: key, **headers}
    return client.request(method, url, content=content, headers=headers)


def post(client, user, key, content=BODY):
    return send(client, user, "POST", TODOS, key, content)


def todo_count(sql, user) -> int:
    [(count,)] = sql.execute("SELECT count(*) FROM todos WHERE user_id = %s", (id_of(user),))
    return count


def keys_of(sql, user_id: str) -> set[str]:
    rows = sql.execute("SELECT key FROM idempotency_keys WHERE user_id = %s", (user_id,))
    return {key for (key,) in rows}


def backdate(sql, user_id: str, key: str, age: str) -> None:
    sql.execute(
        "UPDATE idempotency_keys SET created_at = now() - %s::interval"
        " WHERE user_id = %s AND key = %s",
        (age, user_id, key),
    )


def assert_first(response, status=201):
    assert response.status_code == status, response.text
    assert "etag" in response.headers
    assert REPLAYED.lower() not in response.headers


def assert_replay_of(again, first):
    assert again.status_code == first.status_code, again.text
    assert again.content == first.content
    for header in ("location", "etag"):
        assert again.headers.get(header) == first.headers.get(header)
    assert again.headers[REPLAYED] == "true"


# The answer to a keyed write, replayed.


def test_keyed_post_is_replayed_and_writes_once(client, user, sql):
    first = post(client, user, "k")
    assert_first(first)
    assert first.headers["location"] == f"{TODOS}/{first.json()['id']}"
    assert_replay_of(post(client, user, "k"), first)
    assert todo_count(sql, user) == 1


def test_replay_after_a_patch_is_still_the_original_answer(client, user, sql):
    first = post(client, user, "k")
    url = first.headers["location"]
    assert client.patch(url, json={"title": "Changed"}, headers=user).status_code == 200
    again = post(client, user, "k")
    assert_replay_of(again, first)
    assert again.headers["etag"] == '"1"'
    assert fetch(client, user, first.json()["id"])["title"] == "Changed"
    assert todo_count(sql, user) == 1


def test_an_answer_is_replayed_after_the_table_gains_a_column(make_database):
    """A recorded answer is read back with its own columns' types, not the table's row type:
    a column added since (here one that cannot be null) does not break its replay."""
    url = make_database()
    user = new_user()
    with app_client(url) as client:
        first = post(client, user, "k")
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE DOMAIN priority AS integer NOT NULL DEFAULT 0")
            conn.execute("ALTER TABLE todos ADD COLUMN priority priority")
        assert_replay_of(post(client, user, "k"), first)


@pytest.mark.parametrize("if_match", [{}, {"If-Match": '"1"'}], ids=["plain", "if-match"])
def test_keyed_patch_is_replayed_even_with_its_now_stale_if_match(client, user, if_match):
    url = f"{TODOS}/{create(client, user)['id']}"
    first = send(client, user, "PATCH", url, "p", b'{"title": "New"}', **if_match)
    assert_first(first, 200)
    assert first.headers["etag"] == '"2"'
    assert_replay_of(send(client, user, "PATCH", url, "p", b'{"title": "New"}', **if_match), first)
    now = client.get(url, headers=user)
    assert (now.headers["etag"], now.json()) == ('"2"', first.json())


# What a key is.


@pytest.mark.parametrize(
    ("first", "again", "stored"),
    [
        ('"abc"', "abc", "abc"),
        ("abc", '"abc"', "abc"),
        ('"a\\"b"', 'a"b', 'a"b'),
        ('"a\\\\b"', "a\\b", "a\\b"),
        ('"a b"', '"a b"', "a b"),
        ("x" * 255, '"' + "x" * 255 + '"', "x" * 255),
    ],
    ids=["quoted-first", "bare-first", "escaped-quote", "escaped-backslash", "space", "255"],
)
def test_quoted_key_names_the_same_key_as_its_content(client, user, sql, first, again, stored):
    answer = post(client, user, first)
    assert_first(answer)
    assert_replay_of(post(client, user, again), answer)
    assert keys_of(sql, id_of(user)) == {stored}


INVALID_KEYS = {
    "empty": "",
    "256": "x" * 256,
    "quoted-256": '"' + "x" * 256 + '"',
    "quoted-empty": '""',
    "unterminated": '"abc',
    "space": "a b",
    "non-ascii": "ключ".encode(),
    "latin-1": "cl\xe9".encode("latin-1"),
    "tab": "a\tb",
    "control": "a\x01b",
    "del": "a\x7fb",
}


@pytest.mark.parametrize("key", INVALID_KEYS.values(), ids=INVALID_KEYS.keys())
def test_invalid_key_is_refused_and_nothing_is_written(client, user, sql, key):
    assert_invalid(post(client, user, key), KEY)
    assert todo_count(sql, user) == 0
    assert keys_of(sql, id_of(user)) == set()


# A key names one request: (method, path, body bytes).

REUSES = {
    "another-body": (("POST", None, BODY), ("POST", None, b'{"title": "Buy bread"}')),
    "other-bytes": (("POST", None, BODY), ("POST", None, b'{"title":"Buy milk"}')),
    "another-path": (("PATCH", 0, BODY), ("PATCH", 1, BODY)),
    "another-method": (("POST", None, BODY), ("PATCH", 0, BODY)),
}


@pytest.mark.parametrize(("original", "reuse"), REUSES.values(), ids=REUSES.keys())
def test_key_reused_for_another_request_is_refused_and_changes_nothing(
    client, user, sql, original, reuse
):
    urls = [f"{TODOS}/{create(client, user, title=f'todo {n}')['id']}" for n in range(2)]

    def request(method, target, content):
        return send(client, user, method, TODOS if target is None else urls[target], "k", content)

    first = request(*original)
    before = items(client, user)
    assert_problem(request(*reuse), 422, "IDEMPOTENCY_KEY_REUSED")
    assert items(client, user) == before
    assert_replay_of(request(*original), first)


# Keys are per user.


def test_another_user_sending_the_same_key_writes_their_own_todo(client, user, sql):
    other = new_user()
    mine = post(client, user, "shared")
    theirs = post(client, other, "shared")
    assert_first(theirs)
    assert theirs.json()["user_id"] == id_of(other)
    assert theirs.json()["id"] != mine.json()["id"]
    assert (todo_count(sql, user), todo_count(sql, other)) == (1, 1)
    assert_replay_of(post(client, other, "shared"), theirs)
    assert_replay_of(post(client, user, "shared"), mine)


def test_another_user_repeating_a_keyed_patch_never_gets_its_answer(client, user):
    todo = create(client, user)
    url = f"{TODOS}/{todo['id']}"
    assert_first(send(client, user, "PATCH", url, "shared", b'{"title": "Mine"}'), 200)
    stranger = send(client, new_user(), "PATCH", url, "shared", b'{"title": "Mine"}')
    assert_problem(stranger, 404, "NOT_FOUND")
    assert REPLAYED.lower() not in stranger.headers
    assert fetch(client, user, todo["id"])["title"] == "Mine"


# Only successes are recorded.


def test_keyed_patch_of_a_missing_todo_leaves_the_key_free(client, user, sql):
    missing = f"{TODOS}/{uuid.uuid4()}"
    assert_problem(send(client, user, "PATCH", missing, "k"), 404, "NOT_FOUND")
    assert keys_of(sql, id_of(user)) == set()
    assert_first(post(client, user, "k"))


def test_keyed_patch_refused_by_if_match_leaves_the_key_free(client, user, sql):
    url = f"{TODOS}/{create(client, user)['id']}"
    stale = send(client, user, "PATCH", url, "k", b'{"title": "New"}', **{"If-Match": '"7"'})
    assert_problem(stale, 412, "PRECONDITION_FAILED")
    assert keys_of(sql, id_of(user)) == set()
    fresh = send(client, user, "PATCH", url, "k", b'{"title": "New"}', **{"If-Match": '"1"'})
    assert_first(fresh, 200)
    assert fresh.headers["etag"] == '"2"'


def test_keyed_post_refused_as_invalid_leaves_the_key_free(client, user):
    assert_invalid(post(client, user, "k", b'{"title": ""}'), "title")
    assert_first(post(client, user, "k"))


# Duplicates racing the original.


def test_concurrent_duplicates_write_once(database_url, sql, user):
    # An existing user: a new one's row, inserted by the first request, would queue the rest.
    sql.execute("INSERT INTO users (id) VALUES (%s)", (id_of(user),))
    start = threading.Barrier(10)

    def duplicate(url):
        with requests.Session() as http:
            http.get(f"{url}/healthz", timeout=30)  # connected before the race starts
            start.wait()
            return http.post(
                f"{url}{TODOS}", data=BODY, headers={**user, **JSON, KEY: "race"}, timeout=30
            )

    with serving(database_url, db_pool_min_size=10) as url, ThreadPoolExecutor(10) as threads:
        answers = list(threads.map(duplicate, [url] * 10))

    assert {answer.status_code for answer in answers} <= {201, 409}
    created = [answer for answer in answers if answer.status_code == 201]
    assert len({answer.content for answer in created}) == 1
    assert [REPLAYED in answer.headers for answer in created].count(False) == 1
    for answer in answers:
        if answer.status_code == 409:
            assert_problem(answer, 409, "IDEMPOTENCY_IN_PROGRESS")
            assert answer.headers["Retry-After"] == "2"
    assert todo_count(sql, user) == 1
    assert keys_of(sql, id_of(user)) == {"race"}


def blocked_on_a_lock(sql) -> bool:
    return sql.execute(
        "SELECT EXISTS (SELECT FROM pg_stat_activity WHERE datname = current_database()"
        " AND wait_event_type = 'Lock' AND query LIKE '%idempotency_keys%')"
    ).fetchone()[0]


@pytest.mark.parametrize("commit", [True, False], ids=["committed", "rolled-back"])
def test_request_waiting_on_an_uncommitted_key(client, user, sql, database_url, commit):
    """Committed: the request wrote nothing and says so with a 409. Rolled back: the key
    was never taken, and the request writes."""
    sql.execute("INSERT INTO users (id) VALUES (%s)", (id_of(user),))
    with psycopg.connect(database_url, autocommit=True) as holder, ThreadPoolExecutor(1) as bg:
        with as_user(holder, id_of(user), rollback=not commit):
            holder.execute(
                "INSERT INTO idempotency_keys (user_id, key, fingerprint, response)"
                " VALUES (%s, 'held', 'another request', '{}')",
                (id_of(user),),
            )
            answer = bg.submit(post, client, user, "held")
            wait_until(lambda: blocked_on_a_lock(sql), "the request to wait for the key", 4)
        response = answer.result(timeout=10)

    if commit:
        assert_problem(response, 409, "IDEMPOTENCY_IN_PROGRESS")
        assert response.headers["retry-after"] == "2"
        assert todo_count(sql, user) == 0
    else:
        assert_first(response)
        assert todo_count(sql, user) == 1


# Expiry.


@pytest.mark.parametrize(("age", "expired"), [("23 hours 59 minutes", False), ("25 hours", True)])
def test_a_key_is_free_again_after_24_hours(client, user, sql, age, expired):
    first = post(client, user, "k")
    backdate(sql, id_of(user), "k", age)
    again = post(client, user, "k")
    if expired:
        assert_first(again)
        assert again.json()["id"] != first.json()["id"]
        assert_replay_of(post(client, user, "k"), again)
    else:
        assert_replay_of(again, first)
    assert todo_count(sql, user) == (2 if expired else 1)


def test_only_the_keys_own_conflict_is_taken_for_a_race(make_database):
    """A unique constraint someone added to todos is not the key's: its violation is an
    error on our side (500), not a 409 that would send the client into retries."""
    url = make_database()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE UNIQUE INDEX one_title_each ON todos (user_id, title)")
    user = new_user()
    with TestClient(create_app(app_settings(url)), raise_server_exceptions=False) as client:
        assert_first(post(client, user, "first"))
        answer = post(client, user, "second")
    assert_problem(answer, 500, "INTERNAL_ERROR")


def test_the_sweep_removes_every_users_expired_keys_and_only_those(client, sql):
    users = [new_user(), new_user()]
    for user in users:
        post(client, user, "old")
        post(client, user, "new", b'{"title": "Other"}')
        backdate(sql, id_of(user), "old", "25 hours")
    expired = sql.execute(
        "SELECT count(*) FROM idempotency_keys WHERE created_at <= now() - interval '24 hours'"
    ).fetchone()[0]

    removed = client.portal.call(sweep, client.app.state.pool, 5000)

    assert removed == expired >= 2
    assert [keys_of(sql, id_of(user)) for user in users] == [{"new"}, {"new"}]


def test_the_service_sweeps_on_its_own(database_url, sql, monkeypatch):
    monkeypatch.setattr(idempotency, "SWEEP_EVERY_S", 0.05)
    user = new_user()
    with app_client(database_url) as client:
        assert_first(post(client, user, "old"))
        backdate(sql, id_of(user), "old", "25 hours")
        wait_until(lambda: not keys_of(sql, id_of(user)), "the expired key swept", timeout=10)


def test_a_failed_sweep_is_logged_and_the_next_one_runs(caplog, monkeypatch):
    monkeypatch.setattr(idempotency, "SWEEP_EVERY_S", 0.05)

    async def sweep_a_dead_database() -> None:
        pool = pool_for(app_settings(UNREACHABLE_URL, db_pool_timeout_s=0.2), UNREACHABLE_URL)
        await pool.open(wait=False)
        try:
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(1):
                    await idempotency.sweep_forever(pool, 5000)
        finally:
            await pool.close()

    asyncio.run(sweep_a_dead_database())
    failures = [r for r in caplog.records if "idempotency key sweep failed" in r.getMessage()]
    assert len(failures) >= 2


# Direct SQL as todo_app: the policies on their own.


def insert_key(sql, user_id: str, key: str, age: str = "0") -> None:
    sql.execute(
        "INSERT INTO idempotency_keys (user_id, key, fingerprint, response, created_at)"
        " VALUES (%s, %s, 'f', '{}', now() - %s::interval)",
        (user_id, key, age),
    )


@pytest.fixture
def a_and_b(sql):
    """Users A (one fresh key) and B (one fresh, one expired), written as the superuser."""
    a, b = str(uuid.uuid4()), str(uuid.uuid4())
    for user_id in (a, b):
        sql.execute("INSERT INTO users (id) VALUES (%s)", (user_id,))
    insert_key(sql, a, "a-fresh")
    insert_key(sql, b, "b-fresh")
    insert_key(sql, b, "b-expired", "25 hours")
    return a, b


@pytest.fixture
def conn(database_url):
    with psycopg.connect(database_url, autocommit=True) as connection:
        yield connection


def visible_keys(conn) -> set[str]:
    return {key for (key,) in conn.execute("SELECT key FROM idempotency_keys")}


def test_a_sees_only_their_own_keys(conn, a_and_b):
    a, b = a_and_b
    with as_user(conn, a):
        assert visible_keys(conn) == {"a-fresh"}
        count = conn.execute("SELECT count(*) FROM idempotency_keys WHERE user_id = %s", (b,))
        assert count.fetchone() == (0,)


@pytest.mark.parametrize("user_id", ["", None], ids=["user-empty", "user-unset"])
def test_no_user_context_sees_no_keys(conn, a_and_b, user_id):
    assert len(visible_keys(conn)) >= 3
    with conn.transaction():
        if user_id is None:
            conn.execute("SELECT set_config('role', 'todo_app', true)")
        else:
            conn.execute(SWITCH, (user_id, "5000"))
        assert visible_keys(conn) == set()


def test_a_cannot_insert_a_key_for_b(conn, a_and_b):
    a, b = a_and_b
    refused = pytest.raises(InsufficientPrivilege, match="row-level security")
    with refused, as_user(conn, a, rollback=True):
        insert_key(conn, b, "planted")


@pytest.mark.parametrize("owner", [0, 1], ids=["own", "b's"])
def test_a_cannot_update_any_key(conn, a_and_b, owner):
    refused = pytest.raises(InsufficientPrivilege, match="permission denied")
    with refused, as_user(conn, a_and_b[0], rollback=True):
        conn.execute(
            "UPDATE idempotency_keys SET created_at = now() WHERE user_id = %s", (a_and_b[owner],)
        )


def test_a_deleting_bs_keys_by_name_deletes_nothing(conn, a_and_b):
    a, b = a_and_b
    with as_user(conn, a, rollback=True):
        for key in ("b-fresh", "b-expired"):
            deleted = conn.execute(
                "DELETE FROM idempotency_keys WHERE user_id = %s AND key = %s", (b, key)
            )
            assert deleted.rowcount == 0


# A DELETE that reads no column is held to the expiry policy alone: it may remove B's
# expired key (as the sweep does), never a fresh one.
@pytest.mark.parametrize(
    "statement",
    [
        "DELETE FROM idempotency_keys",
        "DELETE FROM idempotency_keys WHERE true",
        "DELETE FROM idempotency_keys RETURNING 1",
    ],
)
def test_a_cannot_delete_bs_fresh_key(conn, sql, a_and_b, statement):
    a, b = a_and_b
    with as_user(conn, a):
        conn.execute(statement)
    assert "b-fresh" in keys_of(sql, b)


# With a WHERE or RETURNING that reads a column, the owner policy applies as well.
@pytest.mark.parametrize(
    "statement",
    [
        "DELETE FROM idempotency_keys WHERE user_id = %(b)s",
        "DELETE FROM idempotency_keys WHERE key = 'b-expired'",
        "DELETE FROM idempotency_keys WHERE created_at <= now() - interval '24 hours'",
        "DELETE FROM idempotency_keys RETURNING key",
        "DELETE FROM idempotency_keys RETURNING *",
    ],
)
def test_delete_that_reads_columns_never_reaches_bs_expired_key(conn, sql, a_and_b, statement):
    a, b = a_and_b
    with as_user(conn, a):
        conn.execute(statement, {"b": b})
    assert keys_of(sql, b) == {"b-fresh", "b-expired"}
