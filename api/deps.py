"""Request dependencies: who is calling, and the transaction that acts for them."""

import re
import time
from typing import Annotated

from fastapi import Depends, Header, Query, Request
from opentelemetry import trace
from pydantic import BeforeValidator

from api import metrics
from api.errors import ApiError, FieldError
from api.identity import Identity
from api.observability import exchange_of
from db import todos
from db.idempotency import Key
from db.transaction import Caller, Transaction

MAX_HEADER_BYTES = 16 * 1024
DEFAULT_PAGE, MAX_PAGE = 100, 1000


async def well_formed(request: Request) -> None:
    """Refuse what no handler should read: oversized headers, and a JSON body that is not
    UTF-8, which json.loads would otherwise decode as UTF-16 or UTF-32."""
    if sum(len(name) + len(value) for name, value in request.headers.raw) > MAX_HEADER_BYTES:
        raise ApiError(400, "HEADERS_TOO_LARGE", "The request headers are larger than 16 KiB.")
    if "json" in request.headers.get("content-type", "") and not _utf8_json(await request.body()):
        raise ApiError(400, "MALFORMED_BODY", "The request body must be UTF-8.")


def _utf8_json(body: bytes) -> bool:
    # UTF-16 and UTF-32 JSON always has NUL bytes, and UTF-8 JSON never has one.
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return b"\x00" not in body


async def caller(request: Request) -> Caller:
    """Who is calling, as the configured identity mode (api.identity) establishes it, once the
    request is one a handler may read."""
    await well_formed(request)
    identity: Identity = request.app.state.identity
    exchange = exchange_of(request.scope)
    started = time.perf_counter()
    try:
        caller = await identity.caller(request)
    except ApiError as error:
        metrics.AUTH_FAILURES.labels(error.error_code).inc()
        raise
    finally:
        exchange.auth_s = time.perf_counter() - started
    exchange.user_id = caller.user_id
    return caller


async def transaction(request: Request) -> Transaction:
    """The one dependency every todo endpoint shares (FastAPI resolves it once per request): who
    is calling, and the transaction that acts for them."""
    state = request.app.state
    # A child of a request span that is not sampled is not recorded either: make none.
    tracer = state.tracer if trace.get_current_span().is_recording() else None
    tx = Transaction(
        state.pool,
        await caller(request),
        state.settings.db_statement_timeout_ms,
        tracer,
        read_only=request.method == "GET",  # as PostgREST: a read can never write
    )
    exchange_of(request.scope).transaction = tx
    return tx


TxDep = Annotated[Transaction, Depends(transaction)]


def _decimal_digits(value: object) -> object:
    # int() would also take "1_0", "+10", " 10" and "10.0".
    if isinstance(value, str) and not (value.isascii() and value.isdigit()):
        raise ValueError("must be a whole number written in decimal digits")
    return value


def _true_or_false(value: object) -> object:
    # bool() would also take "yes", "on", "1", "t" and "y".
    if isinstance(value, str) and value not in ("true", "false"):
        raise ValueError("must be true or false")
    return value


async def page(
    # Unused here, but required: a missing or bad caller is reported before a bad cursor.
    _: TxDep,
    completed: Annotated[
        bool | None,
        Query(description="`true`: only completed todos; `false`: only open ones."),
        BeforeValidator(_true_or_false),
    ] = None,
    limit: Annotated[
        int,
        Query(ge=1, le=MAX_PAGE, description=f"Page size, 1 to {MAX_PAGE}."),
        BeforeValidator(_decimal_digits),
    ] = DEFAULT_PAGE,
    cursor: Annotated[
        str | None, Query(description="`next_cursor` from the previous page.", max_length=200)
    ] = None,
) -> todos.Page:
    try:
        after = todos.decode_cursor(cursor) if cursor is not None else None
    except ValueError as error:
        raise ApiError(
            422,
            "VALIDATION_ERROR",
            "Some fields are invalid; see field_errors.",
            [FieldError(field="cursor", message=f"Value error, {error}")],
        ) from None
    return todos.Page(limit=limit, completed=completed, after=after)


PageDep = Annotated[todos.Page, Depends(page)]


# 1 to 255 visible ASCII characters, bare or as a structured-field string (RFC 8941), in
# which spaces are allowed and a backslash escapes `"` or `\`. A value that starts with `"`
# is a structured-field string, so `""` (empty) and `"abc` (unterminated) are refused.
QUOTED_KEY = r'"((?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\[\\"]){1,255})"'
KEY_PATTERN = rf"^(?:[\x21\x23-\x7e][\x21-\x7e]{{0,254}}|{QUOTED_KEY})$"


async def idempotency_key(
    request: Request,
    _: TxDep,  # who is calling is reported first
    value: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            pattern=KEY_PATTERN,
            description="1 to 255 visible ASCII characters, unique per write (a UUID will"
            " do). A retry with the same key and the same request gets the recorded answer,"
            " with `Idempotent-Replayed: true`, and writes nothing again. Keys expire after"
            " 24 hours.",
        ),
    ] = None,
) -> Key | None:
    if value is None:
        return None
    if quoted := re.fullmatch(QUOTED_KEY, value):
        value = re.sub(r"\\(.)", r"\1", quoted[1])
    return Key.of(value, request.method, request.url.path, await request.body())


KeyDep = Annotated[Key | None, Depends(idempotency_key)]
