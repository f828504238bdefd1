"""What `todo-api serve` itself writes and exposes (SPEC §8), seen from outside the process:
one JSON access line per request on stdout and no uvicorn access line, no secret in the
output (tokens, bodies, Idempotency-Keys, the database password), readable text lines with
LOG_FORMAT=text, and with `--workers 4` a /metrics that sums every worker.
"""

import json
import re
import secrets
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cluster import Server, free_port, serving, stop_process, todo_api, wait_until
from conftest import id_of, new_user, with_url
from issuer import ISSUER
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.engine import make_url
from test_observability import ACCESS_KEYS

TODOS = "/api/v1/todos"
ONE_TODO = "/api/v1/todos/{todo_id}"
# Our servers do not trace, whatever this process's environment says.
NO_TRACING = {"OTEL_EXPORTER_OTLP_ENDPOINT": "", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": ""}
# uvicorn's access line: 127.0.0.1:54321 - "GET /api/v1/todos HTTP/1.1" 200 (its quotes
# escaped as \" when it is the message of one of our JSON lines)
UVICORN_ACCESS = re.compile(r'\\?"[A-Z]+ \S+ HTTP/\d(\.\d)?\\?" \d{3}')
SENT: set[str] = set()  # the X-Request-IDs of every request these tests sent


def planted() -> str:
    return f"planted-{secrets.token_hex(8)}"


@pytest.fixture(scope="module")
def url_and_password(database_url: str) -> tuple[str, str]:
    """The run's database with a password in its URL: trust auth ignores a planted one."""
    password = make_url(database_url).password or planted()
    return with_url(database_url, password=password), password


@pytest.fixture(scope="module")
def server(
    url_and_password: tuple[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    url, _ = url_and_password
    workdir = tmp_path_factory.mktemp("serve")
    with serving(url, workdir, LOG_FORMAT="json", **NO_TRACING) as server:
        yield server


def send(server: Server, method: str, path: str, **kwargs: Any) -> tuple[str, httpx.Response]:
    """A request with an X-Request-ID of its own, to find its access line by."""
    request_id = f"obs-{uuid.uuid4().hex}"
    SENT.add(request_id)
    headers = {**kwargs.pop("headers", {}), "X-Request-ID": request_id}
    response = httpx.request(method, f"{server.base}{path}", headers=headers, timeout=10, **kwargs)
    assert response.headers["x-request-id"] == request_id
    return request_id, response


def json_lines(output: str) -> list[dict[str, Any]]:
    """Every line that is a JSON object (json.loads fails the test if one does not parse)."""
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]


def access_lines(server: Server) -> list[dict[str, Any]]:
    return [line for line in json_lines(server.output()) if line["logger"] == "todo.access"]


def wait_for_access_lines(server: Server, request_ids: list[str]) -> dict[str, dict[str, Any]]:
    """The access line of each request (written just after its answer), exactly one each."""
    wanted = set(request_ids)
    wait_until(
        lambda: wanted <= {line["request_id"] for line in access_lines(server)},
        "the access lines of the requests",
    )
    lines = [line for line in access_lines(server) if line["request_id"] in wanted]
    assert sorted(line["request_id"] for line in lines) == sorted(request_ids)
    return {line["request_id"]: line for line in lines}


def test_each_request_has_exactly_one_json_access_line_with_the_contract_fields(
    server: Server,
) -> None:
    user = new_user()
    uid = id_of(user)
    sent: list[tuple[str, httpx.Response, str, str | None]] = []

    def call(method: str, path: str, route: str, who: str | None, **kwargs: Any) -> Any:
        request_id, response = send(server, method, path, **kwargs)
        sent.append((request_id, response, route, who))
        return response

    call("GET", "/healthz", "/healthz", None)
    todo = call("POST", TODOS, TODOS, uid, json={"title": "logged"}, headers=user).json()
    one = f"{TODOS}/{todo['id']}"
    call("GET", one, ONE_TODO, uid, headers=user)
    call("GET", TODOS, TODOS, uid, headers=user)
    call("PATCH", one, ONE_TODO, uid, json={"is_completed": True}, headers=user)
    call("DELETE", one, ONE_TODO, uid, headers=user)
    call("GET", one, ONE_TODO, uid, headers=user)  # 404: deleted
    call("GET", TODOS, TODOS, None)  # 401: no token
    call("GET", f"/no/such/{uuid.uuid4()}", "unmatched", None)
    statuses = [response.status_code for _, response, _, _ in sent]
    assert statuses == [200, 201, 200, 200, 200, 204, 404, 401, 404]

    lines = wait_for_access_lines(server, [request_id for request_id, *_ in sent])

    for request_id, response, route, who in sent:
        line = lines[request_id]
        method, status = response.request.method, response.status_code
        assert line.keys() == ACCESS_KEYS, line
        assert (line["level"], line["logger"]) == ("INFO", "todo.access")
        assert line["message"] == f"{method} {route} {status}"
        assert (line["method"], line["route"], line["status"]) == (method, route, status)
        assert (line["user_id"], line["trace_id"]) == (who, None)
        assert line["duration_ms"] >= max(line["auth_ms"], line["db_ms"]) >= 0
        assert (line["auth_ms"] > 0) == (route != "/healthz" and route != "unmatched")
    assert lines[sent[1][0]]["db_ms"] > 0  # the create's transaction
    assert lines[sent[0][0]]["db_ms"] == lines[sent[7][0]]["db_ms"] == 0  # none
    # Any other access line is one of the readiness checks the fixture made.
    unsent = [line for line in access_lines(server) if line["request_id"] not in SENT]
    assert {line["route"] for line in unsent} <= {"/readyz"}


def test_the_output_has_no_uvicorn_access_line_and_every_json_line_parses(
    server: Server,
) -> None:
    user = new_user()
    ids = [
        send(server, "GET", "/healthz")[0],
        send(server, "POST", TODOS, json={"title": "x"}, headers=user)[0],
        send(server, "GET", f"{TODOS}?limit=1", headers=user)[0],
        send(server, "GET", "/nowhere")[0],
    ]
    wait_for_access_lines(server, ids)

    output = server.output()
    assert UVICORN_ACCESS.search(output) is None, output
    lines = json_lines(output)  # fails if one does not parse
    assert all(line.keys() >= {"time", "level", "logger", "message"} for line in lines)
    assert [line for line in lines if line["logger"] == "uvicorn.access"] == []
    # uvicorn's own lines are ours too: JSON.
    assert any(line["message"].startswith("Uvicorn running on") for line in lines), output


def test_no_secret_reaches_the_output_even_when_requests_fail(
    server: Server, url_and_password: tuple[str, str]
) -> None:
    _, password = url_and_password
    title, description, key, other_key, path_secret = (planted() for _ in range(5))
    user = new_user()
    valid = user["Authorization"].removeprefix("Bearer ")
    forged = jwt.encode(
        ISSUER.claims(str(uuid.uuid4())), secrets.token_bytes(32), algorithm="HS256"
    )
    expired = ISSUER.token(str(uuid.uuid4()), ttl_s=-3600)
    garbage = planted()
    body = {"title": title, "description": description}
    keyed = user | {"Idempotency-Key": key}
    other_keyed = user | {"Idempotency-Key": other_key}

    answers = [
        send(server, "POST", TODOS, json=body, headers=keyed),
        send(server, "POST", TODOS, json=body, headers=keyed),  # replayed
        send(server, "PATCH", f"{TODOS}/{uuid.uuid4()}", json=body, headers=keyed),  # reused
        send(server, "PATCH", f"{TODOS}/{uuid.uuid4()}", json=body, headers=other_keyed),
        send(server, "POST", TODOS, json={**body, "is_completed": description}, headers=user),
        send(server, "GET", f"{TODOS}?cursor={path_secret}", headers=user),
        *(
            send(server, "GET", TODOS, headers={"Authorization": f"Bearer {token}"})
            for token in (forged, expired, garbage)
        ),
        send(server, "GET", f"/nowhere/{path_secret}?token={path_secret}"),
    ]
    statuses = [response.status_code for _, response in answers]
    assert statuses == [201, 201, 422, 404, 422, 422, 401, 401, 401, 404]
    assert answers[1][1].headers["idempotent-replayed"] == "true"
    wait_for_access_lines(server, [request_id for request_id, _ in answers])

    output = server.output()
    secrets_ = {
        "title": title,
        "description": description,
        "Idempotency-Key": key,
        "another Idempotency-Key": other_key,
        "a path and query string": path_secret,
        "the valid token": valid,
        "a forged token": forged,
        "an expired token": expired,
        "a garbage token": garbage,
        "the database password": password,
    }
    assert [name for name, value in secrets_.items() if value in output] == []


def test_a_failed_start_does_not_print_the_database_password(database_url: str) -> None:
    password = planted()
    unreachable = with_url(database_url, port=str(free_port()), password=password)

    result = todo_api(
        "serve",
        database=unreachable,
        DB_RECONNECT_TIMEOUT_S="1",
        DB_CONNECT_TIMEOUT_S="1",
        **ISSUER.env(),
    )

    assert result.returncode != 0
    assert "database reachable" in result.stderr, result.stderr
    assert password not in result.stdout + result.stderr


def test_log_format_text_writes_readable_lines(database_url: str, tmp_path: Path) -> None:
    with serving(database_url, tmp_path, LOG_FORMAT="text", **NO_TRACING) as server:
        request_id, response = send(server, "GET", "/healthz")
        assert response.status_code == 200
        wait_until(lambda: f"[{request_id}]" in server.output(), "the access line")

    output = server.output()
    [line] = [line for line in output.splitlines() if f"[{request_id}]" in line]
    assert re.fullmatch(
        rf"\d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d,\d{{3}} INFO todo\.access \[{request_id}\]"
        r" GET /healthz 200 method=GET route=/healthz status=200 duration_ms=\S+ auth_ms=\S+"
        r" db_ms=\S+ user_id=None trace_id=None",
        line,
    ), line
    assert [line for line in output.splitlines() if line.startswith("{")] == []
    assert re.search(r" INFO uvicorn\.error \[-\] Uvicorn running on ", output), output


# --workers 4: prometheus_client's multiprocess mode.

WORKERS = 4
HEALTHZ_GETS = 40
SCRAPES = 8
MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"


def children(pid: int) -> list[int]:
    """The live processes whose parent is `pid` (from /proc: Linux)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # it exited meanwhile
            continue
        if fields[0] != "Z" and int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def workers_of(pid: int) -> list[int]:
    """uvicorn's worker processes (multiprocessing's spawn), not its resource tracker."""
    return [child for child in children(pid) if b"spawn_main" in command_of(child)]


def command_of(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def environment_of(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


def scrape(server: Server) -> str:
    response = httpx.get(f"{server.base}/metrics", timeout=10)  # a new connection each time
    assert response.status_code == 200
    return response.text


def samples(text: str, name: str) -> list[Any]:
    return [
        sample
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    ]


def healthz_requests(text: str) -> float:
    return sum(
        sample.value
        for sample in samples(text, "todo_http_requests_total")
        if sample.labels["route"] == "/healthz"
    )


def pool_connections(text: str) -> float:
    """One series, summed over the live workers (livesum: no pid label)."""
    [sample] = samples(text, "todo_db_pool_connections")
    assert sample.labels == {}
    return sample.value


def test_four_workers_metrics_are_the_sum_of_every_worker(
    database_url: str, tmp_path: Path
) -> None:
    server = Server(database_url, tmp_path, "--workers", str(WORKERS), **NO_TRACING)
    started: list[int] = []  # every process it started
    metrics_dir = None
    try:
        wait_until(server.ready, "the server to be ready")
        wait_until(lambda: len(workers_of(server.process.pid)) == WORKERS, "the workers")
        started = children(server.process.pid)
        metrics_dir = Path(environment_of(workers_of(server.process.pid)[0])[MULTIPROC_DIR])
        assert metrics_dir.is_dir()
        # One connection per worker (DB_POOL_MIN_SIZE 1), summed over the live workers.
        wait_until(
            lambda: pool_connections(scrape(server)) == WORKERS, "every worker's pool connection"
        )
        user = new_user()
        created = httpx.post(f"{server.base}{TODOS}", json={"title": "m"}, headers=user)
        assert created.status_code == 201, created.text
        todo_id = created.json()["id"]
        assert httpx.get(f"{server.base}{TODOS}/{todo_id}", headers=user).status_code == 200
        for _ in range(HEALTHZ_GETS):
            assert httpx.get(f"{server.base}/healthz").status_code == 200
        # Each worker counts just after its answer: wait for the last count to land.
        wait_until(lambda: healthz_requests(scrape(server)) == HEALTHZ_GETS, "the /healthz count")

        texts = [scrape(server) for _ in range(SCRAPES)]

        assert [healthz_requests(text) for text in texts] == [HEALTHZ_GETS] * SCRAPES
        assert [pool_connections(text) for text in texts] == [WORKERS] * SCRAPES
        for text in texts:
            assert id_of(user) not in text and todo_id not in text
            routes = {
                sample.labels["route"] for sample in samples(text, "todo_http_requests_total")
            }
            assert routes <= {"/healthz", "/readyz", "/metrics", TODOS, ONE_TODO}
    finally:
        started += children(server.process.pid)  # a worker uvicorn replaced, say
        stop_process(server.process, timeout=30)  # SIGTERM: uvicorn stops its workers
        server.stop()
    assert server.process.returncode == 0, server.output()
    # The workers and multiprocessing's resource tracker exit with their parent.
    wait_until(lambda: not any(alive(pid) for pid in started), "every child process to exit")
    assert metrics_dir is not None and not metrics_dir.exists()
