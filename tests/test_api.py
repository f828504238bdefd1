import base64
import json
import uuid
from datetime import datetime, timedelta

import pytest
from conftest import app_settings, id_of
from fastapi.testclient import TestClient
from issuer import ISSUER

from api.main import create_app

TODOS = "/api/v1/todos"
PROBLEM_JSON = "application/problem+json"
LEAKS = ("Traceback", "psycopg", "SELECT", "sqlalchemy", "pydantic")
SOME_ID = "0b9c2f4e-6d1a-4c3b-8e5f-7a9d1c2b3e4f"
MAX_BODY = 64 * 1024
INVALID_TOKEN_CHALLENGE = 'Bearer error="invalid_token"'


def create(client, user, **fields):
    response = client.post(TODOS, json={"title": "Buy milk", **fields}, headers=user)
    assert response.status_code == 201, response.text
    return response.json()


def items(client, user, **params):
    response = client.get(TODOS, params=params, headers=user)
    assert response.status_code == 200, response.text
    return response.json()["items"]


def fetch(client, user, todo_id):
    response = client.get(f"{TODOS}/{todo_id}", headers=user)
    assert response.status_code == 200, response.text
    return response.json()


def assert_problem(response, status, error_code):
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM_JSON)
    body = response.json()
    assert {"type", "title", "status", "detail", "error_code"} <= body.keys()
    assert body["status"] == status
    assert body["error_code"] == error_code
    assert isinstance(body["detail"], str) and body["detail"]
    assert not any(leak in response.text for leak in LEAKS)
    return body


def assert_caller_refused(response, status, error_code):
    """A 400 from the trusted-header mode, or a 401 with its RFC 6750 challenge."""
    assert_problem(response, status, error_code)
    if status == 401:
        challenge = "Bearer" if error_code == "MISSING_CREDENTIALS" else INVALID_TOKEN_CHALLENGE
        assert response.headers["www-authenticate"] == challenge


def assert_invalid(response, field):
    body = assert_problem(response, 422, "VALIDATION_ERROR")
    assert all(error.keys() == {"field", "message"} for error in body["field_errors"])
    assert field in {error["field"] for error in body["field_errors"]}


def parse_time(value):
    parsed = datetime.fromisoformat(value)
    assert parsed.utcoffset() == timedelta(0)
    return parsed


ENDPOINTS = [
    ("POST", TODOS, {"title": "x"}),
    ("GET", TODOS, None),
    ("GET", f"{TODOS}/{SOME_ID}", None),
    ("PATCH", f"{TODOS}/{SOME_ID}", {"title": "x"}),
    ("DELETE", f"{TODOS}/{SOME_ID}", None),
]


# Behind a trusted gateway (header_client): the caller is the X-User-ID header.
BAD_USER_HEADERS = [
    ({}, "MISSING_USER_CONTEXT"),
    ({"X-User-ID": "not-a-uuid"}, "INVALID_USER_ID"),
    ({"X-User-ID": ""}, "INVALID_USER_ID"),
    ({"X-User-ID": "1234"}, "INVALID_USER_ID"),
    (ISSUER.headers(SOME_ID), "MISSING_USER_CONTEXT"),  # a token means nothing here
]
# With bearer tokens (client, the production mode) an X-User-ID header names nobody.
BAD_CREDENTIALS = [
    ({}, "MISSING_CREDENTIALS"),
    ({"X-User-ID": SOME_ID}, "MISSING_CREDENTIALS"),
    ({"Authorization": "Basic dXNlcjpwYXNzd29yZA=="}, "MISSING_CREDENTIALS"),
    ({"Authorization": "Bearer not-a-jwt"}, "INVALID_TOKEN"),
]
# (the client fixture, headers, status, error_code)
BAD_CALLERS = [
    *[("header_client", headers, 400, code) for headers, code in BAD_USER_HEADERS],
    *[("client", headers, 401, code) for headers, code in BAD_CREDENTIALS],
]


@pytest.mark.parametrize(("app", "headers", "status", "error_code"), BAD_CALLERS)
@pytest.mark.parametrize(("method", "url", "body"), ENDPOINTS)
def test_request_without_a_valid_caller_is_rejected(
    request, app, method, url, body, headers, status, error_code
):
    response = request.getfixturevalue(app).request(method, url, json=body, headers=headers)
    assert_caller_refused(response, status, error_code)


