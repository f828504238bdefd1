"""Model-based test through the HTTP API: several users create, patch, delete, get and list
todos at random, also on each other's ids and with hostile bodies. An in-memory model says
what each user owns; after every step each user's list must equal it exactly (ids, fields,
newest first), and someone else's todo must answer exactly like one that does not exist."""

import json
import uuid

from conftest import id_of, new_user
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, rule
from hypothesis.stateful import run_state_machine_as_test as run_machine
from test_api import TODOS, assert_problem, parse_time, walk_pages
from test_fuzz_schema import FEWER

USERS = 3
MAX_BODY = 64 * 1024
JSON = {"Content-Type": "application/json"}

user = st.integers(0, USERS - 1)
# Text PostgreSQL can store: no NUL, no lone surrogates.
text = st.characters(exclude_categories=["Cs"], exclude_characters="\x00")
titles = st.one_of(st.text(text, min_size=1, max_size=255).filter(str.strip), st.just("t" * 255))
descriptions = st.one_of(st.none(), st.text(text, max_size=2000), st.just("d" * 2000))
creates = st.fixed_dictionaries(
    {"title": titles}, optional={"description": descriptions, "is_completed": st.booleans()}
)
patches = st.fixed_dictionaries(
    {}, optional={"title": titles, "description": descriptions, "is_completed": st.booleans()}
)


def as_json(fields: dict) -> bytes:
    return json.dumps(fields).encode()


def is_json_object(content: bytes) -> bool:
    try:
        return isinstance(json.loads(content), dict)
    except ValueError:
        return False


def invalid(field: str, values: st.SearchStrategy) -> st.SearchStrategy:
    """Bodies whose `field` breaks the rules: a 422 on that field."""
    return values.map(lambda value: (as_json({"title": "x", field: value}), 422, field))


# (body, status, field named in field_errors) for a body that must be refused, on create
# or patch alike.
hostile_bodies = st.one_of(
    invalid("title", st.text(min_size=256, max_size=400)),
    invalid("title", st.sampled_from(["", " ", "\t\n", "\u3000", "a\x00b"])),
    invalid("title", st.one_of(st.integers(), st.lists(st.text()), st.booleans(), st.none())),
    invalid("description", st.text(min_size=2001, max_size=2100)),
    invalid("description", st.just("nul \x00 inside")),
    invalid("is_completed", st.sampled_from(["true", "yes", 1, 0, None, [], {}])),
    invalid("foo", st.text()),
    st.binary(max_size=64).filter(lambda b: not is_json_object(b)).map(lambda b: (b, 400, None)),
    st.integers(MAX_BODY + 1, MAX_BODY + 100).map(lambda n: (b" " * n, 413, None)),
)


def newest_first(todos: dict[str, dict]) -> list[dict]:
    """The list order: created_at desc, id desc (PostgreSQL orders uuids as UUID() does)."""
    return sorted(
        todos.values(),
        key=lambda todo: (parse_time(todo["created_at"]), uuid.UUID(todo["id"])),
        reverse=True,
    )


