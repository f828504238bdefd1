"""The per-request transaction (db/transaction.py) on a connection that someone with the
service's credentials has tampered with: nothing left in the session changes what it reads."""

import asyncio
import json
import uuid

import psycopg
import pytest

from db import todos
from db.connection import Pool
from db.transaction import Caller, Statement, Transaction

PLANT = """
INSERT INTO todos (id, user_id, title, is_completed, created_at, updated_at)
VALUES (gen_random_uuid(), %s, 'planted', false, now(), now())
"""


def pool_of_one(url: str) -> Pool:
    return Pool(
        url,
        min_size=1,
        max_size=1,
        timeout=5,
        connect_timeout=5,
        reconnect_timeout=5,
        prepared_statements="auto",
    )


def test_a_temporary_table_cannot_shadow_todos(database_url: str, sql: psycopg.Connection):
    """todo_app may create temporary tables; without the pinned search_path, pg_temp comes
    first and the request would read the planted row instead of the real table."""
    user = uuid.uuid4()

    async def list_after_planting() -> list[str]:
        async with pool_of_one(database_url) as pool:
            async with pool.connection() as conn:  # the pool's only connection
                await conn.execute("SET ROLE todo_app")
                await conn.execute("CREATE TEMP TABLE todos AS TABLE public.todos WITH NO DATA")
                await conn.execute(PLANT, (user,))
                await conn.execute("RESET ROLE")
            page = await todos.list_(Transaction(pool, Caller(user), 5000), todos.Page(limit=10))
            return [todo["title"] for todo in json.loads(page)["items"]]

    sql.execute("INSERT INTO users (id) VALUES (%s)", (user,))
    sql.execute("INSERT INTO todos (user_id, title) VALUES (%s, 'real')", (user,))
    assert asyncio.run(list_after_planting()) == ["real"]


def test_time_zone_and_date_style_left_in_the_session_change_no_timestamp(
    database_url: str, sql: psycopg.Connection
):
    """The database writes the responses' timestamps; the context pins what they depend on."""
    user = uuid.uuid4()

    async def get_after_setting() -> str:
        async with pool_of_one(database_url) as pool:
            async with pool.connection() as conn:
                await conn.execute("SET TimeZone = 'America/St_Johns'")  # -03:30
                await conn.execute("SET DateStyle = 'SQL, DMY'")
            return (await todos.get(Transaction(pool, Caller(user), 5000), todo_id)).body

    sql.execute("INSERT INTO users (id) VALUES (%s)", (user,))
    [(todo_id,)] = sql.execute(
        "INSERT INTO todos (user_id, title, created_at)"
        " VALUES (%s, 'x', '2026-01-02 03:04:05.5+00') RETURNING id",
        (user,),
    )
    assert json.loads(asyncio.run(get_after_setting()))["created_at"] == (
        "2026-01-02T03:04:05.500000+00:00"
    )


def test_a_read_only_transaction_writes_nothing(database_url: str, sql: psycopg.Connection):
    """GET requests run read-only (api/deps.py): even a write statement cannot write."""
    user = uuid.uuid4()

    async def write_in_a_read() -> None:
        async with pool_of_one(database_url) as pool:
            read = Transaction(pool, Caller(user), 5000, read_only=True)
            await read.fetch(Statement("plant", PLANT, (user,)))

    sql.execute("INSERT INTO users (id) VALUES (%s)", (user,))
    with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
        asyncio.run(write_in_a_read())
    assert sql.execute("SELECT count(*) FROM todos WHERE user_id = %s", (user,)).fetchone() == (0,)
