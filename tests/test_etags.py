"""ETags and conditional requests, against the real database.

Every answer carrying one todo names its version as a strong ETag, which changes with every
update (by the API or by plain SQL, even twice in one microsecond) and with nothing else.
If-Match on PATCH and DELETE is compared strongly and refuses anything stale, weak or
malformed with 412, changing nothing, even when eight writers race on one version.
If-None-Match on GET is compared weakly and answers 304. Someone else's todo, or a missing
one, is 404 whatever the conditions say. /openapi.json documents all of it."""

import re
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from conftest import new_user
from test_api import TODOS, assert_problem
from test_fuzz_schema import serving

STRONG_TAG = re.compile(r'"[1-9][0-9]*"')
WRITERS = 8


def version_of(tag):
    assert STRONG_TAG.fullmatch(tag), tag
    return int(tag.strip('"'))


def read(client, user, url):
    """The todo's body and ETag, as its owner reads it."""
    response = client.get(url, headers=user)
    assert response.status_code == 200, response.text
    return response.json(), response.headers["etag"]


def send(client, method, url, user, if_match, **kwargs):
    return client.request(method, url, headers={**user, "If-Match": if_match}, **kwargs)


def write(client, method, url, user, if_match):
    """A PATCH or DELETE of the todo at `url` under If-Match."""
    body = {"title": "Changed"} if method == "PATCH" else None
    return send(client, method, url, user, if_match, json=body)


SUCCESS = {"PATCH": 200, "DELETE": 204}


@pytest.fixture
def owner():
    return new_user()


@pytest.fixture
def todo(client, owner):
    """The URL of a todo updated once since creation, and its stale (first) ETag."""
    created = client.post(TODOS, json={"title": "Buy milk"}, headers=owner)
    assert created.status_code == 201, created.text
    url = f"{TODOS}/{created.json()['id']}"
    updated = client.patch(url, json={"title": "Buy oat milk"}, headers=owner)
    assert updated.status_code == 200, updated.text
    return url, created.headers["etag"]


def test_get_post_and_patch_answer_a_strong_etag(client, owner):
    created = client.post(TODOS, json={"title": "Buy milk"}, headers=owner)
    url = f"{TODOS}/{created.json()['id']}"
    got = client.get(url, headers=owner)
    patched = client.patch(url, json={"is_completed": True}, headers=owner)
    assert [r.status_code for r in (created, got, patched)] == [201, 200, 200]
    assert version_of(created.headers["etag"]) == version_of(got.headers["etag"]) == 1
    assert version_of(patched.headers["etag"]) == 2


def test_etag_stays_the_same_while_nothing_changes(client, owner, todo):
    url, _ = todo
    assert read(client, owner, url) == read(client, owner, url)


def test_every_patch_gives_a_new_etag(client, owner, todo):
    url, stale = todo
    tags = [stale, read(client, owner, url)[1]]
    for change in ({"title": "a"}, {"title": "a"}, {"is_completed": True}, {"description": None}):
        response = client.patch(url, json=change, headers=owner)
        assert response.status_code == 200, response.text
        assert read(client, owner, url) == (response.json(), response.headers["etag"])
        tags.append(response.headers["etag"])
    assert len(set(tags)) == len(tags)


def test_empty_patch_keeps_the_etag(client, owner, todo):
    url, _ = todo
    before = read(client, owner, url)
    response = client.patch(url, json={}, headers=owner)
    assert response.status_code == 200, response.text
    assert (response.json(), response.headers["etag"]) == before
    assert read(client, owner, url) == before


def test_two_updates_in_one_transaction_get_two_etags(client, owner, todo, sql):
    url, _ = todo
    body, before = read(client, owner, url)
    update = "UPDATE todos SET title = %s WHERE id = %s RETURNING version, updated_at"
    with sql.transaction():
        first_version, first_time = sql.execute(update, ("one", body["id"])).fetchone()
        second_version, second_time = sql.execute(update, ("two", body["id"])).fetchone()
    assert first_time == second_time
    assert len({version_of(before), first_version, second_version}) == 3
    after = read(client, owner, url)[1]
    assert after == f'"{second_version}"'
    assert after not in (before, f'"{first_version}"')
    response = write(client, "PATCH", url, owner, f'"{first_version}"')
    assert_problem(response, 412, "PRECONDITION_FAILED")


