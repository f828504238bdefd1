"""The model again, straight against PostgreSQL with the application out of the way: one
reused connection acts as todo_app and switches app.user_id at random, inside transactions
(`set_config(..., true)`) and across them (`set_config(..., false)`), and runs inserts,
updates, deletes and selects that never filter by the current user, some with no WHERE at
all. Whatever the context, the database alone must show exactly the current user's rows,
and change nobody else's."""

import copy
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    multiple,
    precondition,
    rule,
)
from hypothesis.stateful import run_state_machine_as_test as run_machine
from psycopg.errors import InsufficientPrivilege
from test_fuzz_schema import FUZZ

USERS = 3
# As each request does (db/transaction.py): role and user for this transaction only.
SWITCH_LOCAL = "SELECT set_config('role', 'todo_app', true), set_config('app.user_id', %s, true)"
USER_LOCAL = "SELECT set_config('app.user_id', %s, true)"
# As psql inspection does: for the session, across transactions.
USER_SESSION = "SELECT set_config('app.user_id', %s, false)"
ROWS = "SELECT id, user_id, title, is_completed FROM todos"
UNSET = "unset"  # no transaction-local user: the session's applies

user = st.integers(0, USERS - 1)
user_or_none = st.sampled_from([None, *range(USERS)])
titles = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=20)
titles = titles.filter(str.strip)


@pytest.fixture(scope="module")
def conn(database_url: str) -> Iterator[psycopg.Connection]:
    """The one connection every run of the machine reuses, as todo_app for the session."""
    with psycopg.connect(database_url, autocommit=True) as connection:
        connection.execute("SELECT set_config('role', 'todo_app', false)")
        yield connection


@pytest.fixture(scope="module")
def observer(database_url: str) -> Iterator[psycopg.Connection]:
    """The superuser, outside RLS: what is really committed."""
    with psycopg.connect(database_url, autocommit=True) as connection:
        yield connection


