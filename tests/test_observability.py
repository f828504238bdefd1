"""Observability (SPEC §8), in process: X-Request-ID, Server-Timing, the log lines and /metrics.

- X-Request-ID: a well-formed one is echoed as sent, anything else replaced by a new UUID4;
  every answer carries it, errors included (400, 401, 404, 405, 413, 422, 500, 503).
- Server-Timing: `auth;dur=X, db;dur=Y, total;dur=Z` on every answer, auth and db at zero for
  what touches neither.
- Logs (captured with `api.logs.configure(format, StringIO)` after create_app, which
  configures them itself): one `todo.access` line per request with every field, the request's
  id on every line logged while it is served and none outside, and none of the secrets a
  request carries (token, body, Idempotency-Key) nor the database password, ever.
- Metrics: the counters, histogram and gauges of api/metrics.py, read from GET /metrics as
  deltas (the metric objects are global to the process); never a user id or a raw path.

Traces are tested elsewhere; here no tracer is configured, so the access line's trace_id is null.
"""

import io
import json
import logging
import os
import re
import secrets
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from cluster import free_port, wait_until
from conftest import app_client, app_settings, id_of, new_user, with_url
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient
from issuer import ISSUER
from prometheus_client.parser import text_string_to_metric_families
from test_api import TODOS, assert_problem
from test_safety import UNREACHABLE_URL

from api import logs
from api.main import create_app

TODO_ROUTE = TODOS + "/{todo_id}"
MAX_BODY = 64 * 1024
JSON = {"Content-Type": "application/json"}
SERVER_TIMING = re.compile(r"auth;dur=(\d+\.\d{3}), db;dur=(\d+\.\d{3}), total;dur=(\d+\.\d{3})")
ACCESS_FIELDS = {"method", "route", "status", "duration_ms", "auth_ms", "db_ms", "user_id"}
ACCESS_KEYS = {"time", "level", "logger", "message", "request_id", "trace_id", *ACCESS_FIELDS}

# Secrets planted in requests and settings: none may ever reach a log line.
PASSWORD = f"planted-password-{secrets.token_hex(8)}"  # trust auth ignores it
BODY_SECRET = f"planted-body-{secrets.token_hex(8)}"
KEY_SECRET = f"planted-key-{secrets.token_hex(8)}"
BAD_TOKEN = f"planted-token-{secrets.token_hex(8)}"


# --- apps and logs -----------------------------------------------------------------------


def add_failing_routes(app: FastAPI) -> None:
    """Routes that fail as no handler expects, quoting the request body in the message (as a
    database error quotes the row it refused)."""

    @app.post("/boom")
    async def boom(request: Request) -> None:
        raise RuntimeError(f"could not handle {(await request.body()).decode()}")

    @app.post("/boom/db")
    async def boom_db(request: Request) -> None:
        raise psycopg.errors.UniqueViolation(f"duplicate key {(await request.body()).decode()}")

    @app.get("/boom/connection")
    async def boom_connection() -> None:
        raise psycopg.OperationalError("server closed the connection unexpectedly")


@pytest.fixture(scope="module")
def obs(database_url: str) -> Iterator[TestClient]:
    """The app (bearer mode), on a database URL with a password in it, plus failing routes."""
    app = create_app(app_settings(with_url(database_url, password=PASSWORD)))
    add_failing_routes(app)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


@contextmanager
def captured(log_format: logs.LogFormat = "json") -> Iterator[io.StringIO]:
    """Every log line in `log_format` to a buffer, until the block ends. After create_app:
    it configures the logs itself."""
    buffer = io.StringIO()
    logs.configure(log_format, buffer)
    try:
        yield buffer
    finally:
        logs.configure("json")


@pytest.fixture
def log() -> Iterator[io.StringIO]:
    with captured() as buffer:
        yield buffer


def lines(buffer: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines()]


def access_lines(buffer: io.StringIO, request_id: str) -> list[dict[str, Any]]:
    return [
        line
        for line in lines(buffer)
        if line["logger"] == "todo.access" and line["request_id"] == request_id
    ]


