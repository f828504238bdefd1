"""Traces (SPEC §8): a SERVER span per request, continuing the caller's `traceparent`, and one
CLIENT span `db transaction` per database transaction, named by its statements and never
carrying a parameter; no tracer, no span; OTLP export only when the environment asks for it.

In process, the app gets a TracerProvider with an in-memory exporter. End to end, `todo-api
serve` exports over OTLP/HTTP to tests/otlp_sink.py.
"""

import io
import json
import secrets
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import otlp_sink
import pytest
from cluster import Server, free_port, serving, stop_process, wait_until
from conftest import app_settings, id_of, new_user, with_url
from fastapi.testclient import TestClient
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from test_observability import captured

from api import tracing
from api.main import create_app

TODOS = "/api/v1/todos"
ONE_TODO = "/api/v1/todos/{todo_id}"
ENDPOINTS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
OTLP_DEFAULT_PORT = 4318  # where an OTLP/HTTP exporter sends when no endpoint is configured


@contextmanager
def traced_client(
    url: str, **settings: object
) -> Iterator[tuple[TestClient, InMemorySpanExporter]]:
    """The app on `url` with a tracer that keeps its finished spans in memory."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    app = create_app(app_settings(url, **settings), tracer_provider=provider)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client, exporter


@pytest.fixture(scope="module")
def traced(database_url: str) -> Iterator[tuple[TestClient, InMemorySpanExporter]]:
    with traced_client(database_url) as pair:
        yield pair


@pytest.fixture
def client(traced: tuple[TestClient, InMemorySpanExporter]) -> TestClient:
    return traced[0]


@pytest.fixture
def exporter(traced: tuple[TestClient, InMemorySpanExporter]) -> InMemorySpanExporter:
    traced[1].clear()
    return traced[1]


def access_lines(buffer: io.StringIO) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in buffer.getvalue().splitlines() if line]
    return [line for line in lines if line["logger"] == "todo.access"]


def of_kind(exporter: InMemorySpanExporter, kind: SpanKind) -> list[ReadableSpan]:
    return [span for span in exporter.get_finished_spans() if span.kind is kind]


def the_server_span(exporter: InMemorySpanExporter) -> ReadableSpan:
    [span] = of_kind(exporter, SpanKind.SERVER)
    return span


def the_db_span(exporter: InMemorySpanExporter) -> ReadableSpan:
    [span] = of_kind(exporter, SpanKind.CLIENT)
    return span


def traceparent() -> tuple[str, str, str]:
    """A caller's trace id, parent span id, and the header that carries them."""
    trace_id, parent_id = secrets.token_hex(16), secrets.token_hex(8)
    return trace_id, parent_id, f"00-{trace_id}-{parent_id}-01"


def new_todo(client: TestClient, user: dict[str, str], **fields: object) -> dict[str, Any]:
    response = client.post(TODOS, json={"title": "traced", **fields}, headers=user)
    assert response.status_code == 201, response.text
    return response.json()


def test_a_get_is_one_server_span_with_one_db_transaction_child(client, exporter) -> None:
    user = new_user()
    todo = new_todo(client, user)
    exporter.clear()

    assert client.get(f"{TODOS}/{todo['id']}", headers=user).status_code == 200

    server, db = the_server_span(exporter), the_db_span(exporter)
    assert server.name == f"GET {ONE_TODO}"
    assert dict(server.attributes) == {
        "http.request.method": "GET",
        "http.response.status_code": 200,
        "http.route": ONE_TODO,
    }
    assert server.status.status_code is StatusCode.UNSET
    assert db.name == "db transaction"
    assert db.parent is not None and db.parent.span_id == server.context.span_id
    assert db.context.trace_id == server.context.trace_id
    assert dict(db.attributes) == {"db.system.name": "postgresql", "db.query.summary": "get todo"}
    assert db.status.status_code is StatusCode.UNSET


def _create(client: TestClient, user: dict[str, str], todo_id: str) -> httpx.Response:
    return client.post(TODOS, json={"title": "another"}, headers=user)


