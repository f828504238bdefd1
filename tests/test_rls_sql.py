"""RLS on its own: direct SQL as `todo_app`, with the application's code and filters out
of the way. Each transaction switches role and user exactly as db/transaction.py does."""

import uuid
from collections.abc import Iterator

import psycopg
import pytest
from conftest import SWITCH, as_user
from psycopg.errors import InsufficientPrivilege

SWITCH_ROLE_ONLY = "SELECT set_config('role', 'todo_app', true)"
RLS = "row-level security"

A = str(uuid.uuid4())
B = str(uuid.uuid4())


def insert_todo(conn: psycopg.Connection, user_id: str, title: str) -> str:
    cur = conn.execute(
        "INSERT INTO todos (user_id, title) VALUES (%s, %s) RETURNING id::text", (user_id, title)
    )
    return cur.fetchone()[0]


def visible(conn: psycopg.Connection, query: str) -> set:
    """The first column of every row `query` returns, as a set."""
    return {row[0] for row in conn.execute(query)}


def visible_todos(conn: psycopg.Connection) -> set[str]:
    return visible(conn, "SELECT id::text FROM todos")


def visible_users(conn: psycopg.Connection) -> set[str]:
    return visible(conn, "SELECT id::text FROM users")


@pytest.fixture(scope="module")
def seeded(database_url: str) -> dict[str, set[str]]:
    """Users A and B with two todos each, each written as todo_app in its own user's context."""
    todos = {}
    with psycopg.connect(database_url, autocommit=True) as conn:
        for user in (A, B):
            with as_user(conn, user):
                conn.execute("INSERT INTO users (id) VALUES (%s)", (user,))
                todos[user] = {insert_todo(conn, user, title) for title in ("one", "two")}
    return todos


@pytest.fixture
def conn(database_url: str, seeded: dict[str, set[str]]) -> Iterator[psycopg.Connection]:
    """A fresh superuser connection: app.user_id has never been set on it."""
    with psycopg.connect(database_url, autocommit=True) as connection:
        yield connection


def test_the_superuser_sees_the_seeded_rows(conn, seeded):
    # Makes every "0 rows visible" below meaningful: the rows are there.
    assert seeded[A] | seeded[B] <= visible_todos(conn)
    assert {A, B} <= visible_users(conn)


@pytest.mark.parametrize(
    ("switch", "params"),
    [(SWITCH_ROLE_ONLY, ()), (SWITCH, ("", "5000"))],
    ids=["user-unset", "user-empty"],
)
def test_no_user_context_sees_no_rows(conn, switch, params):
    with conn.transaction():
        conn.execute(switch, params)
        assert visible_todos(conn) == set()
        assert visible_users(conn) == set()


def test_no_user_context_cannot_write(conn):
    with pytest.raises(InsufficientPrivilege, match=RLS), conn.transaction(force_rollback=True):
        conn.execute(SWITCH_ROLE_ONLY)
        conn.execute("INSERT INTO users (id) VALUES (%s)", (str(uuid.uuid4()),))


def test_a_sees_only_their_own_rows(conn, seeded):
    with as_user(conn, A):
        assert visible_todos(conn) == seeded[A]
        assert visible_users(conn) == {A}
        assert visible(conn, "SELECT DISTINCT user_id::text FROM todos") == {A}


# The refused writes below have no WHERE and no RETURNING, so they need no SELECT right and
# only WITH CHECK can refuse them (with one, PostgreSQL also holds the new row to USING).
def test_a_cannot_insert_a_todo_for_b(conn):
    with pytest.raises(InsufficientPrivilege, match=RLS), as_user(conn, A, rollback=True):
        conn.execute("INSERT INTO todos (user_id, title) VALUES (%s, 'planted')", (B,))


def test_a_cannot_insert_a_users_row_for_b(conn):
    with pytest.raises(InsufficientPrivilege, match=RLS), as_user(conn, A, rollback=True):
        conn.execute("INSERT INTO users (id) VALUES (%s)", (B,))


def test_a_cannot_give_their_todos_to_b(conn):
    with pytest.raises(InsufficientPrivilege, match=RLS), as_user(conn, A, rollback=True):
        conn.execute("UPDATE todos SET user_id = %s", (B,))


