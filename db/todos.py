"""The todo operations. Each is one transaction; each statement also filters by the caller's
user_id, so isolation holds in this code as well as in the policies. The database writes each
answer's JSON (db.responses), and the API sends it as it is."""

import base64
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from psycopg import sql

from db import responses
from db.idempotency import ANSWER, NOT_REPLAYED, Key, Outcome, write_once
from db.models import TodoCreate, TodoUpdate
from db.transaction import Statement, Transaction

COLUMNS = "id, user_id, title, description, is_completed, created_at, updated_at"

# A user's row is created by their first write, in the same transaction.
ENSURE_USER = (
    "INSERT INTO users (id, issuer, subject) VALUES (%s, %s, %s) ON CONFLICT (id) DO NOTHING"
)


class NotFound(Exception):
    """No todo with this id exists for this user."""


class PreconditionFailed(Exception):
    """The todo exists, but its version is not one that If-Match named."""


@dataclass(frozen=True)
class Saved:
    """A todo's id, version and JSON: as stored now, or as a replayed answer recorded them."""

    id: UUID
    version: int
    body: str
    replayed: bool = False


def _saved(outcome: Outcome) -> Saved:
    if outcome.answer is None:
        raise PreconditionFailed if outcome.found else NotFound
    return Saved(**outcome.answer, replayed=outcome.replayed)


# If-Match: `versions` is None for no condition (or `*`), else the versions it names.
MATCHES = "(%(versions)s::bigint[] IS NULL OR version = ANY(%(versions)s::bigint[]))"
Versions = list[int] | None
# The todo a PATCH or DELETE acts on: the caller's, at a version If-Match names, and only when
# the request's Idempotency-Key has no recorded answer.
TARGET = f"id = %(id)s AND user_id = %(user)s AND {MATCHES} AND {NOT_REPLAYED}"

Position = tuple[datetime, UUID]  # (created_at, id) of the last todo on a page


@dataclass(frozen=True)
class Page:
    limit: int
    completed: bool | None = None
    after: Position | None = None


def decode_cursor(cursor: str) -> Position:
    """The (created_at, id) position a cursor (db.responses.cursor) stands for; ValueError when
    it is not one of ours."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created_at, todo_id = raw.split("|")
        position = datetime.fromisoformat(created_at), UUID(todo_id)
    except (ValueError, UnicodeDecodeError) as error:
        raise ValueError("is not a cursor returned by this API") from error
    if position[0].tzinfo is None:
        raise ValueError("is not a cursor returned by this API")
    return position


async def create(tx: Transaction, todo: TodoCreate, key: Key | None = None) -> Saved:
    insert = sql.SQL(
        f"INSERT INTO todos (user_id, title, description, is_completed)"
        f" SELECT %(user)s, %(title)s, %(description)s, %(is_completed)s WHERE {NOT_REPLAYED}"
        f" RETURNING {ANSWER}"
    )
    user = (tx.user_id, tx.caller.issuer, tx.caller.subject)
    params = {**todo.model_dump(), "id": None}
    ensure_user = Statement("ensure user", ENSURE_USER, user)
    return _saved(await write_once(tx, "create todo", insert, params, key, ensure_user))


async def get(tx: Transaction, todo_id: UUID) -> Saved:
    query = (
        f"SELECT id, version, {responses.todo('todos')}::text AS body FROM todos"
        " WHERE id = %s AND user_id = %s"
    )
    rows = await tx.fetch(Statement("get todo", query, (todo_id, tx.user_id)))
    if not rows:
        raise NotFound
    return Saved(**rows[0])


def list_statement(user_id: UUID, page: Page) -> Statement:
    """The statement that writes a page of `user_id`'s todos as the JSON of TodoList."""
    where = ["user_id = %(user)s"]
    params: dict[str, object] = {"user": user_id, "limit": page.limit}
    if page.completed is not None:
        where.append("is_completed = %(completed)s")
        params["completed"] = page.completed
    if page.after is not None:
        where.append("(created_at, id) < (%(created_at)s, %(id)s)")
        params["created_at"], params["id"] = page.after
    # One more than asked tells whether a next page exists.
    query = f"""
WITH found AS (
    SELECT {COLUMNS} FROM todos WHERE {" AND ".join(where)}
    ORDER BY created_at DESC, id DESC LIMIT %(limit)s + 1
), page AS (
    SELECT * FROM found ORDER BY created_at DESC, id DESC LIMIT %(limit)s
), last AS (
    SELECT * FROM page ORDER BY created_at, id LIMIT 1
)
SELECT row_to_json(list)::text AS body FROM (
    SELECT ARRAY(SELECT {responses.todo("page")} FROM page ORDER BY created_at DESC, id DESC)
               AS items,
           (SELECT count(*) FROM page) AS count,
           (SELECT {responses.cursor("last")} FROM last
            WHERE (SELECT count(*) FROM found) > %(limit)s) AS next_cursor
) AS list
"""
    return Statement("list todos", query, params)


async def list_(tx: Transaction, page: Page) -> str:
    """A page of todos, as the JSON of TodoList."""
    [row] = await tx.fetch(list_statement(tx.user_id, page))
    body: str = row["body"]
    return body


async def update(
    tx: Transaction,
    todo_id: UUID,
    changes: TodoUpdate,
    versions: Versions = None,
    key: Key | None = None,
) -> Saved:
    """The condition (If-Match) is part of the UPDATE, so no other write can come between
    checking and writing; a stale version and a missing todo are told apart in the same
    statement."""
    fields = changes.model_dump(exclude_unset=True)
    target = sql.SQL(TARGET)
    if fields:
        assignments = sql.SQL(", ").join(
            sql.SQL("{} = {}").format(sql.Identifier(name), sql.Placeholder(name))
            for name in fields
        )
        write = sql.SQL("UPDATE todos SET {} WHERE {} RETURNING {}").format(
            assignments, target, sql.SQL(ANSWER)
        )
    else:  # `{}` changes nothing, not even updated_at or the version
        write = sql.SQL("SELECT {} FROM todos WHERE {}").format(sql.SQL(ANSWER), target)
    params = {**fields, "id": todo_id, "versions": versions}
    return _saved(await write_once(tx, "update todo", write, params, key))


async def delete(tx: Transaction, todo_id: UUID, versions: Versions = None) -> None:
    """As update: the condition is part of the DELETE, which tells 404 from 412 as well."""
    write = sql.SQL(f"DELETE FROM todos WHERE {TARGET} RETURNING {ANSWER}")
    _saved(await write_once(tx, "delete todo", write, {"id": todo_id, "versions": versions}, None))