def _keyed_patch(client: TestClient, user: dict[str, str], todo_id: str) -> httpx.Response:
    key = {"Idempotency-Key": str(uuid.uuid4())}
    return client.patch(f"{TODOS}/{todo_id}", json={"is_completed": True}, headers=user | key)


def _list(client: TestClient, user: dict[str, str], todo_id: str) -> httpx.Response:
    return client.get(TODOS, headers=user)


def _delete(client: TestClient, user: dict[str, str], todo_id: str) -> httpx.Response:
    return client.delete(f"{TODOS}/{todo_id}", headers=user)


@pytest.mark.parametrize(
    ("request_", "name", "summary"),
    [
        (_create, f"POST {TODOS}", "ensure user; create todo"),
        (_keyed_patch, f"PATCH {ONE_TODO}", "forget expired key; update todo"),
        (_list, f"GET {TODOS}", "list todos"),
        (_delete, f"DELETE {ONE_TODO}", "delete todo"),
    ],
)
def test_the_db_span_is_summarized_by_the_statement_names(
    client, exporter, request_: Callable[..., httpx.Response], name: str, summary: str
) -> None:
    user = new_user()
    todo = new_todo(client, user)
    exporter.clear()

    response = request_(client, user, todo["id"])

    assert response.status_code < 300, response.text
    server, db = the_server_span(exporter), the_db_span(exporter)
    assert server.name == name
    assert db.attributes["db.query.summary"] == summary
    assert db.parent is not None and db.parent.span_id == server.context.span_id


def test_an_incoming_traceparent_is_continued(client, exporter) -> None:
    trace_id, parent_id, header = traceparent()

    response = client.get(TODOS, headers={**new_user(), "traceparent": header})

    assert response.status_code == 200
    server, db = the_server_span(exporter), the_db_span(exporter)
    assert format(server.context.trace_id, "032x") == trace_id
    assert server.parent is not None and server.parent.is_remote
    assert format(server.parent.span_id, "016x") == parent_id
    assert format(db.context.trace_id, "032x") == trace_id


def test_without_traceparent_each_request_starts_a_new_trace(client, exporter) -> None:
    user = new_user()
    client.get(TODOS, headers=user)
    client.get(TODOS, headers=user)

    first, second = of_kind(exporter, SpanKind.SERVER)
    assert first.parent is None and second.parent is None
    assert first.context.trace_id != second.context.trace_id


def test_the_access_line_carries_the_server_spans_trace_id(client, exporter) -> None:
    trace_id, _, header = traceparent()
    with captured() as buffer:
        client.get("/healthz")
        client.get(TODOS, headers={**new_user(), "traceparent": header})

    healthz, continued = access_lines(buffer)
    first, second = of_kind(exporter, SpanKind.SERVER)
    assert healthz["route"] == "/healthz" and continued["route"] == TODOS
    assert healthz["trace_id"] == format(first.context.trace_id, "032x")
    assert continued["trace_id"] == format(second.context.trace_id, "032x") == trace_id


def test_no_span_carries_a_parameter_or_a_credential(client, exporter) -> None:
    title, description, key = (f"planted-{secrets.token_hex(8)}" for _ in range(3))
    user = new_user()
    token = user["Authorization"].removeprefix("Bearer ")
    unknown_id = str(uuid.uuid4())

    todo = new_todo(client, user, description=description, title=title)
    keyed = user | {"Idempotency-Key": key}
    assert client.patch(f"{TODOS}/{todo['id']}", json={"title": title}, headers=keyed).is_success
    assert client.get(f"{TODOS}/{todo['id']}", headers=user).status_code == 200
    assert client.get(f"{TODOS}/{unknown_id}", headers=user).status_code == 404
    assert client.get(TODOS, params={"cursor": title}, headers=user).status_code == 422
    assert client.get(f"/nowhere/{title}", params={"q": key}).status_code == 404

    spans = exporter.get_finished_spans()
    assert {span.name for span in spans} >= {"db transaction", f"GET {ONE_TODO}", "GET"}
    everything = "\n".join(span.to_json() for span in spans)
    planted = (title, description, key, token, todo["id"], unknown_id, id_of(user))
    assert [value for value in planted if value in everything] == []