# The UUID spellings docs/api.md promises (for X-User-ID behind a trusted gateway, and for
# the todo id), and the ones it says are refused.
SPELLINGS = {
    str.upper: True,
    lambda u: u.replace("-", ""): True,
    lambda u: "{" + u + "}": True,
    lambda u: "urn:uuid:" + u: True,
    lambda u: "urn:uuid:" + u.replace("-", ""): False,
    lambda u: "{" + u.replace("-", "") + "}": False,
    lambda u: "URN:UUID:" + u: False,
    lambda u: u[:8] + u[9:13] + "-" + u[13:]: False,
}


@pytest.mark.parametrize(("spell", "accepted"), SPELLINGS.items())
def test_uuid_spellings_name_the_same_user_and_todo_or_are_refused(
    header_client, header_user, spell, accepted
):
    client, user = header_client, header_user
    todo = create(client, user)
    other_spelling = {"X-User-ID": spell(id_of(user))}
    response = client.get(f"{TODOS}/{spell(todo['id'])}", headers=other_spelling)
    if accepted:
        assert response.json() == todo
    else:
        assert_problem(response, 400, "INVALID_USER_ID")
        assert_problem(
            client.get(f"{TODOS}/{spell(todo['id'])}", headers=user), 400, "INVALID_TODO_ID"
        )


@pytest.mark.parametrize("method", ["GET", "PATCH", "DELETE"])
@pytest.mark.parametrize(
    ("todo_id", "status", "error_code"),
    [("not-a-uuid", 400, "INVALID_TODO_ID"), (SOME_ID, 404, "NOT_FOUND")],
)
def test_bad_or_unknown_todo_id_is_rejected(client, user, method, todo_id, status, error_code):
    response = client.request(method, f"{TODOS}/{todo_id}", json={}, headers=user)
    assert_problem(response, status, error_code)


def send(client, method, url, user, content, content_type="application/json"):
    headers = {**user, "Content-Type": content_type}
    return client.request(method, url, content=content, headers=headers)


def existing_todo_and_url(client, user, method):
    todo = create(client, user)
    return todo, TODOS if method == "POST" else f"{TODOS}/{todo['id']}"


def padded_body(size):
    body = json.dumps({"title": "x", "description": "d"}).encode()
    return body[:-1] + b" " * (size - len(body)) + b"}"


WRITES = pytest.mark.parametrize("method", ["POST", "PATCH"])
MALFORMED = [b"{", b'{"title": "x",}', b"[]", b'["title"]', b'"title"', b"null", b"42", b""]


@WRITES
@pytest.mark.parametrize("content", MALFORMED)
def test_malformed_body_changes_nothing(client, user, method, content):
    todo, url = existing_todo_and_url(client, user, method)
    assert_problem(send(client, method, url, user, content), 400, "MALFORMED_BODY")
    assert items(client, user) == [todo]


BAD_VALUES = {
    "title": ["", "   ", " \t ", "x" * 256, 5, None, ["x"], "a\u0000b"],
    "description": ["x" * 2001, 5, "a\u0000b"],
    "is_completed": ["yes", 1, None],
    **{name: [SOME_ID] for name in ("id", "user_id", "created_at", "updated_at", "foo")},
}
INVALID = [(field, value) for field, values in BAD_VALUES.items() for value in values]


@WRITES
@pytest.mark.parametrize(("field", "value"), INVALID, ids=[f"{f}={v!r:.20}" for f, v in INVALID])
def test_invalid_field_changes_nothing(client, user, method, field, value):
    todo, url = existing_todo_and_url(client, user, method)
    response = client.request(method, url, json={"title": "x", field: value}, headers=user)
    assert_invalid(response, field)
    assert items(client, user) == [todo]


def test_create_without_title_is_rejected(client, user):
    assert_invalid(client.post(TODOS, json={"description": "d"}, headers=user), "title")
    assert items(client, user) == []


def test_rejected_create_does_not_create_the_user(client, user, sql):
    client.post(TODOS, json={"title": ""}, headers=user)
    client.get(TODOS, headers=user)
    assert sql.execute("SELECT 1 FROM users WHERE id = %s", (id_of(user),)).fetchall() == []


def test_longest_allowed_title_and_description_are_accepted(client, user):
    todo = create(client, user, title="t" * 255, description="d" * 2000)
    assert (len(todo["title"]), len(todo["description"])) == (255, 2000)


