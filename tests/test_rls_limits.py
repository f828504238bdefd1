"""The documented limits of RLS: what someone who already runs SQL as `todo_app` can learn
about, or do to, other users despite the policies. Each test pins one limit listed in
SECURITY.md ("What RLS does not protect against") as measured: if PostgreSQL ever closes one,
its test fails and SECURITY.md must change with it."""

import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from conftest import as_user
from psycopg.errors import InsufficientPrivilege, QueryCanceled, UniqueViolation

B_ROWS = 5000
FREQUENT_TITLE = "salary review"  # 1 in 5 of B's todos; every other title is used once
FREQUENT_ROWS = B_ROWS // 5


def value(conn: psycopg.Connection, query: str, params: tuple = ()) -> Any:
    """The first column of the one row `query` returns."""
    [(result, *_)] = conn.execute(query, params).fetchall()
    return result


def estimated_rows(conn: psycopg.Connection, query: str) -> int:
    """The planner's row estimate for `query`, as EXPLAIN shows it."""
    return value(conn, "EXPLAIN (FORMAT JSON) " + query)[0]["Plan"]["Plan Rows"]


@pytest.fixture
def users(database_url: str) -> Iterator[tuple[str, str]]:
    """Two fresh users, A and B, in the run's database; deleted with their todos afterwards."""
    a, b = str(uuid.uuid4()), str(uuid.uuid4())
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("INSERT INTO users (id) VALUES (%s), (%s)", (a, b))
        try:
            yield a, b
        finally:
            conn.execute("DELETE FROM users WHERE id IN (%s, %s)", (a, b))


RELTUPLES = "SELECT reltuples FROM pg_class WHERE oid = 'todos'::regclass"
PG_STATS = "SELECT count(*) FROM pg_stats WHERE tablename = 'todos'"
N_TUP_INS = "SELECT n_tup_ins FROM pg_stat_user_tables WHERE relname = 'todos'"


def test_statistics_reveal_how_many_rows_others_have(make_database: Callable[..., str]):
    # A database of its own: every number below depends on every row in the table.
    url = make_database()
    a, b = str(uuid.uuid4()), str(uuid.uuid4())
    with psycopg.connect(url, autocommit=True) as owner:
        owner.execute("INSERT INTO users (id) VALUES (%s), (%s)", (a, b))
        with as_user(owner, b):
            owner.execute(
                "INSERT INTO todos (user_id, title)"
                " SELECT %s, CASE WHEN i %% 5 = 0 THEN %s ELSE 'todo ' || i END"
                " FROM generate_series(1, %s) AS i",
                (b, FREQUENT_TITLE, B_ROWS),
            )
        owner.execute("SELECT pg_stat_force_next_flush()")  # the counters, now rather than soon
        owner.execute("ANALYZE todos")  # what autovacuum does after that many inserts
        assert value(owner, PG_STATS) > 0

        with psycopg.connect(url, autocommit=True) as conn, as_user(conn, a):
            assert value(conn, "SELECT count(*) FROM todos") == 0
            assert value(conn, RELTUPLES) == B_ROWS
            # The policy's `user_id = $0` is estimated as 1 / distinct owners: B alone here.
            assert estimated_rows(conn, "SELECT * FROM todos") == B_ROWS
            # The most common values count too: a guessed title's share of all rows.
            frequent = f"SELECT * FROM todos WHERE title = '{FREQUENT_TITLE}'"
            assert estimated_rows(conn, frequent) == FREQUENT_ROWS
            # A title used once is estimated like one nobody uses.
            assert estimated_rows(conn, "SELECT * FROM todos WHERE title = 'todo 1'") == 1
            assert estimated_rows(conn, "SELECT * FROM todos WHERE title = 'unused'") == 1
            # pg_stats hides the table from a reader RLS applies to...
            assert value(conn, PG_STATS) == 0
            # ...but the cumulative counters count every user's writes.
            assert value(conn, N_TUP_INS) == B_ROWS

        # Once A owns a row too, the estimate halves: reltuples / estimate ~ number of owners.
        with as_user(owner, a):
            owner.execute("INSERT INTO todos (user_id, title) VALUES (%s, 'mine')", (a,))
        owner.execute("ANALYZE todos")
        with psycopg.connect(url, autocommit=True) as conn, as_user(conn, a):
            assert value(conn, RELTUPLES) == B_ROWS + 1
            assert estimated_rows(conn, "SELECT * FROM todos") == (B_ROWS + 1) // 2


INSERT_WITH_ID = "INSERT INTO todos (id, user_id, title) VALUES (%s, %s, 'x')"


def test_a_primary_key_conflict_reveals_that_an_id_exists(database_url, users):
    a, b = users
    with psycopg.connect(database_url, autocommit=True) as conn:
        with as_user(conn, b):
            b_todo = value(
                conn, "INSERT INTO todos (user_id, title) VALUES (%s, 'x') RETURNING id", (b,)
            )

        with as_user(conn, a, rollback=True):
            assert value(conn, "SELECT count(*) FROM todos WHERE id = %s", (b_todo,)) == 0
            conn.execute(INSERT_WITH_ID, (uuid.uuid4(), a))  # a random id goes in
        with pytest.raises(UniqueViolation) as error, as_user(conn, a, rollback=True):
            conn.execute(INSERT_WITH_ID, (b_todo, a))  # B's invisible one does not
        diag = error.value.diag
        assert diag.message_primary == 'duplicate key value violates unique constraint "todos_pkey"'
        # Under RLS PostgreSQL leaves out the usual "Key (id)=(...) already exists."
        assert diag.message_detail is None

        # The same answer without an error: ON CONFLICT DO NOTHING inserts 0 rows, not 1.
        with as_user(conn, a, rollback=True):
            upsert = INSERT_WITH_ID + " ON CONFLICT DO NOTHING"
            assert conn.execute(upsert, (b_todo, a)).rowcount == 0
            assert conn.execute(upsert, (uuid.uuid4(), a)).rowcount == 1


def test_lock_table_blocks_every_other_user(database_url, users):
    a, b = users
    with (
        psycopg.connect(database_url, autocommit=True) as holder,
        psycopg.connect(database_url, autocommit=True) as other,
    ):
        # SELECT and INSERT on users allow no lock that blocks other users' statements.
        with pytest.raises(InsufficientPrivilege), as_user(holder, a, rollback=True):
            holder.execute("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")

        # UPDATE and DELETE on todos allow the strongest lock. It lasts as long as the
        # holder's transaction: the holder's own 100 ms statement_timeout does not end it.
        with as_user(holder, a, timeout_ms=100, rollback=True):
            holder.execute("LOCK TABLE todos IN ACCESS EXCLUSIVE MODE")
            start = time.monotonic()
            with pytest.raises(QueryCanceled), as_user(other, b, timeout_ms=300):
                other.execute("SELECT count(*) FROM todos")
            # B waited until B's statement_timeout; in the service that is a 503.
            assert time.monotonic() - start >= 0.3
            assert issubclass(QueryCanceled, psycopg.OperationalError)

        with as_user(other, b, timeout_ms=300):  # released with the holder's transaction
            assert value(other, "SELECT count(*) FROM todos") == 0