def test_a_503_marks_the_db_span_with_only_the_exception_class(database_url) -> None:
    password = f"planted-{secrets.token_hex(8)}"
    unreachable = with_url(database_url, port=str(free_port()), password=password)
    settings = {"db_pool_timeout_s": 0.3, "db_connect_timeout_s": 1}

    with traced_client(unreachable, **settings) as (client, exporter):
        response = client.get(TODOS, headers=new_user())

    assert response.status_code == 503, response.text
    server, db = the_server_span(exporter), the_db_span(exporter)
    assert db.status.status_code is StatusCode.ERROR
    assert db.status.description == "PoolTimeout"
    assert server.status.status_code is StatusCode.ERROR
    assert server.attributes["http.response.status_code"] == 503
    assert password not in server.to_json() + db.to_json()


def test_a_500_marks_the_server_span_as_an_error(database_url) -> None:
    secret = f"planted-{secrets.token_hex(8)}"
    with traced_client(database_url) as (client, exporter):

        @client.app.get("/boom")
        async def boom() -> None:
            raise RuntimeError(secret)

        assert client.get("/boom").status_code == 500

    server = the_server_span(exporter)
    assert server.name == "GET /boom"
    assert server.attributes["http.response.status_code"] == 500
    assert server.status.status_code is StatusCode.ERROR
    assert secret not in server.to_json()


def test_an_unknown_path_is_a_span_named_by_its_method_only(client, exporter) -> None:
    assert client.get(f"/no/such/{uuid.uuid4()}").status_code == 404

    server = the_server_span(exporter)
    assert server.name == "GET"
    assert dict(server.attributes) == {
        "http.request.method": "GET",
        "http.response.status_code": 404,
    }
    assert server.status.status_code is StatusCode.UNSET
    assert of_kind(exporter, SpanKind.CLIENT) == []


def test_a_made_up_method_is_named_other_in_the_span(client, exporter) -> None:
    """A client may send any method token: it must not become a span name of its own."""
    assert client.request("FOO", TODOS).status_code == 405

    server = the_server_span(exporter)
    assert server.name == f"_OTHER {TODOS}"
    assert server.attributes["http.request.method"] == "_OTHER"
    assert "FOO" not in server.to_json()


def test_without_a_provider_or_an_endpoint_there_is_no_tracer(database_url, monkeypatch) -> None:
    for name in ENDPOINTS:
        monkeypatch.delenv(name, raising=False)
    assert tracing.from_environment() is None

    app = create_app(app_settings(database_url))

    assert app.state.tracer is None
    user = new_user()
    with TestClient(app) as client, captured() as buffer:
        todo = new_todo(client, user)
        assert client.get(f"{TODOS}/{todo['id']}", headers=user).status_code == 200
    assert [line["trace_id"] for line in access_lines(buffer)] == [None, None]


@pytest.mark.parametrize("variable", ENDPOINTS)
def test_an_otlp_endpoint_in_the_environment_makes_a_provider(monkeypatch, variable) -> None:
    for name in ENDPOINTS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(variable, f"http://127.0.0.1:{free_port()}")

    provider = tracing.from_environment()

    assert isinstance(provider, TracerProvider)
    provider.shutdown()


# End to end: `todo-api serve` and a real OTLP/HTTP receiver.


def spans_named(sink: otlp_sink.Sink, name: str) -> list[Span]:
    return [span for span in list(sink.spans) if span.name == name]


def children_of(sink: otlp_sink.Sink, parent: Span) -> list[Span]:
    return [span for span in list(sink.spans) if span.parent_span_id == parent.span_id]


