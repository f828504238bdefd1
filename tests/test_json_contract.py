"""The JSON contract, byte for byte: every todo endpoint's body is exactly what the service
wrote before PostgreSQL took over writing it, that is, the stored row read in UTC,
`TodoPublic.model_validate(row)` (or a `TodoList` of them) serialized by FastAPI's
response_model path, whatever the text, the timestamps or the database's session defaults.

FastAPI (0.165 here) sends a response_model's body as `TypeAdapter(model).dump_json(value,
by_alias=True)` in a plain Response with media type application/json (fastapi/routing.py,
serialize_response(dump_json=True)): `sent` below does the same."""

import base64
import hashlib
import json
import uuid

import psycopg
import pytest
from conftest import app_client, id_of, new_user
from psycopg import sql
from psycopg.rows import dict_row
from pydantic import BaseModel, TypeAdapter

from db.models import TodoList, TodoPublic

TODOS = "/api/v1/todos"
COLUMNS = "id, user_id, title, description, is_completed, created_at, updated_at"
JSON = {"Content-Type": "application/json"}
KEY, REPLAYED = "Idempotency-Key", "idempotent-replayed"

CONTROLS = "".join(map(chr, range(1, 0x20))) + "\x7f"  # every one the API takes: all but NUL
KINDS = {
    "unicode": {
        "title": "Crème brûlée 北京 😀🇫🇷 e\u0301 שלום עולם",
        "description": "line\u2028separator\u2029paragraph \U0001f9d1\u200d\U0001f4bb",
    },
    "controls": {"title": f"controls {CONTROLS}", "description": CONTROLS},
    "markup": {
        "title": "\"quoted\" 'single' \\back\\slash\\",
        "description": '</script><script>alert("/")</script> \\u0000 \\n a/b',
    },
    "null description": {"title": "No description", "description": None},
    "empty description": {"title": "Empty description", "description": ""},
    "longest": {"title": "ñ" * 255, "description": ("😀é北" * 667)[:2000]},
    "completed": {"title": "Done", "is_completed": True},
}
# Every way a timestamp's fraction and year can be written (isoformat() pads the fraction to
# six digits and drops a zero one; PostgreSQL's JSON trims trailing zeros).
STAMPS = [
    "9999-12-31 23:59:59.999999+00",
    "2024-02-29 12:00:00.999999+00",
    "2024-02-29 12:00:00.12+00",  # .120000
    "2024-02-29 12:00:00.000001+00",
    "2024-02-29 12:00:00+00",  # exactly on a second: no fraction
    "1970-01-01 00:00:00.5+00",
    "0999-12-31 23:59:59.000001+00",  # before 1000 AD: the year is 0999
]


@pytest.fixture(
    scope="module",
    params=[
        "server defaults",
        # A database whose own TimeZone and DateStyle differ: the context statement pins
        # both. Before PostgreSQL wrote the JSON, every GET here was a 500 (psycopg cannot read
        # a timestamptz in DateStyle 'SQL') and next_cursor carried -03:30 times.
        "St_Johns SQL DMY",
    ],
)
def database(request, make_database):
    url = make_database()
    if request.param == "St_Johns SQL DMY":
        with psycopg.connect(url, autocommit=True) as conn:
            name = sql.Identifier(conn.info.dbname)
            for setting in ("TimeZone = 'America/St_Johns'", "DateStyle = 'SQL, DMY'"):
                conn.execute(sql.SQL("ALTER DATABASE {} SET " + setting).format(name))
    return url


@pytest.fixture(scope="module")
def api(database):
    with app_client(database) as client:
        yield client


@pytest.fixture(scope="module")
def db(database):
    """The reference's connection: the superuser, timestamps read in UTC."""
    with psycopg.connect(database, autocommit=True, row_factory=dict_row) as conn:
        conn.execute("SET TimeZone = 'UTC'")
        conn.execute("SET DateStyle = 'ISO, MDY'")
        yield conn


def sent(value: BaseModel) -> bytes:
    """The body FastAPI sends for `value` as a response_model."""
    return TypeAdapter(type(value)).dump_json(value, by_alias=True)


def stored(db, todo_id) -> TodoPublic:
    return TodoPublic.model_validate(
        db.execute(f"SELECT {COLUMNS} FROM todos WHERE id = %s", (todo_id,)).fetchone()
    )


def all_of(db, user) -> list[TodoPublic]:
    query = f"SELECT {COLUMNS} FROM todos WHERE user_id = %s ORDER BY created_at DESC, id DESC"
    return [TodoPublic.model_validate(row) for row in db.execute(query, (id_of(user),))]


def cursor_of(todo: TodoPublic) -> str:
    raw = f"{todo.created_at.isoformat()}|{todo.id}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def page(todos: list[TodoPublic], limit: int = 100) -> bytes:
    items = todos[:limit]
    next_cursor = cursor_of(items[-1]) if len(todos) > limit else None
    return sent(TodoList(items=items, count=len(items), next_cursor=next_cursor))


def assert_sends(response, status: int, body: bytes) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.content == body


def create(api, user, fields) -> str:
    response = api.post(TODOS, json=fields, headers=user)
    assert response.status_code == 201, response.text
    return response.json()["id"]


