"""Per request: its id, the Server-Timing header, the access log line and the request metrics."""

import logging
import re
import time
import uuid
from dataclasses import dataclass, field

from opentelemetry import propagate, trace
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api import errors, logs, metrics
from db.transaction import Transaction

access = logging.getLogger("todo.access")

REQUEST_ID = re.compile(rb"[A-Za-z0-9._:-]{1,128}")
# Labels and span names take these methods as they are and any other, which a client may
# make up, as _OTHER (OpenTelemetry's convention).
METHODS = frozenset(errors.HTTP_METHODS)
UNMATCHED = "unmatched"  # the route of a path that no route matches: never the path itself
NO_ANSWER = 499  # the status logged and counted when no answer was sent, as nginx does

# For the OpenAPI document: the request header every operation takes, and the response
# headers every answer carries. Not a pattern: a request id we do not keep is replaced.
REQUEST_ID_PARAMETER = {
    "name": "X-Request-ID",
    "in": "header",
    "required": False,
    "description": "Your id for this request: kept when it is 1 to 128 characters of"
    " `A-Z a-z 0-9 . _ : -`, else replaced by a new UUID.",
    "schema": {"type": "string"},
}
RESPONSE_HEADERS = {
    "X-Request-ID": {
        "description": "The request's id, as every log line about it carries it.",
        "schema": {"type": "string"},
    },
    "Server-Timing": {
        "description": "`auth;dur=<ms>, db;dur=<ms>, total;dur=<ms>`: time checking the"
        " caller, in the database, and in all until this answer started.",
        "schema": {"type": "string"},
    },
}


@dataclass
class Exchange:
    """One request, as the middleware and the dependencies that serve it learn about it."""

    request_id: str
    started: float = field(default_factory=time.perf_counter)
    status: int = 0  # 0 until the answer starts
    user_id: uuid.UUID | None = None
    auth_s: float = 0.0
    transaction: Transaction | None = None

    @property
    def db_s(self) -> float:
        return self.transaction.elapsed_s if self.transaction else 0.0

    def server_timing(self) -> bytes:
        total_ms = (time.perf_counter() - self.started) * 1000
        timings = f"auth;dur={self.auth_s * 1000:.3f}, db;dur={self.db_s * 1000:.3f}"
        return f"{timings}, total;dur={total_ms:.3f}".encode()


def exchange_of(scope: Scope) -> Exchange:
    exchange: Exchange = scope["state"]["exchange"]
    return exchange


def _request_id(scope: Scope) -> str:
    """The client's X-Request-ID when it is one we accept, else a new one."""
    sent: bytes | None = dict(scope["headers"]).get(b"x-request-id")
    if sent is not None and REQUEST_ID.fullmatch(sent):
        return sent.decode()
    return str(uuid.uuid4())


class Observe:
    """Pure ASGI, outside every other middleware of ours, so that every answer, errors
    included, carries X-Request-ID and Server-Timing, and is logged, counted and (with a
    tracer) traced once."""

    def __init__(self, app: ASGIApp, tracer: trace.Tracer | None):
        self.app = app
        self.tracer = tracer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if self.tracer is None:
            return await self._observe(scope, receive, send)
        headers = {key.decode("latin-1"): val.decode("latin-1") for key, val in scope["headers"]}
        with self.tracer.start_as_current_span(
            _known(scope["method"]),
            context=propagate.extract(headers),  # the caller's traceparent, if any
            kind=trace.SpanKind.SERVER,
        ):
            await self._observe(scope, receive, send)

    async def _observe(self, scope: Scope, receive: Receive, send: Send) -> None:
        exchange = Exchange(_request_id(scope))
        scope.setdefault("state", {})["exchange"] = exchange
        request_id = logs.REQUEST_ID.set(exchange.request_id)

        async def send_observed(message: Message) -> None:
            if message["type"] == "http.response.start":
                exchange.status = message["status"]
                headers = [
                    *message.get("headers", ()),
                    (b"x-request-id", exchange.request_id.encode()),
                    (b"server-timing", exchange.server_timing()),
                ]
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_observed)
        except ClientDisconnect:
            pass  # the client left while its body was read: there is no one to answer
        except Exception as error:  # what no exception handler answered
            answer = errors.unexpected(error)
            if not exchange.status:
                await answer(scope, receive, send_observed)
        finally:  # also when cancelled: uvicorn cancels what outlasts SHUTDOWN_TIMEOUT_S
            _record(exchange, scope)
            logs.REQUEST_ID.reset(request_id)


def _known(method: str) -> str:
    return method if method in METHODS else "_OTHER"


def _record(exchange: Exchange, scope: Scope) -> None:
    duration_s = time.perf_counter() - exchange.started
    method = _known(scope["method"])
    route = getattr(scope.get("route"), "path", UNMATCHED)
    status = exchange.status or NO_ANSWER
    metrics.REQUESTS.labels(method, route, str(status)).inc()
    metrics.LATENCY.labels(method, route).observe(duration_s)
    span = trace.get_current_span()
    if span.is_recording():
        _describe(span, method, route, status)
    context = span.get_span_context()
    access.info(
        "%s %s %s",
        method,
        route,
        status,
        extra={
            "fields": {
                "method": method,
                "route": route,
                "status": status,
                "duration_ms": round(duration_s * 1000, 3),
                "auth_ms": round(exchange.auth_s * 1000, 3),
                "db_ms": round(exchange.db_s * 1000, 3),
                "user_id": exchange.user_id and str(exchange.user_id),
                "trace_id": format(context.trace_id, "032x") if context.is_valid else None,
            }
        },
    )


def _describe(span: trace.Span, method: str, route: str, status: int) -> None:
    """The server span, in OpenTelemetry's HTTP conventions: no user id, no query string."""
    span.update_name(method if route == UNMATCHED else f"{method} {route}")
    span.set_attribute("http.request.method", method)
    span.set_attribute("http.response.status_code", status)
    if route != UNMATCHED:
        span.set_attribute("http.route", route)
    if status >= 500:
        span.set_status(trace.StatusCode.ERROR)