def test_a_cannot_update_or_delete_b_rows(conn, seeded):
    with as_user(conn, B):
        before = conn.execute("SELECT * FROM todos ORDER BY id").fetchall()

    with as_user(conn, A):
        updated = conn.execute("UPDATE todos SET title = 'taken' WHERE user_id = %s", (B,))
        assert updated.rowcount == 0
        deleted = conn.execute("DELETE FROM todos WHERE user_id = %s", (B,))
        assert deleted.rowcount == 0

    with as_user(conn, B):
        assert conn.execute("SELECT * FROM todos ORDER BY id").fetchall() == before
        assert visible_todos(conn) == seeded[B]


@pytest.mark.parametrize("rollback", [False, True], ids=["after-commit", "after-rollback"])
def test_the_user_context_ends_with_its_transaction(conn, seeded, rollback):
    with as_user(conn, A, rollback=rollback):
        assert visible_todos(conn) == seeded[A]

    setting, role = conn.execute(
        "SELECT current_setting('app.user_id', true), current_user"
    ).fetchone()
    assert setting in ("", None)
    assert role != "todo_app"
    with conn.transaction():
        conn.execute(SWITCH_ROLE_ONLY)
        assert visible_todos(conn) == set()
        assert visible_users(conn) == set()


def test_session_level_set_role_shows_one_user_at_most(conn, seeded):
    # README's psql inspection: SET ROLE, then a session-level app.user_id.
    conn.execute("SET ROLE todo_app")
    assert visible_todos(conn) == set()
    conn.execute("SELECT set_config('app.user_id', %s, false)", (A,))
    assert visible_todos(conn) == seeded[A]


# Not listed: RESET ROLE and SET ROLE <superuser> succeed, because PostgreSQL checks them
# against the session user. The switch guards against the code's mistakes, not arbitrary SQL.
@pytest.mark.parametrize(
    "statement",
    [
        "TRUNCATE todos",  # TRUNCATE ignores RLS: todo_app must not have it
        "TRUNCATE users CASCADE",
        "UPDATE users SET created_at = now()",
        "DELETE FROM users",
        "ALTER TABLE todos DISABLE ROW LEVEL SECURITY",
        "ALTER TABLE todos NO FORCE ROW LEVEL SECURITY",
        "ALTER TABLE users DISABLE ROW LEVEL SECURITY",
        "DROP POLICY todos_own_rows ON todos",
        "ALTER POLICY todos_own_rows ON todos USING (true)",
        "CREATE POLICY everything ON todos USING (true)",
        "DROP TABLE todos",
        "CREATE OR REPLACE FUNCTION current_app_user() RETURNS uuid"
        " LANGUAGE sql AS $$ SELECT NULL::uuid $$",
    ],
)
def test_todo_app_cannot_get_around_the_policies(conn, statement):
    with pytest.raises(InsufficientPrivilege), as_user(conn, A, rollback=True):
        conn.execute(statement)


PER_ROW = ("current_app_user", "current_setting")


def plan_nodes(plan: dict) -> Iterator[dict]:
    yield plan
    for child in plan.get("Plans", []):
        yield from plan_nodes(child)


def test_list_query_plan_uses_the_index_and_evaluates_the_user_once(conn):
    with as_user(conn, A, rollback=True):
        # On a table this small the planner would rightly prefer a seq scan.
        conn.execute("SET LOCAL enable_seqscan = off")
        # No WHERE: the policy alone has to bring in the index.
        [([explain],)] = conn.execute(
            "EXPLAIN (FORMAT JSON) SELECT * FROM todos ORDER BY created_at DESC, id DESC"
        ).fetchall()
    nodes = list(plan_nodes(explain["Plan"]))

    assert any(node.get("Parent Relationship") == "InitPlan" for node in nodes)
    [scan] = [node for node in nodes if node.get("Index Name") == "todos_user_created_idx"]
    assert "user_id" in scan["Index Cond"]
    # The index is probed with the InitPlan's result, not an expression evaluated per row.
    assert not any(name in scan["Index Cond"] for name in PER_ROW)
    assert not any(name in node.get("Filter", "") for node in nodes for name in PER_ROW)