class TodoModel(RuleBasedStateMachine):
    """`self.todos[user]` is every todo `user` owns, as the API last returned it."""

    todos_made = Bundle("todos")

    def __init__(self, client):
        super().__init__()
        self.client = client
        self.users = [new_user() for _ in range(USERS)]  # each one's headers: its own token
        self.todos: list[dict[str, dict]] = [{} for _ in range(USERS)]

    def send(self, method, actor, todo_id=None, *, headers=None, **kwargs):
        url = TODOS if todo_id is None else f"{TODOS}/{todo_id}"
        headers = {**self.users[actor], **(headers or {})}
        return self.client.request(method, url, headers=headers, **kwargs)

    def assert_missing(self, method: str, actor: int, todo_id: str, **kwargs) -> None:
        """A todo `actor` may not see answers exactly like a random id."""
        response = self.send(method, actor, todo_id, **kwargs)
        assert_problem(response, 404, "NOT_FOUND")
        assert response.json() == self.send(method, actor, str(uuid.uuid4()), **kwargs).json()

    @staticmethod
    def acting_on(owned: tuple[int, str], as_owner: bool, other: int) -> tuple[int, str]:
        """(who acts, on which todo): its owner, or (unless `as_owner`) maybe someone else."""
        owner, todo_id = owned
        return (owner if as_owner else other), todo_id

    @rule(target=todos_made, actor=user, fields=creates)
    def create(self, actor, fields):
        response = self.send("POST", actor, json=fields)
        assert response.status_code == 201, response.text
        todo = response.json()
        expected = {"description": None, "is_completed": False, **fields}
        assert expected.items() <= todo.items()
        assert todo["user_id"] == id_of(self.users[actor])
        assert todo["created_at"] == todo["updated_at"]
        assert response.headers["location"] == f"{TODOS}/{todo['id']}"
        self.todos[actor][todo["id"]] = todo
        return actor, todo["id"]

    @rule(owned=todos_made, as_owner=st.booleans(), other=user, changes=patches)
    def patch(self, owned, as_owner, other, changes):
        actor, todo_id = self.acting_on(owned, as_owner, other)
        if todo_id not in self.todos[actor]:
            self.assert_missing("PATCH", actor, todo_id, json=changes)
            return
        response = self.send("PATCH", actor, todo_id, json=changes)
        assert response.status_code == 200, response.text
        before, after = self.todos[actor][todo_id], response.json()
        assert {**after, "updated_at": None} == {**before, **changes, "updated_at": None}
        if changes:
            assert parse_time(after["updated_at"]) >= parse_time(before["updated_at"])
        else:
            assert after == before
        self.todos[actor][todo_id] = after

    @rule(owned=todos_made, as_owner=st.booleans(), other=user)
    def delete(self, owned, as_owner, other):
        actor, todo_id = self.acting_on(owned, as_owner, other)
        if todo_id not in self.todos[actor]:
            self.assert_missing("DELETE", actor, todo_id)
            return
        response = self.send("DELETE", actor, todo_id)
        assert (response.status_code, response.content) == (204, b"")
        del self.todos[actor][todo_id]

    @rule(owned=todos_made, as_owner=st.booleans(), other=user)
    def get(self, owned, as_owner, other):
        actor, todo_id = self.acting_on(owned, as_owner, other)
        if todo_id not in self.todos[actor]:
            self.assert_missing("GET", actor, todo_id)
            return
        response = self.send("GET", actor, todo_id)
        assert response.status_code == 200, response.text
        assert response.json() == self.todos[actor][todo_id]

    @rule(actor=user, completed=st.sampled_from([None, True, False]), limit=st.integers(1, 4))
    def list_pages(self, actor, completed, limit):
        params = {} if completed is None else {"completed": str(completed).lower()}
        pages = walk_pages(self.client, self.users[actor], limit, **params)
        expected = [
            todo
            for todo in newest_first(self.todos[actor])
            if completed in (None, todo["is_completed"])
        ]
        assert [todo for page in pages for todo in page] == expected

    @rule(actor=user, victim=user, owned=todos_made, field=st.sampled_from(["user_id", "id"]))
    def create_naming_an_owner_or_id(self, actor, victim, owned, field):
        planted = id_of(self.users[victim]) if field == "user_id" else owned[1]
        response = self.send("POST", actor, json={"title": "planted", field: planted})
        body = assert_problem(response, 422, "VALIDATION_ERROR")
        assert field in {error["field"] for error in body["field_errors"]}

    @rule(owned=todos_made, as_owner=st.booleans(), other=user, victim=user)
    def patch_giving_a_todo_away(self, owned, as_owner, other, victim):
        actor, todo_id = self.acting_on(owned, as_owner, other)
        response = self.send("PATCH", actor, todo_id, json={"user_id": id_of(self.users[victim])})
        assert_problem(response, 422, "VALIDATION_ERROR")

    @rule(actor=user, hostile=hostile_bodies)
    def create_hostile(self, actor, hostile):
        self.assert_refused(self.send("POST", actor, content=hostile[0], headers=JSON), hostile)

    @rule(owned=todos_made, as_owner=st.booleans(), other=user, hostile=hostile_bodies)
    def patch_hostile(self, owned, as_owner, other, hostile):
        actor, todo_id = self.acting_on(owned, as_owner, other)
        response = self.send("PATCH", actor, todo_id, content=hostile[0], headers=JSON)
        self.assert_refused(response, hostile)

    def assert_refused(self, response, hostile) -> None:
        _, status, field = hostile
        code = {400: "MALFORMED_BODY", 413: "PAYLOAD_TOO_LARGE", 422: "VALIDATION_ERROR"}
        body = assert_problem(response, status, code[status])
        if field is not None:
            assert field in {error["field"] for error in body["field_errors"]}

    @invariant()
    def every_list_equals_the_model(self):
        for actor in range(USERS):
            response = self.send("GET", actor)
            assert response.status_code == 200, response.text
            body = response.json()
            assert body["items"] == newest_first(self.todos[actor])
            assert body["count"] == len(self.todos[actor])
            assert body["next_cursor"] is None


def test_api_matches_the_model(client):
    run_machine(lambda: TodoModel(client), settings=FEWER)
