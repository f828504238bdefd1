"""The per-request transaction (db/transaction.py) on a connection that someone with the
service's credentials has tampered with: nothing left in the session changes what it reads."""

import asyncio
import uuid

import psycopg

from db import todos
from db.connection import Pool
from db.transaction import Caller, Transaction

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
            return [todo.title for todo in page.items]

    sql.execute("INSERT INTO users (id) VALUES (%s)", (user,))
    sql.execute("INSERT INTO todos (user_id, title) VALUES (%s, 'real')", (user,))
    assert asyncio.run(list_after_planting()) == ["real"]