def test_body_of_exactly_64_kib_is_accepted(client, user):
    assert send(client, "POST", TODOS, user, padded_body(MAX_BODY)).status_code == 201


@WRITES
@pytest.mark.parametrize(
    ("content", "content_type", "status", "error_code"),
    [
        (padded_body(MAX_BODY + 1), "application/json", 413, "PAYLOAD_TOO_LARGE"),
        (b'{"title": "new"}', "text/plain", 415, "UNSUPPORTED_MEDIA_TYPE"),
    ],
    ids=["too large", "not json"],
)
def test_unacceptable_body_changes_nothing(
    client, user, method, content, content_type, status, error_code
):
    todo, url = existing_todo_and_url(client, user, method)
    assert_problem(send(client, method, url, user, content, content_type), status, error_code)
    assert items(client, user) == [todo]


@pytest.mark.parametrize("url", ["/nowhere", "/api/v1/todo", f"{TODOS}/{SOME_ID}/extra"])
def test_unknown_route_is_a_404_problem(client, user, url):
    assert_problem(client.get(url, headers=user), 404, "NOT_FOUND")


@pytest.mark.parametrize("method", ["GET", "POST"])
@pytest.mark.parametrize("url", [f"{TODOS}/", f"{TODOS}/{SOME_ID}/", "/healthz/"])
def test_trailing_slash_is_a_404_not_a_redirect_to_the_host_header(client, user, method, url):
    headers = {**user, "Host": "evil.example"}
    response = client.request(method, url, json={"title": "x"}, headers=headers)
    assert_problem(response, 404, "NOT_FOUND")
    assert "location" not in response.headers
    assert items(client, user) == []


def test_many_invalid_fields_get_a_bounded_answer(client, user):
    body = {"title": "x", **{f"{n:x}": 0 for n in range(7000)}}  # about 63 KB
    content = json.dumps(body, separators=(",", ":"))
    response = send(client, "POST", TODOS, user, content)
    problem = assert_problem(response, 422, "VALIDATION_ERROR")
    assert len(problem["field_errors"]) == 20
    assert problem["detail"].startswith("7000 fields are invalid")
    assert len(response.content) < 4096


@pytest.mark.parametrize(
    ("method", "url"), [("PUT", TODOS), ("DELETE", TODOS), ("POST", "/healthz")]
)
def test_wrong_method_is_a_405_problem(client, user, method, url):
    response = client.request(method, url, headers=user)
    assert_problem(response, 405, "METHOD_NOT_ALLOWED")
    assert response.headers["allow"]


def test_chunked_body_over_64_kib_is_refused(client, user):
    chunks = iter([b'{"title": "', b"x" * MAX_BODY, b'"}'])  # no Content-Length: chunked
    response = client.post(
        TODOS, content=chunks, headers={**user, "Content-Type": "application/json"}
    )
    assert_problem(response, 413, "PAYLOAD_TOO_LARGE")
    assert items(client, user) == []


def test_an_unexpected_error_is_a_500_problem_that_says_nothing_inside(database_url, caplog):
    app = create_app(app_settings(database_url))

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("SELECT secret FROM psycopg internals")

    with TestClient(app, raise_server_exceptions=False) as client:
        assert_problem(client.get("/boom"), 500, "INTERNAL_ERROR")
    assert "unexpected RuntimeError" in caplog.text  # the operator still sees it


def test_create_returns_the_new_todo_with_defaults(client, user):
    response = client.post(TODOS, json={"title": "Buy milk"}, headers=user)
    assert response.status_code == 201
    todo = response.json()
    assert response.headers["location"] == f"{TODOS}/{todo['id']}"
    assert uuid.UUID(todo["id"])
    assert todo["user_id"] == id_of(user)
    assert (todo["title"], todo["description"], todo["is_completed"]) == ("Buy milk", None, False)
    assert parse_time(todo["created_at"]) == parse_time(todo["updated_at"])


@pytest.mark.parametrize(
    "fields",
    [
        {"title": "Read", "description": "Chapter 2", "is_completed": True},
        {"description": ""},
        {"description": None},
    ],
)
def test_create_stores_the_fields_sent(client, user, fields):
    todo = create(client, user, **fields)
    assert fields.items() <= todo.items()
    assert fetch(client, user, todo["id"]) == todo