def the_access_line(buffer: io.StringIO, request_id: str) -> dict[str, Any]:
    found = access_lines(buffer, request_id)
    assert len(found) == 1, (request_id, buffer.getvalue())
    return found[0]


def assert_no_secrets(text: str, *more: str) -> None:
    for secret in (PASSWORD, BODY_SECRET, KEY_SECRET, BAD_TOKEN, *more):
        assert secret not in text, f"{secret!r} was logged:\n{text}"


def new_id() -> str:
    return f"req-{secrets.token_hex(6)}"


def with_id(request_id: str, headers: dict[str, str] | None = None) -> dict[str, str]:
    return {**(headers or {}), "X-Request-ID": request_id}


def token_of(user: dict[str, str]) -> str:
    return user["Authorization"].removeprefix("Bearer ")


def create(client: TestClient, user: dict[str, str], title: str = "Buy milk") -> httpx.Response:
    response = client.post(TODOS, json={"title": title}, headers=user)
    assert response.status_code == 201, response.text
    return response


def timing(response: httpx.Response) -> tuple[float, float, float]:
    """(auth, db, total) in ms, from a Server-Timing header of exactly our three metrics."""
    header = response.headers.get("server-timing")
    assert header is not None, response.headers
    parsed = SERVER_TIMING.fullmatch(header)
    assert parsed, header
    auth, db, total = (float(value) for value in parsed.groups())
    assert total >= db and total >= auth, header
    return auth, db, total


def assert_generated_id(response: httpx.Response, sent: str | None = None) -> str:
    request_id = response.headers["x-request-id"]
    assert str(uuid.UUID(request_id)) == request_id and uuid.UUID(request_id).version == 4
    assert request_id != sent
    return request_id


# --- metrics -----------------------------------------------------------------------------

Scrape = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Scrape:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def scrape(client: TestClient) -> Scrape:
    response = client.get("/metrics")
    assert response.status_code == 200, response.text
    return parse(response.text)


def value(scraped: Scrape, name: str, **labels: str) -> float:
    return scraped.get((name, frozenset(labels.items())), 0.0)


