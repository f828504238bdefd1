"""The todo operations. Each is one transaction; each statement also filters by the caller's
user_id, so isolation holds in this code as well as in the policies."""

import base64
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from psycopg import sql

from db.models import TodoCreate, TodoList, TodoPublic, TodoUpdate
from db.transaction import Transaction

COLUMNS = "id, user_id, title, description, is_completed, created_at, updated_at"

# A user's row is created by their first write, in the same transaction.
ENSURE_USER = (
    "INSERT INTO users (id, issuer, subject) VALUES (%s, %s, %s) ON CONFLICT (id) DO NOTHING"
)


Position = tuple[datetime, UUID]  # (created_at, id) of the last todo on a page


@dataclass(frozen=True)
class Page:
    limit: int
    completed: bool | None = None
    after: Position | None = None


def encode_cursor(todo: TodoPublic) -> str:
    raw = f"{todo.created_at.isoformat()}|{todo.id}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> Position:
    """The (created_at, id) position a cursor stands for; ValueError when it is not one of ours."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created_at, todo_id = raw.split("|")
        position = datetime.fromisoformat(created_at), UUID(todo_id)
    except (ValueError, UnicodeDecodeError) as error:
        raise ValueError("is not a cursor returned by this API") from error
    if position[0].tzinfo is None:
        raise ValueError("is not a cursor returned by this API")
    return position


async def create(tx: Transaction, todo: TodoCreate) -> TodoPublic:
    insert = (
        f"INSERT INTO todos (user_id, title, description, is_completed)"
        f" VALUES (%s, %s, %s, %s) RETURNING {COLUMNS}"
    )
    params = (tx.user_id, todo.title, todo.description, todo.is_completed)
    user = (tx.user_id, tx.caller.issuer, tx.caller.subject)
    [row] = await tx.fetch((ENSURE_USER, user), (insert, params))
    return TodoPublic.model_validate(row)


async def get(tx: Transaction, todo_id: UUID) -> TodoPublic | None:
    rows = await tx.fetch(
        (f"SELECT {COLUMNS} FROM todos WHERE id = %s AND user_id = %s", (todo_id, tx.user_id))
    )
    return TodoPublic.model_validate(rows[0]) if rows else None


async def list_(tx: Transaction, page: Page) -> TodoList:
    where = ["user_id = %s"]
    params: list[object] = [tx.user_id]
    if page.completed is not None:
        where.append("is_completed = %s")
        params.append(page.completed)
    if page.after is not None:
        where.append("(created_at, id) < (%s, %s)")
        params.extend(page.after)
    query = (
        f"SELECT {COLUMNS} FROM todos WHERE {' AND '.join(where)}"
        " ORDER BY created_at DESC, id DESC LIMIT %s"
    )
    params.append(page.limit + 1)  # one more than asked tells whether a next page exists

    items = [TodoPublic.model_validate(row) for row in await tx.fetch((query, params))]
    next_cursor = None
    if len(items) > page.limit:
        items = items[: page.limit]
        next_cursor = encode_cursor(items[-1])
    return TodoList(items=items, count=len(items), next_cursor=next_cursor)


async def update(tx: Transaction, todo_id: UUID, changes: TodoUpdate) -> TodoPublic | None:
    fields = changes.model_dump(exclude_unset=True)
    if not fields:  # `{}` changes nothing, not even updated_at
        return await get(tx, todo_id)
    assignments = sql.SQL(", ").join(
        sql.SQL("{} = %s").format(sql.Identifier(name)) for name in fields
    )
    query = sql.SQL("UPDATE todos SET {} WHERE id = %s AND user_id = %s RETURNING {}").format(
        assignments, sql.SQL(COLUMNS)
    )
    rows = await tx.fetch((query, (*fields.values(), todo_id, tx.user_id)))
    return TodoPublic.model_validate(rows[0]) if rows else None


async def delete(tx: Transaction, todo_id: UUID) -> bool:
    rows = await tx.fetch(
        ("DELETE FROM todos WHERE id = %s AND user_id = %s RETURNING id", (todo_id, tx.user_id))
    )
    return bool(rows)