def stamped(api, db, user, kind: str) -> str:
    """A new todo of `kind`, with its pair of STAMPS, set as the superuser (so that the
    trigger's now() does not replace updated_at)."""
    todo_id = create(api, user, KINDS[kind])
    n = list(KINDS).index(kind)
    with db.transaction():
        db.execute("SET LOCAL session_replication_role = replica")
        db.execute(
            "UPDATE todos SET created_at = %s::timestamptz, updated_at = %s::timestamptz"
            " WHERE id = %s",
            (STAMPS[n], STAMPS[(n + 3) % len(STAMPS)], todo_id),
        )
    return todo_id


@pytest.fixture(scope="module")
def catalogue(api, db):
    """A user with one todo of each kind, and their ids."""
    user = new_user()
    return user, {kind: stamped(api, db, user, kind) for kind in KINDS}


@pytest.mark.parametrize("kind", KINDS)
def test_get(api, db, catalogue, kind):
    user, ids = catalogue
    assert_sends(api.get(f"{TODOS}/{ids[kind]}", headers=user), 200, sent(stored(db, ids[kind])))


@pytest.mark.parametrize("completed", [None, True, False])
def test_list(api, db, catalogue, completed):
    user, _ = catalogue
    params = {} if completed is None else {"completed": str(completed).lower()}
    todos = [todo for todo in all_of(db, user) if completed in (None, todo.is_completed)]
    assert_sends(api.get(TODOS, params=params, headers=user), 200, page(todos))


@pytest.mark.parametrize("limit", [1, 3])
def test_list_pages_follow_the_cursor(api, db, catalogue, limit):
    user, _ = catalogue
    todos, params = all_of(db, user), {"limit": limit}
    for start in range(0, len(todos), limit):
        response = api.get(TODOS, params=params, headers=user)
        assert_sends(response, 200, page(todos[start:], limit))
        params["cursor"] = response.json()["next_cursor"]
    assert params["cursor"] is None


def test_empty_list(api):
    assert_sends(
        api.get(TODOS, headers=new_user()), 200, b'{"items":[],"count":0,"next_cursor":null}'
    )


@pytest.mark.parametrize("kind", KINDS)
def test_post(api, db, kind):
    response = api.post(TODOS, json=KINDS[kind], headers=new_user())
    assert response.status_code == 201, response.text
    assert_sends(response, 201, sent(stored(db, response.json()["id"])))


CHANGES = {
    "change": {"title": "Changed ☃\u2028", "description": None, "is_completed": True},
    "none": {},
}


@pytest.mark.parametrize("change", CHANGES)
@pytest.mark.parametrize("kind", KINDS)
def test_patch(api, db, kind, change):
    user = new_user()
    todo_id = stamped(api, db, user, kind)
    response = api.patch(f"{TODOS}/{todo_id}", json=CHANGES[change], headers=user)
    assert_sends(response, 200, sent(stored(db, todo_id)))


def keyed(api, user, method, url, body: bytes, key: str):
    return api.request(method, url, content=body, headers={**user, **JSON, KEY: key})


@pytest.mark.parametrize("kind", KINDS)
def test_keyed_post_replays_the_same_bytes(api, db, kind):
    user, body = new_user(), json.dumps(KINDS[kind]).encode()
    first, again = [keyed(api, user, "POST", TODOS, body, "post") for _ in range(2)]
    assert first.status_code == 201, first.text
    assert_sends(first, 201, sent(stored(db, first.json()["id"])))
    assert again.headers.get(REPLAYED) == "true"
    assert_sends(again, 201, first.content)


@pytest.mark.parametrize("change", CHANGES)
@pytest.mark.parametrize("kind", KINDS)
def test_keyed_patch_replays_the_same_bytes(api, db, kind, change):
    user = new_user()
    todo_id = stamped(api, db, user, kind)
    url, body = f"{TODOS}/{todo_id}", json.dumps(CHANGES[change]).encode()
    first, again = [keyed(api, user, "PATCH", url, body, "patch") for _ in range(2)]
    assert_sends(first, 200, sent(stored(db, todo_id)))
    assert again.headers.get(REPLAYED) == "true"
    assert_sends(again, 200, first.content)


@pytest.mark.parametrize("kind", KINDS)
def test_recorded_answer_replays_the_same_bytes(api, db, catalogue, kind):
    """An answer recorded as the service records one (to_jsonb of the row, in a session with
    the database's own defaults), put there by hand and replayed."""
    user, ids = catalogue
    key, body, url = f"recorded-{uuid.uuid4()}", b"{}", f"{TODOS}/{ids[kind]}"
    fingerprint = hashlib.sha256(f"PATCH {url}\n".encode() + body).hexdigest()
    with db.transaction():
        db.execute("SET LOCAL TimeZone TO DEFAULT")
        db.execute(
            "INSERT INTO idempotency_keys (user_id, key, fingerprint, response)"
            " SELECT user_id, %s, %s, to_jsonb(todos) FROM todos WHERE id = %s",
            (key, fingerprint, ids[kind]),
        )
    response = keyed(api, user, "PATCH", url, body, key)
    assert response.headers.get(REPLAYED) == "true", response.text
    assert_sends(response, 200, sent(stored(db, ids[kind])))