@pytest.mark.parametrize(
    "change",
    [{"title": "New"}, {"description": "New text"}, {"description": None}, {"is_completed": True}],
)
def test_patch_changes_only_the_fields_sent(client, user, change):
    todo = create(client, user, description="Old text")
    response = client.patch(f"{TODOS}/{todo['id']}", json=change, headers=user)
    assert response.status_code == 200
    patched = response.json()
    assert {**patched, "updated_at": None} == {**todo, **change, "updated_at": None}
    assert fetch(client, user, todo["id"]) == patched


def test_patch_with_empty_object_changes_nothing(client, user):
    todo = create(client, user)
    response = client.patch(f"{TODOS}/{todo['id']}", json={}, headers=user)
    assert response.status_code == 200
    assert response.json() == todo
    assert fetch(client, user, todo["id"]) == todo


def test_patch_moves_updated_at_forward_but_not_created_at(client, user):
    todo = create(client, user)
    patched = client.patch(f"{TODOS}/{todo['id']}", json={"title": "New"}, headers=user).json()
    assert patched["created_at"] == todo["created_at"]
    assert parse_time(patched["updated_at"]) > parse_time(todo["updated_at"])


def test_deleted_todo_is_gone(client, user):
    todo = create(client, user)
    url = f"{TODOS}/{todo['id']}"
    response = client.delete(url, headers=user)
    assert (response.status_code, response.content) == (204, b"")
    assert_problem(client.get(url, headers=user), 404, "NOT_FOUND")
    assert_problem(client.patch(url, json={"title": "x"}, headers=user), 404, "NOT_FOUND")
    assert_problem(client.delete(url, headers=user), 404, "NOT_FOUND")
    assert items(client, user) == []


def ids(todos):
    return [todo["id"] for todo in todos]


def insert_todos(sql, user, count):
    sql.execute("INSERT INTO users (id) VALUES (%s)", (id_of(user),))
    sql.execute(
        "INSERT INTO todos (user_id, title, created_at)"
        " SELECT %s, 'todo ' || n, now() - n * interval '1 second'"
        " FROM generate_series(1, %s) AS n",
        (id_of(user), count),
    )


def test_list_without_limit_is_one_page_of_100(client, user, sql):
    insert_todos(sql, user, 101)
    first = client.get(TODOS, headers=user).json()
    assert first["count"] == len(first["items"]) == 100
    assert [todo["title"] for todo in first["items"]] == [f"todo {n}" for n in range(1, 101)]
    rest = client.get(TODOS, params={"cursor": first["next_cursor"]}, headers=user).json()
    assert ([todo["title"] for todo in rest["items"]], rest["next_cursor"]) == (["todo 101"], None)


def test_limit_is_at_most_1000(client, user, sql):
    insert_todos(sql, user, 1001)
    page = client.get(TODOS, params={"limit": "1000"}, headers=user).json()
    assert page["count"] == 1000 and page["next_cursor"] is not None


def test_list_returns_all_todos_newest_first(client, user):
    created = [create(client, user, title=f"todo {n}") for n in range(3)]
    body = client.get(TODOS, headers=user).json()
    assert body["items"] == created[::-1]
    assert body["count"] == 3
    assert body["next_cursor"] is None


def create_with_same_created_at(client, user, sql, count):
    created = [create(client, user, title=f"todo {n}") for n in range(count)]
    sql.execute(
        "UPDATE todos SET created_at = '2024-01-01T00:00:00Z' WHERE user_id = %s",
        (id_of(user),),
    )
    return sorted(ids(created), key=uuid.UUID, reverse=True)


def test_list_breaks_created_at_ties_by_id_descending(client, user, sql):
    expected = create_with_same_created_at(client, user, sql, 5)
    assert ids(items(client, user)) == expected


@pytest.mark.parametrize("completed", [True, False])
def test_list_filters_by_completed(client, user, completed):
    todos = [create(client, user, is_completed=flag) for flag in (True, False, True, False)]
    expected = [todo for todo in reversed(todos) if todo["is_completed"] is completed]
    body = client.get(TODOS, params={"completed": str(completed).lower()}, headers=user).json()
    assert body["items"] == expected
    assert body["count"] == 2


def walk_pages(client, user, limit, **params):
    pages, cursor = [], None
    while True:
        query = {"limit": limit, **params, **({"cursor": cursor} if cursor else {})}
        body = client.get(TODOS, params=query, headers=user).json()
        assert body["count"] == len(body["items"]) <= limit
        pages.append(body["items"])
        cursor = body["next_cursor"]
        if cursor is None:
            return pages
        assert len(pages) <= 20, "pagination does not end"