def delta(before: Scrape, after: Scrape, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def label_values(scraped: Scrape) -> set[str]:
    return {label for _, labels in scraped for _, label in labels}


# === X-Request-ID =========================================================================


@pytest.mark.parametrize("sent", ["abc-123", "a.b:c_d-9", "x" * 128, "Z"])
def test_a_well_formed_request_id_is_echoed_exactly(obs, sent) -> None:
    assert obs.get("/healthz", headers={"X-Request-ID": sent}).headers["x-request-id"] == sent


@pytest.mark.parametrize(
    "sent",
    [b"", b"x" * 129, b"has space", b"a/b", "caf\u00e9".encode(), b"a;b", b"a,b"],
    ids=["empty", "129 chars", "space", "slash", "non-ascii", "semicolon", "comma"],
)
def test_a_malformed_request_id_is_replaced_by_a_new_uuid(obs, sent) -> None:
    first = obs.get("/healthz", headers={"X-Request-ID": sent})
    second = obs.get("/healthz", headers={"X-Request-ID": sent})
    assert assert_generated_id(first, sent.decode("latin-1")) != assert_generated_id(second)


def test_without_a_request_id_each_request_gets_its_own_and_logs_it(obs, log) -> None:
    first, second = (assert_generated_id(obs.get("/healthz")) for _ in range(2))
    assert first != second
    assert the_access_line(log, first)["route"] == the_access_line(log, second)["route"]


@pytest.fixture
def todo(obs) -> tuple[dict[str, str], dict[str, Any], str]:
    """A user, a todo of theirs, and its ETag."""
    user = new_user()
    response = create(obs, user)
    return user, response.json(), response.headers["etag"]


EVERY_STATUS: dict[str, Callable[..., httpx.Response]] = {
    "201": lambda c, user, todo, etag, h: c.post(TODOS, json={"title": "x"}, headers=user | h),
    "200": lambda c, user, todo, etag, h: c.get(f"{TODOS}/{todo['id']}", headers=user | h),
    "204": lambda c, user, todo, etag, h: c.delete(f"{TODOS}/{todo['id']}", headers=user | h),
    "304": lambda c, user, todo, etag, h: c.get(
        f"{TODOS}/{todo['id']}", headers=user | h | {"If-None-Match": etag}
    ),
    "400": lambda c, user, todo, etag, h: c.get(f"{TODOS}/not-a-uuid", headers=user | h),
    "401": lambda c, user, todo, etag, h: c.get(TODOS, headers=h),
    "404": lambda c, user, todo, etag, h: c.get(f"/no/such/{uuid.uuid4().hex}", headers=h),
    "404-todo": lambda c, user, todo, etag, h: c.get(f"{TODOS}/{uuid.uuid4()}", headers=user | h),
    "405": lambda c, user, todo, etag, h: c.put(TODOS, json={"title": "x"}, headers=user | h),
    "413": lambda c, user, todo, etag, h: c.post(
        TODOS, content=b"x" * (MAX_BODY + 1), headers=user | h | {"Content-Type": "text/plain"}
    ),
    "422": lambda c, user, todo, etag, h: c.post(TODOS, json={"title": ""}, headers=user | h),
    "500": lambda c, user, todo, etag, h: c.post("/boom", content=b"x", headers=h),
}


@pytest.mark.parametrize("case", EVERY_STATUS)
def test_every_answer_carries_the_request_id_and_server_timing(obs, todo, log, case) -> None:
    request_id = new_id()
    response = EVERY_STATUS[case](obs, *todo, with_id(request_id))
    assert response.status_code == int(case[:3]), response.text
    assert response.headers["x-request-id"] == request_id
    timing(response)
    line = the_access_line(log, request_id)
    assert line["status"] == response.status_code


def test_an_unreachable_database_is_a_503_logged_and_counted_under_its_request_id() -> None:
    """The pool never holds a connection to hand out (its background attempts to connect
    fail), so the request's wait for one ends in PoolTimeout after DB_POOL_TIMEOUT_S: kind
    `pool_timeout`, not `unavailable` (that is an OperationalError the request itself meets)."""
    url = with_url(UNREACHABLE_URL, password=PASSWORD)
    user, request_id = new_user(), new_id()
    app = create_app(app_settings(url, db_pool_timeout_s=0.2))
    with captured() as log, TestClient(app) as client:
        before = scrape(client)
        response = client.get(TODOS, headers=with_id(request_id, user))
        after = scrape(client)
    assert_problem(response, 503, "SERVICE_UNAVAILABLE")
    assert response.headers["x-request-id"] == request_id
    auth, db, _ = timing(response)
    assert auth > 0 and db >= 200 * 0.95  # db includes the wait for a pool connection
    assert delta(before, after, "todo_db_errors_total", kind="pool_timeout") == 1
    assert delta(before, after, "todo_db_errors_total", kind="unavailable") == 0
    warnings = [
        line for line in lines(log) if line["message"] == "database unavailable: PoolTimeout"
    ]
    assert [line["request_id"] for line in warnings] == [request_id]
    assert warnings[0]["level"] == "WARNING"
    assert the_access_line(log, request_id)["status"] == 503
    assert_no_secrets(log.getvalue(), token_of(user))


# === Server-Timing ========================================================================


def test_healthz_spends_no_time_in_identity_or_database(obs) -> None:
    auth, db, total = timing(obs.get("/healthz"))
    assert (auth, db) == (0, 0) and total > 0


def test_a_bearer_request_that_reads_the_database_times_both(obs, todo, log) -> None:
    user, created, _ = todo
    request_id = new_id()
    response = obs.get(f"{TODOS}/{created['id']}", headers=with_id(request_id, user))
    assert response.status_code == 200, response.text
    auth, db, total = timing(response)
    assert auth > 0 and db > 0 and total >= auth + db
    line = the_access_line(log, request_id)
    assert line["db_ms"] == pytest.approx(db, abs=0.002)
    assert line["auth_ms"] == pytest.approx(auth, abs=0.002)
    assert line["duration_ms"] >= total


def test_a_refused_identity_touches_no_database(obs) -> None:
    auth, db, _ = timing(obs.get(TODOS, headers={"Authorization": f"Bearer {BAD_TOKEN}"}))
    assert auth > 0 and db == 0


# === the access line ======================================================================


def test_each_request_is_logged_once_with_every_field(obs, todo, log) -> None:
    user, created, _ = todo
    path = f"{TODOS}/{created['id']}"
    requests = {  # request id -> (method, path, headers, route, status, user_id)
        new_id(): ("GET", path, user, TODO_ROUTE, 200, id_of(user)),
        new_id(): ("PATCH", path, user, TODO_ROUTE, 200, id_of(user)),
        new_id(): ("GET", TODOS, user, TODOS, 200, id_of(user)),
        new_id(): ("GET", TODOS, {}, TODOS, 401, None),
        new_id(): ("GET", f"/no/such/{uuid.uuid4().hex}", user, "unmatched", 404, None),
        new_id(): ("GET", "/healthz", user, "/healthz", 200, None),
    }
    for request_id, (method, url, headers, _, status, _) in requests.items():
        body = {"title": "y"} if method == "PATCH" else None
        response = obs.request(method, url, json=body, headers=with_id(request_id, headers))
        assert response.status_code == status, response.text

    for request_id, (method, _, _, route, status, user_id) in requests.items():
        line = the_access_line(log, request_id)
        assert line.keys() == ACCESS_KEYS
        assert (line["level"], line["message"]) == ("INFO", f"{method} {route} {status}")
        assert (line["method"], line["route"], line["status"]) == (method, route, status)
        assert (line["user_id"], line["trace_id"]) == (user_id, None)
        for name in ("duration_ms", "auth_ms", "db_ms"):
            assert type(line[name]) in (int, float) and line[name] >= 0, line
        assert (line["db_ms"] > 0) == (route in (TODOS, TODO_ROUTE) and status == 200), line
    assert len([line for line in lines(log) if line["logger"] == "todo.access"]) == len(requests)


def test_lines_logged_while_serving_carry_the_request_id(obs, log) -> None:
    request_id = new_id()
    response = obs.post("/boom", content=b"{}", headers=with_id(request_id))
    assert_problem(response, 500, "INTERNAL_ERROR")
    assert response.headers["x-request-id"] == request_id
    error = [line for line in lines(log) if line["message"].startswith("unexpected RuntimeError")]
    assert [(line["level"], line["request_id"]) for line in error] == [("ERROR", request_id)]
    assert the_access_line(log, request_id)["status"] == 500


def test_lines_outside_a_request_have_no_request_id_and_no_password(database_url) -> None:
    app = create_app(app_settings(with_url(database_url, password=PASSWORD)))
    with captured() as log:
        with TestClient(app):  # the lifespan logs the database it uses and the keys it got
            pass
        logging.getLogger("todo.test").warning("outside any request")
    startup = lines(log)
    assert any(line["message"].startswith("using the database at") for line in startup), startup
    assert all(line["request_id"] is None for line in startup), startup
    assert_no_secrets(log.getvalue())


def test_the_text_format_shows_the_request_id_and_the_fields(obs) -> None:
    request_id = new_id()
    with captured("text") as log:
        assert obs.get("/healthz", headers=with_id(request_id)).status_code == 200
        logging.getLogger("todo.test").warning("outside any request")
    access = [line for line in log.getvalue().splitlines() if " todo.access " in line]
    assert len(access) == 1, log.getvalue()
    assert f" INFO todo.access [{request_id}] GET /healthz 200 method=GET " in access[0]
    for field in ("route=/healthz", "status=200", "auth_ms=0.0", "db_ms=0.0", "duration_ms="):
        assert f" {field}" in access[0], access[0]
    assert " WARNING todo.test [-] outside any request" in log.getvalue()


def test_no_token_body_key_or_password_is_ever_logged(obs, log) -> None:
    user = new_user()
    expired = ISSUER.token(str(uuid.uuid4()), ttl_s=-3600)
    secret_body = {"title": BODY_SECRET, "description": BODY_SECRET}
    keyed = {**user, "Idempotency-Key": KEY_SECRET}
    created = obs.post(TODOS, json=secret_body, headers=keyed)
    assert created.status_code == 201, created.text
    assert obs.post(TODOS, json=secret_body, headers=keyed).headers["idempotent-replayed"] == "true"
    path = f"{TODOS}/{created.json()['id']}"
    answers = [
        obs.patch(path, json={"description": f"again {BODY_SECRET}"}, headers=keyed),  # key reused
        obs.patch(path, json={"description": f"then {BODY_SECRET}"}, headers=user),
        obs.post(TODOS, json={"title": BODY_SECRET * 100}, headers=user),  # 422: too long
        obs.post(TODOS, content=f'{{"title": "{BODY_SECRET}"', headers=user | JSON),  # malformed
        obs.get(TODOS, headers={"Authorization": f"Bearer {BAD_TOKEN}"}),
        obs.get(TODOS, headers={"Authorization": f"Bearer {expired}"}),
        obs.post("/boom", content=BODY_SECRET.encode()),
        obs.post("/boom/db", content=BODY_SECRET.encode()),
    ]
    assert [answer.status_code for answer in answers] == [422, 200, 422, 400, 401, 401, 500, 500]
    text = log.getvalue()
    assert "unexpected RuntimeError" in text and "unexpected UniqueViolation" in text
    assert text.count('"logger": "todo.access"') == len(answers) + 2
    assert_no_secrets(text, token_of(user), expired)


# === metrics ==============================================================================


def test_a_request_is_counted_under_its_route_template_never_its_path(obs, todo) -> None:
    user, created, _ = todo
    before = scrape(obs)
    assert obs.get(f"{TODOS}/{created['id']}", headers=user).status_code == 200
    after = scrape(obs)
    requests = "todo_http_requests_total"
    assert delta(before, after, requests, method="GET", route=TODO_ROUTE, status="200") == 1
    latency = "todo_http_request_duration_seconds_count"
    assert delta(before, after, latency, method="GET", route=TODO_ROUTE) == 1
    labels = label_values(after)
    assert not any(created["id"] in label or id_of(user) in label for label in labels)


def test_an_unknown_path_is_counted_as_unmatched(obs) -> None:
    path = f"/no/such/{uuid.uuid4().hex}"
    before = scrape(obs)
    assert obs.get(path).status_code == 404
    after = scrape(obs)
    requests = "todo_http_requests_total"
    assert delta(before, after, requests, method="GET", route="unmatched", status="404") == 1
    assert not any(path.rsplit("/", 1)[1] in label for label in label_values(after))


def test_a_method_of_the_clients_own_is_counted_as_other(obs, log) -> None:
    before = scrape(obs)
    response = obs.request("FOO", TODOS)
    assert_problem(response, 405, "METHOD_NOT_ALLOWED")
    after = scrape(obs)
    requests = "todo_http_requests_total"
    assert delta(before, after, requests, method="_OTHER", route=TODOS, status="405") == 1
    assert "FOO" not in label_values(after)
    assert the_access_line(log, response.headers["x-request-id"])["method"] == "_OTHER"


def test_a_client_that_leaves_while_sending_its_body_is_logged_as_499_not_500(obs, log) -> None:
    """Nobody is left to answer: no 500, no error logged, and the line says 499 (nginx's
    "client closed request")."""
    request_id = new_id()
    before = scrape(obs)
    path = f"{TODOS}/{uuid.uuid4()}"
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "DELETE",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json"), (b"x-request-id", request_id.encode())],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    obs.portal.call(obs.app, scope, receive, send)
    assert sent == []
    assert the_access_line(log, request_id)["status"] == 499
    assert [line for line in lines(log) if line["level"] == "ERROR"] == []
    labels = {"method": "DELETE", "route": TODO_ROUTE, "status": "499"}
    assert delta(before, scrape(obs), "todo_http_requests_total", **labels) == 1


def test_no_user_id_appears_in_any_metric(obs, header_client) -> None:
    users = [new_user() for _ in range(2)]
    for user in users:
        create(obs, user)
        obs.get(TODOS, headers=user)
    header_user = str(uuid.uuid4())
    header_client.get(TODOS, headers={"X-User-ID": header_user})
    text = obs.get("/metrics").text
    for user_id in [*map(id_of, users), header_user]:
        assert user_id not in text
        assert user_id.replace("-", "") not in text


@pytest.mark.parametrize(
    ("reason", "headers"),
    [
        ("MISSING_CREDENTIALS", lambda: {}),
        ("INVALID_TOKEN", lambda: {"Authorization": f"Bearer {BAD_TOKEN}"}),
        ("TOKEN_EXPIRED", lambda: ISSUER.headers(str(uuid.uuid4()), ttl_s=-3600)),
    ],
)
def test_a_refused_token_is_counted_by_reason(obs, reason, headers) -> None:
    before = scrape(obs)
    assert_problem(obs.get(TODOS, headers=headers()), 401, reason)
    after = scrape(obs)
    assert delta(before, after, "todo_auth_failures_total", reason=reason) == 1


@pytest.mark.parametrize(
    ("reason", "headers"),
    [("MISSING_USER_CONTEXT", {}), ("INVALID_USER_ID", {"X-User-ID": "not-a-uuid"})],
)
def test_a_refused_user_header_is_counted_by_reason(header_client, reason, headers) -> None:
    before = scrape(header_client)
    assert_problem(header_client.get(TODOS, headers=headers), 400, reason)
    after = scrape(header_client)
    assert delta(before, after, "todo_auth_failures_total", reason=reason) == 1


def test_fetching_the_keys_at_start_is_counted(obs, database_url) -> None:
    before = scrape(obs)
    with app_client(database_url):
        pass
    after = scrape(obs)
    assert delta(before, after, "todo_jwks_fetches_total", outcome="ok") >= 1
    assert delta(before, after, "todo_jwks_fetches_total", outcome="failed") == 0


def test_failing_to_fetch_the_keys_is_counted(obs, database_url) -> None:
    closed = f"http://127.0.0.1:{free_port()}/jwks"
    settings = {"auth_jwks_url": closed, "auth_issuer": ISSUER.url, "auth_jwks_wait_s": 0.3}
    before = scrape(obs)
    with app_client(database_url, **settings) as client:
        response = client.get(TODOS, headers=new_user())
    after = scrape(obs)
    assert_problem(response, 503, "AUTH_UNAVAILABLE")
    timing(response)
    assert delta(before, after, "todo_jwks_fetches_total", outcome="failed") >= 1
    assert delta(before, after, "todo_jwks_fetches_total", outcome="ok") == 0
    assert delta(before, after, "todo_auth_failures_total", reason="AUTH_UNAVAILABLE") == 1


def test_a_replayed_write_is_counted_once(obs) -> None:
    user = {**new_user(), "Idempotency-Key": f"replay-{uuid.uuid4()}"}
    first = create(obs, user)
    before = scrape(obs)
    replay = obs.post(TODOS, json={"title": "Buy milk"}, headers=user)
    after = scrape(obs)
    assert replay.status_code == 201 and replay.headers["idempotent-replayed"] == "true"
    assert replay.json() == first.json()
    assert delta(before, after, "todo_idempotent_replays_total") == 1


def test_a_statement_timeout_is_a_503_counted_as_such(database_url) -> None:
    """A row lock held by another session outlasts DB_STATEMENT_TIMEOUT_MS. The holder gives
    up after 3 s (idle_in_transaction_session_timeout): a request that ignored the timeout
    would then answer 200 instead of hanging."""
    user = new_user()
    options = "-c idle_in_transaction_session_timeout=3s"
    with app_client(database_url, db_statement_timeout_ms=200) as client:
        todo_id = create(client, user).json()["id"]
        before = scrape(client)
        with (
            psycopg.connect(database_url, autocommit=True, options=options) as holder,
            holder.transaction(),
        ):
            holder.execute("SELECT FROM todos WHERE id = %s FOR UPDATE", (todo_id,))
            response = client.patch(f"{TODOS}/{todo_id}", json={"title": "y"}, headers=user)
        after = scrape(client)
    assert_problem(response, 503, "SERVICE_UNAVAILABLE")
    assert delta(before, after, "todo_db_errors_total", kind="statement_timeout") == 1
    assert delta(before, after, "todo_db_errors_total", kind="unavailable") == 0


def test_a_row_refused_by_a_policy_is_counted_as_rls_refusal(obs, sql) -> None:
    """A restrictive policy of our own, on one title only, dropped at once (as
    tests/test_identity.py adds one to refuse a row)."""
    marker = f"refused-{secrets.token_hex(6)}"
    policy = f"observability_refuses_{secrets.token_hex(4)}"
    sql.execute(
        f"CREATE POLICY {policy} ON todos AS RESTRICTIVE FOR INSERT TO todo_app"
        f" WITH CHECK (title <> '{marker}')"
    )
    try:
        before = scrape(obs)
        response = obs.post(TODOS, json={"title": marker}, headers=new_user())
        after = scrape(obs)
    finally:
        sql.execute(f"DROP POLICY {policy} ON todos")
    assert_problem(response, 403, "FORBIDDEN")
    assert delta(before, after, "todo_db_errors_total", kind="rls_refusal") == 1


def test_a_database_error_no_handler_expects_is_counted_as_other(obs) -> None:
    before = scrape(obs)
    assert_problem(obs.post("/boom/db", content=b"x"), 500, "INTERNAL_ERROR")
    assert_problem(obs.post("/boom", content=b"x"), 500, "INTERNAL_ERROR")  # not a database's
    after = scrape(obs)
    assert delta(before, after, "todo_db_errors_total", kind="other") == 1


def test_a_lost_connection_is_counted_as_unavailable(obs) -> None:
    before = scrape(obs)
    assert_problem(obs.get("/boom/connection"), 503, "SERVICE_UNAVAILABLE")
    after = scrape(obs)
    assert delta(before, after, "todo_db_errors_total", kind="unavailable") == 1
    assert delta(before, after, "todo_db_errors_total", kind="other") == 0


def test_the_pool_gauges_follow_the_pool(obs, todo) -> None:
    def sampled() -> bool:
        scraped = scrape(obs)
        size = value(scraped, "todo_db_pool_connections")
        idle = value(scraped, "todo_db_pool_idle_connections")
        return size >= 1 and 0 <= idle <= size

    wait_until(sampled, "the pool gauges to show the open connection", timeout=5)
    assert ("todo_db_pool_waiting_requests", frozenset()) in scrape(obs)


@pytest.mark.parametrize("log_format", ["json", "text"])
def test_a_line_logged_with_an_exception_keeps_its_traceback(log_format) -> None:
    """uvicorn and psycopg_pool log exceptions with exc_info; their tracebacks stay."""
    with captured(log_format) as log:
        try:
            raise ValueError("the traceback's last line")
        except ValueError:
            logging.getLogger("todo.test").exception("a library's error")
    text = log.getvalue()
    if log_format == "json":
        [line] = lines(log)
        text = line["exception"]
    assert "Traceback (most recent call last)" in text
    assert "ValueError: the traceback's last line" in text


def run_python(code: str, metrics_dir: Path) -> str:
    """`code` in a new process in prometheus-client's multiprocess mode, as a worker of
    `serve --workers N` runs; returns what it printed."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    command = [sys.executable, "-c", code]
    return subprocess.run(command, env=env, check=True, capture_output=True, text=True).stdout


def test_with_several_processes_metrics_are_summed_and_a_stopped_ones_gauges_leave(
    tmp_path,
) -> None:
    worker = "from api import metrics; metrics.REPLAYS.inc(); metrics.POOL_SIZE.set(3)"
    run_python(worker, tmp_path)
    run_python(worker, tmp_path)
    # A worker that stops cleanly takes its gauges out of the sums; its counts stay.
    run_python(f"{worker}; metrics.forget_this_worker()", tmp_path)
    text = run_python("from api import metrics; print(metrics.exposition().decode())", tmp_path)
    scraped = parse(text)
    assert scraped[("todo_idempotent_replays_total", frozenset())] == 3
    assert scraped[("todo_db_pool_connections", frozenset())] == 6
