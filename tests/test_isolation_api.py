"""Isolation as a caller sees it: another user's todos do not exist for you."""

import uuid

import pytest
from conftest import id_of, new_user
from test_api import TODOS, assert_invalid, assert_problem, create, fetch, items, walk_pages


@pytest.fixture
def owner():
    return new_user()


@pytest.fixture
def intruder():
    return new_user()


@pytest.fixture
def owners_todo(client, owner):
    return create(client, owner, title="Owner's secret", description="private")


def ids(todos):
    return {todo["id"] for todo in todos}


def planted(field, owner, owners_todo):
    return id_of(owner) if field == "user_id" else owners_todo["id"]


@pytest.mark.parametrize(
    ("method", "body"),
    [("GET", None), ("PATCH", {"title": "Taken over"}), ("PATCH", {}), ("DELETE", None)],
)
def test_someone_elses_todo_answers_like_a_missing_one(
    client, owner, intruder, owners_todo, method, body
):
    theirs = client.request(method, f"{TODOS}/{owners_todo['id']}", json=body, headers=intruder)
    missing = client.request(method, f"{TODOS}/{uuid.uuid4()}", json=body, headers=intruder)
    assert_problem(theirs, 404, "NOT_FOUND")
    assert theirs.json() == missing.json()
    assert fetch(client, owner, owners_todo["id"]) == owners_todo


def test_failed_attempts_leave_the_owners_todo_untouched(client, owner, intruder, owners_todo):
    url = f"{TODOS}/{owners_todo['id']}"
    client.patch(url, json={"is_completed": True, "description": None}, headers=intruder)
    client.delete(url, headers=intruder)
    assert items(client, owner) == [owners_todo]


@pytest.mark.parametrize("completed", [None, "true", "false"])
def test_someone_elses_todos_never_appear_in_a_list(client, owner, intruder, completed):
    mine = []
    for flag in (True, False, True, False):
        mine.append(create(client, intruder, is_completed=flag))
        create(client, owner, is_completed=flag)
    params = {} if completed is None else {"completed": completed}
    expected = {
        todo["id"] for todo in mine if completed in (None, str(todo["is_completed"]).lower())
    }
    paged = [todo for page in walk_pages(client, intruder, 1, **params) for todo in page]
    assert ids(items(client, intruder, **params)) == expected
    assert ids(paged) == expected
    assert len(paged) == len(expected)


@pytest.mark.parametrize("field", ["user_id", "id"])
def test_create_naming_another_owner_or_id_creates_nothing(
    client, sql, owner, intruder, owners_todo, field
):
    title = f"planted {uuid.uuid4()}"
    body = {"title": title, field: planted(field, owner, owners_todo)}
    assert_invalid(client.post(TODOS, json=body, headers=intruder), field)
    assert sql.execute("SELECT count(*) FROM todos WHERE title = %s", (title,)).fetchone() == (0,)
    assert items(client, intruder) == []
    assert items(client, owner) == [owners_todo]


@pytest.mark.parametrize("field", ["user_id", "id"])
def test_patch_cannot_give_a_todo_away_or_take_one_over(
    client, owner, intruder, owners_todo, field
):
    intruders_todo = create(client, intruder)
    body = {"title": "Moved", field: planted(field, owner, owners_todo)}
    response = client.patch(f"{TODOS}/{intruders_todo['id']}", json=body, headers=intruder)
    assert_invalid(response, field)
    assert items(client, intruder) == [intruders_todo]
    assert items(client, owner) == [owners_todo]