@pytest.mark.parametrize(("limit", "sizes"), [(1, [1] * 7), (3, [3, 3, 1]), (7, [7]), (1000, [7])])
def test_pagination_walks_every_todo_once(client, user, limit, sizes):
    for n in range(7):
        create(client, user, title=f"todo {n}")
    pages = walk_pages(client, user, limit)
    assert [len(page) for page in pages] == sizes
    assert [todo for page in pages for todo in page] == items(client, user)


def test_pagination_across_equal_created_at_has_no_gaps_or_duplicates(client, user, sql):
    expected = create_with_same_created_at(client, user, sql, 5)
    pages = walk_pages(client, user, 2)
    assert [todo["id"] for page in pages for todo in page] == expected


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": 1001}, "limit"),
        ({"limit": -1}, "limit"),
        ({"limit": "abc"}, "limit"),
        ({"limit": 10, "cursor": "garbage"}, "cursor"),
        ({"limit": 10, "cursor": "!!!"}, "cursor"),
        # Well formed, but without a UTC offset: not one this API issued.
        (
            {
                "cursor": base64.urlsafe_b64encode(
                    f"2024-01-01T00:00:00|{SOME_ID}".encode()
                ).decode()
            },
            "cursor",
        ),
        ({"completed": "maybe"}, "completed"),
        # Only the two spellings of docs/api.md, and only plain ASCII decimal digits.
        *[({"completed": word}, "completed") for word in ("yes", "on", "1", "t", "y", "True")],
        *[({"limit": text}, "limit") for text in ("1_0", "+10", " 10", "10.0", "", "\uff11\uff10")],
    ],
)
def test_list_with_invalid_parameter_is_rejected(client, user, params, field):
    assert_invalid(client.get(TODOS, params=params, headers=user), field)


@pytest.mark.parametrize(("app", "headers", "status", "error_code"), BAD_CALLERS)
def test_the_caller_is_checked_before_the_parameters(request, app, headers, status, error_code):
    params = {"cursor": "garbage", "limit": "0", "completed": "maybe"}
    response = request.getfixturevalue(app).get(TODOS, params=params, headers=headers)
    assert_caller_refused(response, status, error_code)


@pytest.mark.parametrize(
    ("app", "scheme"),
    [
        ("client", {"type": "http", "scheme": "bearer"}),
        ("header_client", {"type": "apiKey", "in": "header", "name": "X-User-ID"}),
    ],
)
def test_openapi_says_how_a_caller_identifies(request, app, scheme):
    spec = request.getfixturevalue(app).get("/openapi.json").json()
    [(name, declared)] = spec["components"]["securitySchemes"].items()
    assert scheme.items() <= declared.items()
    for path, methods in spec["paths"].items():
        for operation in methods.values():
            expected = [{name: []}] if path.startswith("/api/v1/") else None
            assert operation.get("security") == expected, path


def test_openapi_documents_problem_responses_for_every_operation(client):
    spec = client.get("/openapi.json").json()
    assert "Problem" in spec["components"]["schemas"]
    operations = [
        (path, method, operation)
        for path, methods in spec["paths"].items()
        if path.startswith("/api/v1/")
        for method, operation in methods.items()
    ]
    assert len(operations) == 5
    for path, method, operation in operations:
        errors = {code: r for code, r in operation["responses"].items() if int(code) >= 400}
        expected = {"400", "401", "422", "500", "503"} | ({"404"} if "{todo_id}" in path else set())
        assert expected <= errors.keys(), (method, path)
        for code, response in errors.items():
            content = response["content"]
            assert content.keys() == {PROBLEM_JSON}, (method, path, code)
            assert content[PROBLEM_JSON]["schema"] == {"$ref": "#/components/schemas/Problem"}
            assert content[PROBLEM_JSON]["example"]["status"] == int(code)


def test_docs_page_is_served(client):
    assert client.get("/docs").status_code == 200


@pytest.mark.parametrize(
    ("path", "body"), [("/healthz", {"status": "ok"}), ("/readyz", {"status": "ready"})]
)
def test_health_endpoints_answer_with_the_migrated_database(client, path, body):
    response = client.get(path)
    assert (response.status_code, response.json()) == (200, body)