class SqlModel(RuleBasedStateMachine):
    """`committed` is every todo of this run's users as committed; `rows` is what the open
    transaction sees (the same object when none is open). Each maps id -> (owner, title,
    is_completed)."""

    todo_ids = Bundle("todo_ids")

    def __init__(self, conn: psycopg.Connection, observer: psycopg.Connection):
        super().__init__()
        self.conn, self.observer = conn, observer
        self.users = [str(uuid.uuid4()) for _ in range(USERS)]
        self.committed: dict[str, tuple[int, str, bool]] = {}
        self.rows = self.committed
        self.session_user: int | None = None
        self.local_user: int | str | None = UNSET
        self.in_transaction = False
        for index, user_id in enumerate(self.users):
            with conn.transaction():
                conn.execute(SWITCH_LOCAL, (user_id,))
                conn.execute("INSERT INTO users (id) VALUES (%s)", (user_id,))
                self.insert(index, "first")

    def teardown(self):
        if self.in_transaction:
            self.conn.rollback()
        self.conn.execute(USER_SESSION, ("",))

    @property
    def current(self) -> int | None:
        """The user the database should be acting for right now."""
        return self.session_user if self.local_user == UNSET else self.local_user

    def setting(self, index: int | None) -> str:
        return "" if index is None else self.users[index]

    def table(self, rows) -> dict[str, tuple[int | str, str, bool]]:
        """Rows as the model writes them; an owner outside this run stays a raw id."""
        index = {user_id: n for n, user_id in enumerate(self.users)}
        return {
            str(todo_id): (index.get(str(owner), str(owner)), title, done)
            for todo_id, owner, title, done in rows
        }

    def visible(self, todo_id: str) -> bool:
        return todo_id in self.rows and self.rows[todo_id][0] == self.current

    def insert(self, owner: int, title: str) -> str:
        # No RETURNING, so that only WITH CHECK can refuse the row (RETURNING would also
        # hold it to USING); the id is chosen here instead.
        todo_id = str(uuid.uuid4())
        self.conn.execute(
            "INSERT INTO todos (id, user_id, title) VALUES (%s, %s, %s)",
            (todo_id, self.users[owner], title),
        )
        self.rows[todo_id] = (owner, title, False)
        return todo_id

    def statement(self, query: str, params: tuple = ()) -> int:
        """Runs alone, or in a savepoint of the open transaction; returns the row count."""
        with self.conn.transaction():
            return self.conn.execute(query, params).rowcount

    # Switching who we are.

    @precondition(lambda self: not self.in_transaction)
    @rule(who=user_or_none, switch=st.booleans())
    def begin(self, who, switch):
        self.conn.execute("BEGIN")
        if switch:
            self.conn.execute(SWITCH_LOCAL, (self.setting(who),))
        self.in_transaction, self.local_user = True, who if switch else UNSET
        self.rows = copy.deepcopy(self.committed)

    @precondition(lambda self: self.in_transaction)
    @rule(who=user_or_none)
    def switch_inside_the_transaction(self, who):
        self.conn.execute(USER_LOCAL, (self.setting(who),))
        self.local_user = who

    @precondition(lambda self: self.in_transaction)
    @rule(commit=st.booleans())
    def end(self, commit):
        if commit:
            self.conn.commit()
            self.committed = self.rows
        else:
            self.conn.rollback()
            self.rows = self.committed
        self.in_transaction, self.local_user = False, UNSET

    @initialize(who=user_or_none)
    def start_the_session_as(self, who):
        self.switch_the_session(who)

    @precondition(lambda self: not self.in_transaction)
    @rule(who=user_or_none)
    def switch_the_session(self, who):
        self.conn.execute(USER_SESSION, (self.setting(who),))
        self.session_user = who

    # Acting: no statement filters by user; only the policies can stop it.

    @rule(target=todo_ids, owner=user, title=titles)
    def create(self, owner, title):
        if owner != self.current:
            with pytest.raises(InsufficientPrivilege), self.conn.transaction():
                self.insert(owner, title)
            return multiple()
        with self.conn.transaction():
            return self.insert(owner, title)

    @rule(todo_id=todo_ids, title=titles)
    def rename(self, todo_id, title):
        changed = self.statement("UPDATE todos SET title = %s WHERE id = %s", (title, todo_id))
        assert changed == self.visible(todo_id)
        if changed:
            owner, _, done = self.rows[todo_id]
            self.rows[todo_id] = (owner, title, done)

    @rule(todo_id=todo_ids, new_owner=user)
    def give_away(self, todo_id, new_owner):
        query, params = (
            "UPDATE todos SET user_id = %s WHERE id = %s",
            (self.users[new_owner], todo_id),
        )
        if self.visible(todo_id) and new_owner != self.current:
            with pytest.raises(InsufficientPrivilege):
                self.statement(query, params)
        else:
            assert self.statement(query, params) == self.visible(todo_id)

    @rule(new_owner=user)
    def give_everything_away(self, new_owner):
        # No WHERE either: only WITH CHECK stands between the rows and their new owner.
        query, params = "UPDATE todos SET user_id = %s", (self.users[new_owner],)
        mine = [todo_id for todo_id in self.rows if self.visible(todo_id)]
        if mine and new_owner != self.current:
            with pytest.raises(InsufficientPrivilege):
                self.statement(query, params)
        else:
            assert self.statement(query, params) == len(mine)

    @rule()
    def toggle_everything(self):
        toggled = self.statement("UPDATE todos SET is_completed = NOT is_completed")
        mine = [todo_id for todo_id in self.rows if self.visible(todo_id)]
        assert toggled == len(mine)
        for todo_id in mine:
            owner, title, done = self.rows[todo_id]
            self.rows[todo_id] = (owner, title, not done)

    @rule(todo_id=todo_ids)
    def delete(self, todo_id):
        deleted = self.statement("DELETE FROM todos WHERE id = %s", (todo_id,))
        assert deleted == self.visible(todo_id)
        if deleted:
            del self.rows[todo_id]

    @rule(victim=user)
    def delete_everything_of(self, victim):
        deleted = self.statement("DELETE FROM todos WHERE user_id = %s", (self.users[victim],))
        theirs = [todo_id for todo_id in self.rows if self.visible(todo_id)]
        assert deleted == (len(theirs) if victim == self.current else 0)
        if victim == self.current:
            for todo_id in theirs:
                del self.rows[todo_id]

    @rule()
    def delete_everything(self):
        # No WHERE: no SELECT right is involved, only the DELETE policy decides.
        deleted = self.statement("DELETE FROM todos")
        mine = [todo_id for todo_id in self.rows if self.visible(todo_id)]
        assert deleted == len(mine)
        for todo_id in mine:
            del self.rows[todo_id]

    @rule(todo_id=todo_ids)
    def select_one(self, todo_id):
        found = self.statement("SELECT 1 FROM todos WHERE id = %s", (todo_id,))
        assert found == self.visible(todo_id)

    @rule(who=user)
    def claim_a_users_row(self, who):
        query = "INSERT INTO users (id) VALUES (%s) ON CONFLICT (id) DO NOTHING"
        if who != self.current:
            with pytest.raises(InsufficientPrivilege):
                self.statement(query, (self.users[who],))
        else:
            assert self.statement(query, (self.users[who],)) == 0

    # After every step.

    @invariant()
    def the_database_shows_exactly_the_current_users_rows(self):
        shown = self.table(self.conn.execute(ROWS))
        assert shown == {
            todo_id: row for todo_id, row in self.rows.items() if self.visible(todo_id)
        }
        users = {str(user_id) for (user_id,) in self.conn.execute("SELECT id FROM users")}
        assert users == ({self.users[self.current]} if self.current is not None else set())

    @invariant()
    def nothing_else_was_committed(self):
        ours = self.observer.execute(f"{ROWS} WHERE user_id = ANY(%s::uuid[])", (self.users,))
        assert self.table(ours) == self.committed


def test_the_database_alone_matches_the_model(conn, observer):
    run_machine(lambda: SqlModel(conn, observer), settings=FUZZ)