def stop_gracefully(server: Server) -> None:
    """SIGTERM: the app's lifespan ends, which flushes a tracer provider's spans."""
    stop_process(server.process, timeout=30)
    assert server.process.returncode == 0, server.output()


def create_then_get(server: Server, traceparent_header: str) -> None:
    """A create, then a get of the new todo that continues the caller's trace."""
    user = new_user()
    created = httpx.post(f"{server.base}{TODOS}", json={"title": "x"}, headers=user)
    assert created.status_code == 201, created.text
    url = f"{server.base}{TODOS}/{created.json()['id']}"
    assert httpx.get(url, headers={**user, "traceparent": traceparent_header}).status_code == 200


def test_serve_exports_spans_to_the_otlp_endpoint(database_url, tmp_path, monkeypatch) -> None:
    for name in ENDPOINTS:
        monkeypatch.delenv(name, raising=False)
    trace_id, parent_id, header = traceparent()
    with otlp_sink.otlp_sink() as sink:
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": sink.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "100"}
        with serving(database_url, tmp_path, **env) as server:
            create_then_get(server, header)
            wait_until(
                lambda: (
                    spans_named(sink, f"GET {ONE_TODO}")
                    and len(spans_named(sink, "db transaction")) == 2
                ),
                "the spans of both requests to arrive",
            )

    [post] = spans_named(sink, f"POST {TODOS}")
    [get] = spans_named(sink, f"GET {ONE_TODO}")
    assert post.kind == get.kind == Span.SpanKind.SPAN_KIND_SERVER
    assert get.trace_id == bytes.fromhex(trace_id)
    assert get.parent_span_id == bytes.fromhex(parent_id)
    assert post.parent_span_id == b"" and post.trace_id != get.trace_id
    for server_span, summary in ((post, "ensure user; create todo"), (get, "get todo")):
        [db] = children_of(sink, server_span)
        assert db.name == "db transaction"
        assert db.kind == Span.SpanKind.SPAN_KIND_CLIENT
        assert db.trace_id == server_span.trace_id
        attributes = {attribute.key: attribute.value.string_value for attribute in db.attributes}
        assert attributes["db.query.summary"] == summary


def test_a_graceful_stop_exports_the_spans_not_yet_sent(
    database_url, tmp_path, monkeypatch
) -> None:
    for name in ENDPOINTS:
        monkeypatch.delenv(name, raising=False)
    with otlp_sink.otlp_sink() as sink:
        # No export on schedule during the test: only the stop sends them.
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": sink.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "600000"}
        with serving(database_url, tmp_path, **env) as server:
            assert httpx.get(f"{server.base}{TODOS}", headers=new_user()).status_code == 200
            assert sink.spans == []
            stop_gracefully(server)

    [get] = spans_named(sink, f"GET {TODOS}")
    [db] = children_of(sink, get)
    assert db.name == "db transaction"


class _OnTheDefaultPort(ThreadingHTTPServer):
    """The sink, where an exporter with no endpoint configured would send (if that port is
    free here)."""

    def __init__(self, address: tuple[str, int], handler: Any) -> None:
        try:
            super().__init__((address[0], OTLP_DEFAULT_PORT), handler)
        except OSError:
            super().__init__(address, handler)


def test_serve_without_an_endpoint_exports_nothing(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ENDPOINTS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(otlp_sink, "ThreadingHTTPServer", _OnTheDefaultPort)
    with (
        otlp_sink.otlp_sink() as sink,
        serving(database_url, tmp_path, OTEL_BSP_SCHEDULE_DELAY="100") as server,
    ):
        create_then_get(server, traceparent()[2])
        # A provider, had there been one, would send its spans now.
        stop_gracefully(server)

    assert sink.spans == []
    lines = [json.loads(line) for line in server.output().splitlines() if line.startswith("{")]
    access = [line for line in lines if line["logger"] == "todo.access"]
    assert {line["route"] for line in access} >= {TODOS, ONE_TODO}
    assert {line["trace_id"] for line in access} == {None}
