"""The HTTP endpoints. Each handler parses, makes one call, and returns."""

from uuid import UUID

import psycopg
from fastapi import APIRouter, Request, Response

from api.deps import PageDep, TxDep
from api.errors import RETRY_AFTER_S, ApiError, not_found, responses
from db import safety, todos
from db.models import TodoCreate, TodoList, TodoPublic, TodoUpdate

PREFIX = "/api/v1/todos"
COMMON = (400, 401, 403, 422, 500, 503)

router = APIRouter(prefix=PREFIX, tags=["todos"])


@router.post("", status_code=201, responses=responses(*COMMON, 413, 415))
async def create_todo(body: TodoCreate, tx: TxDep, response: Response) -> TodoPublic:
    todo = await todos.create(tx, body)
    response.headers["Location"] = f"{PREFIX}/{todo.id}"
    return todo


@router.get("", responses=responses(*COMMON))
async def list_todos(tx: TxDep, page: PageDep) -> TodoList:
    """The caller's todos, newest first (`created_at desc, id desc`)."""
    return await todos.list_(tx, page)


@router.get("/{todo_id}", responses=responses(*COMMON, 404))
async def get_todo(todo_id: UUID, tx: TxDep) -> TodoPublic:
    todo = await todos.get(tx, todo_id)
    if todo is None:
        raise not_found()
    return todo


@router.patch("/{todo_id}", responses=responses(*COMMON, 404, 413, 415))
async def update_todo(todo_id: UUID, body: TodoUpdate, tx: TxDep) -> TodoPublic:
    """Changes only the fields sent; `{}` changes nothing."""
    todo = await todos.update(tx, todo_id, body)
    if todo is None:
        raise not_found()
    return todo


@router.delete("/{todo_id}", status_code=204, responses=responses(*COMMON, 404))
async def delete_todo(todo_id: UUID, tx: TxDep) -> Response:
    if not await todos.delete(tx, todo_id):
        raise not_found()
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