def test_an_update_by_plain_sql_changes_the_etag(client, owner, todo, sql):
    url, _ = todo
    body, before = read(client, owner, url)
    sql.execute("UPDATE todos SET is_completed = NOT is_completed WHERE id = %s", (body["id"],))
    after = read(client, owner, url)
    assert after[1] != before
    assert after[0]["is_completed"] != body["is_completed"]
    assert_problem(write(client, "PATCH", url, owner, before), 412, "PRECONDITION_FAILED")


@pytest.mark.parametrize("method", ["PATCH", "DELETE"])
def test_if_match_with_the_current_etag_succeeds(client, owner, todo, method):
    url, _ = todo
    _, current = read(client, owner, url)
    response = write(client, method, url, owner, current)
    assert response.status_code == SUCCESS[method], response.text


@pytest.mark.parametrize("method", ["PATCH", "DELETE"])
def test_stale_if_match_fails_and_changes_nothing(client, owner, todo, method):
    url, stale = todo
    before = read(client, owner, url)
    assert_problem(write(client, method, url, owner, stale), 412, "PRECONDITION_FAILED")
    assert read(client, owner, url) == before


@pytest.mark.parametrize("method", ["PATCH", "DELETE"])
def test_if_match_star_succeeds_on_an_existing_todo(client, owner, todo, method):
    url, _ = todo
    response = write(client, method, url, owner, "*")
    assert response.status_code == SUCCESS[method], response.text


@pytest.mark.parametrize("method", ["PATCH", "DELETE"])
@pytest.mark.parametrize("template", ['"99", {current}', '{stale},{current} , "7"'])
def test_if_match_list_with_the_current_etag_matches(client, owner, todo, method, template):
    url, stale = todo
    _, current = read(client, owner, url)
    response = write(client, method, url, owner, template.format(stale=stale, current=current))
    assert response.status_code == SUCCESS[method], response.text


# Of the current version `v`: none of these is a strong tag equal to "v".
NOT_OUR_TAGS = [
    "W/{tag}",
    "w/{tag}",
    "{v}",
    "",
    " ",
    ",",
    '"{v}',
    '{v}"',
    "'{v}'",
    '"0{v}"',
    '"+{v}"',
    '" {v}"',
    '"{v}.0"',
    '"{v}" "{v}"',
    "**",
    "*{tag}",
    '"99999999999999999999999"',
    "99999999999999999999999",
    '"9223372036854775808"',
    '"-{v}"',
]


@pytest.mark.parametrize("method", ["PATCH", "DELETE"])
@pytest.mark.parametrize("template", NOT_OUR_TAGS)
def test_if_match_without_the_strong_current_etag_fails(client, owner, todo, method, template):
    url, _ = todo
    before = read(client, owner, url)
    header = template.format(tag=before[1], v=version_of(before[1]))
    assert_problem(write(client, method, url, owner, header), 412, "PRECONDITION_FAILED")
    assert read(client, owner, url) == before


CONDITIONS = ["current", "*", "stale"]


def condition(name, current, stale):
    return {"current": current, "*": "*", "stale": stale}[name]


@pytest.mark.parametrize("method", ["PATCH", "DELETE"])
@pytest.mark.parametrize("name", CONDITIONS)
def test_someone_elses_or_a_missing_todo_is_404_whatever_if_match(
    client, owner, todo, method, name
):
    url, stale = todo
    before = read(client, owner, url)
    header = condition(name, before[1], stale)
    intruder = new_user()
    assert_problem(write(client, method, url, intruder, header), 404, "NOT_FOUND")
    missing = f"{TODOS}/{uuid.uuid4()}"
    assert_problem(write(client, method, missing, owner, header), 404, "NOT_FOUND")
    assert read(client, owner, url) == before


@pytest.mark.parametrize("name", CONDITIONS)
def test_someone_elses_or_a_missing_todo_is_404_whatever_if_none_match(client, owner, todo, name):
    url, stale = todo
    header = {"If-None-Match": condition(name, read(client, owner, url)[1], stale)}
    theirs = client.get(url, headers={**new_user(), **header})
    missing = client.get(f"{TODOS}/{uuid.uuid4()}", headers={**owner, **header})
    assert_problem(theirs, 404, "NOT_FOUND")
    assert_problem(missing, 404, "NOT_FOUND")


