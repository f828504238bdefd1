"""The HTTP endpoints. Each handler parses, makes one call, and returns."""

from typing import Any
from uuid import UUID

import psycopg
from fastapi import APIRouter, Request, Response

from api import metrics
from api.conditions import Cached, IfMatch, IfNoneMatch, etag, versions
from api.deps import KeyDep, PageDep, TxDep
from api.errors import RETRY_AFTER_S, ApiError, responses
from db import safety, todos
from db.models import TodoCreate, TodoList, TodoPublic, TodoUpdate

PREFIX = "/api/v1/todos"
COMMON = (400, 401, 403, 422, 500, 503)

router = APIRouter(prefix=PREFIX, tags=["todos"])


HEADERS = {
    "ETag": "The todo's version. Send it as If-Match to change only this version, or as"
    " If-None-Match to read the todo only when it has changed.",
    "Location": "The new todo's URL.",
    "Idempotent-Replayed": "`true` when this is the recorded answer to an earlier request with"
    " the same Idempotency-Key: nothing was written again.",
}


def described(*headers: str) -> dict[str, Any]:
    return {name: {"description": HEADERS[name], "schema": {"type": "string"}} for name in headers}


def success(status: int, *headers: str) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI headers of a success response."""
    return {status: {"headers": described(*headers)}}


NOT_MODIFIED: dict[int | str, dict[str, Any]] = {
    304: {
        "description": "Not Modified: the todo's ETag is one that If-None-Match named. No body.",
        "headers": described("ETag"),
    }
}


def json_body(body: str, status_code: int = 200, headers: dict[str, str] | None = None) -> Response:
    """JSON the database wrote, sent as it is. The route still declares its response model,
    which /openapi.json describes; tests/test_json_contract.py holds the two to the same bytes."""
    return Response(body, status_code, headers, media_type="application/json")


def send(
    saved: todos.Saved, status_code: int = 200, headers: dict[str, str] | None = None
) -> Response:
    """A todo, with the ETag of its version, and whether this answer is a replay."""
    headers = {**(headers or {}), "ETag": etag(saved.version)}
    if saved.replayed:
        headers["Idempotent-Replayed"] = "true"
        metrics.REPLAYS.inc()
    return json_body(saved.body, status_code, headers)


@router.post(
    "",
    status_code=201,
    response_model=TodoPublic,
    responses=responses(*COMMON, 409, 413, 415)
    | success(201, "Location", "ETag", "Idempotent-Replayed"),
)
async def create_todo(body: TodoCreate, tx: TxDep, key: KeyDep) -> Response:
    saved = await todos.create(tx, body, key)
    return send(saved, 201, {"Location": f"{PREFIX}/{saved.id}"})


@router.get("", response_model=TodoList, responses=responses(*COMMON))
async def list_todos(tx: TxDep, page: PageDep) -> Response:
    """The caller's todos, newest first (`created_at desc, id desc`)."""
    return json_body(await todos.list_(tx, page))


@router.get(
    "/{todo_id}",
    response_model=TodoPublic,
    responses=responses(*COMMON, 404) | success(200, "ETag") | NOT_MODIFIED,
)
async def get_todo(todo_id: UUID, tx: TxDep, if_none_match: IfNoneMatch = None) -> Response:
    saved = await todos.get(tx, todo_id)
    if Cached(if_none_match).has(saved.version):
        return Response(status_code=304, headers={"ETag": etag(saved.version)})
    return send(saved)


@router.patch(
    "/{todo_id}",
    response_model=TodoPublic,
    responses=responses(*COMMON, 404, 409, 412, 413, 415)
    | success(200, "ETag", "Idempotent-Replayed"),
)
async def update_todo(
    todo_id: UUID,
    body: TodoUpdate,
    tx: TxDep,
    key: KeyDep,
    if_match: IfMatch = None,
) -> Response:
    """Changes only the fields sent; `{}` changes nothing."""
    return send(await todos.update(tx, todo_id, body, versions(if_match), key))


@router.delete("/{todo_id}", status_code=204, responses=responses(*COMMON, 404, 412))
async def delete_todo(todo_id: UUID, tx: TxDep, if_match: IfMatch = None) -> Response:
    await todos.delete(tx, todo_id, versions(if_match))
    return Response(status_code=204)


ops = APIRouter(tags=["operations"])


@ops.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up. Touches no database."""
    return {"status": "ok"}


@ops.get("/readyz", responses=responses(503))
async def readyz(request: Request) -> dict[str, str]:
    """The database answers and enforces isolation (the startup self-check passes)."""
    try:
        async with request.app.state.pool.connection() as conn:
            failed = [check.name for check in safety.failures(await safety.run_checks(conn))]
    except psycopg.Error:
        failed = ["database reachable"]
    if failed:
        raise ApiError(
            503,
            "SERVICE_UNAVAILABLE",
            f"The database is not ready to serve: {'; '.join(failed)}.",
            headers={"Retry-After": RETRY_AFTER_S},
        )
    return {"status": "ready"}


@ops.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {metrics.CONTENT_TYPE: {}}, "description": "Prometheus text"}},
)
def prometheus_metrics() -> Response:
    """Prometheus metrics, of every worker process. A plain `def`: FastAPI runs it in a
    thread, so reading the workers' files never holds up the event loop."""
    return Response(metrics.exposition(), media_type=metrics.CONTENT_TYPE)