@pytest.mark.parametrize("template", ["{current}", "*", "W/{current}", '{stale}, "99", {current}'])
def test_if_none_match_naming_the_current_version_is_304(client, owner, todo, template):
    url, stale = todo
    _, current = read(client, owner, url)
    header = template.format(current=current, stale=stale)
    response = client.get(url, headers={**owner, "If-None-Match": header})
    assert response.status_code == 304
    assert response.headers["etag"] == current
    assert response.content == b""


@pytest.mark.parametrize("template", ["{stale}", "W/{stale}", '"99"', "{v}", ""])
def test_if_none_match_without_the_current_version_is_200(client, owner, todo, template):
    url, stale = todo
    body, current = read(client, owner, url)
    header = template.format(stale=stale, v=version_of(current))
    response = client.get(url, headers={**owner, "If-None-Match": header})
    assert response.status_code == 200, response.text
    assert (response.json(), response.headers["etag"]) == (body, current)


def race(base_url, method, url, user, if_match):
    """WRITERS requests sent together, each under the same If-Match; their status codes."""
    barrier = threading.Barrier(WRITERS)

    def one(index):
        barrier.wait()
        body = {"title": f"Writer {index}"} if method == "PATCH" else None
        return send(http, method, url, user, if_match, json=body).status_code

    with httpx.Client(base_url=base_url, timeout=30) as http, ThreadPoolExecutor(WRITERS) as pool:
        return sorted(pool.map(one, range(WRITERS)))


@pytest.fixture(scope="module")
def base_url(database_url):
    with serving(database_url) as url:
        yield url


def test_concurrent_patches_with_one_if_match_let_exactly_one_through(
    client, owner, todo, base_url, sql
):
    url, _ = todo
    for _ in range(3):
        body, tag = read(client, owner, url)
        assert race(base_url, "PATCH", url, owner, tag) == [200] + [412] * (WRITERS - 1)
        [(version,)] = sql.execute("SELECT version FROM todos WHERE id = %s", (body["id"],))
        assert version == version_of(tag) + 1


def test_concurrent_deletes_with_one_if_match_let_exactly_one_through(
    client, owner, todo, base_url
):
    url, _ = todo
    _, tag = read(client, owner, url)
    statuses = race(base_url, "DELETE", url, owner, tag)
    assert statuses.count(204) == 1
    assert set(statuses) <= {204, 404, 412}, statuses
    assert client.get(url, headers=owner).status_code == 404


@pytest.fixture(scope="module")
def todo_paths(client):
    paths = client.get("/openapi.json").json()["paths"]
    return paths[TODOS], paths[TODOS + "/{todo_id}"]


def header_parameters(operation):
    return {p["name"] for p in operation.get("parameters", []) if p["in"] == "header"}


def response_headers(operation, status):
    return set(operation["responses"][status].get("headers", {}))


def test_openapi_declares_the_condition_and_key_headers(todo_paths):
    collection, one = todo_paths
    assert "If-None-Match" in header_parameters(one["get"])
    assert "If-Match" in header_parameters(one["patch"])
    assert "If-Match" in header_parameters(one["delete"])
    assert "Idempotency-Key" in header_parameters(collection["post"])
    assert "Idempotency-Key" in header_parameters(one["patch"])


def test_openapi_documents_the_statuses(todo_paths):
    collection, one = todo_paths
    assert {"201", "409", "422"} <= collection["post"]["responses"].keys()
    assert {"200", "304", "404"} <= one["get"]["responses"].keys()
    assert {"200", "409", "412", "422"} <= one["patch"]["responses"].keys()
    assert {"204", "412"} <= one["delete"]["responses"].keys()


def test_openapi_documents_the_success_headers(todo_paths):
    collection, one = todo_paths
    assert {"ETag", "Location", "Idempotent-Replayed"} <= response_headers(
        collection["post"], "201"
    )
    assert "ETag" in response_headers(one["get"], "200")
    assert "ETag" in response_headers(one["get"], "304")
    assert {"ETag", "Idempotent-Replayed"} <= response_headers(one["patch"], "200")
