"""Hostile headers and bodies, sent to the running service over a real socket (and, where
the HTTP server would step in first, to the app itself): each gets a clear 4xx and leaves
the database exactly as it was.

The service runs as in production, taking bearer tokens; what concerns the header that names
the caller is also sent to a second one behind a trusted gateway (X-User-ID)."""

import json
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.client import HTTPResponse
from urllib.parse import urlsplit

import httpx
import psycopg
import pytest
from conftest import TRUSTED_HEADER, id_of, new_header_user, new_user
from hypothesis import given
from hypothesis import strategies as st
from issuer import ISSUER
from test_api import PROBLEM_JSON, TODOS, assert_problem
from test_fuzz_schema import FUZZ, serving

BODY = b'{"title": "hostile"}'
JSON = {"Content-Type": "application/json"}
MAX_HEADERS = 16 * 1024


@dataclass
class Mode:
    """A running service in one identity mode, and the header its callers name themselves in."""

    base_url: str
    http: httpx.Client
    header: str
    scheme: str  # what precedes the credentials in that header
    refusal: tuple[int, str]  # the answer to credentials that name nobody

    def secret(self, user_id: str) -> str:
        return ISSUER.token(user_id) if self.scheme else user_id

    def credentials(self, user_id: str) -> str:
        return self.scheme + self.secret(user_id)

    def line(self, user_id: str, inject: bytes = b"") -> bytes:
        """The header line naming `user_id`, with `inject` just before the secret."""
        name, scheme, secret = self.header.encode(), self.scheme.encode(), self.secret(user_id)
        return b"%s: %s%s%s" % (name, scheme, inject, secret.encode())


@pytest.fixture(scope="module")
def bearer(database_url: str) -> Iterator[Mode]:
    with serving(database_url) as url, httpx.Client(base_url=url) as client:
        yield Mode(url, client, "Authorization", "Bearer ", (401, "INVALID_TOKEN"))


@pytest.fixture(scope="module")
def trusted_header(database_url: str) -> Iterator[Mode]:
    with serving(database_url, **TRUSTED_HEADER) as url, httpx.Client(base_url=url) as client:
        yield Mode(url, client, "X-User-ID", "", (400, "INVALID_USER_ID"))


@pytest.fixture(params=["bearer", "trusted_header"])
def mode(request: pytest.FixtureRequest) -> Mode:
    return request.getfixturevalue(request.param)


@pytest.fixture(scope="module")
def base_url(bearer: Mode) -> str:
    return bearer.base_url


@pytest.fixture(scope="module")
def http(bearer: Mode) -> httpx.Client:
    return bearer.http


@pytest.fixture
def todo(client, user) -> dict:
    """An existing todo of `user`, for PATCH to aim at."""
    response = client.post(TODOS, json={"title": "target"}, headers=user)
    assert response.status_code == 201, response.text
    return response.json()


@pytest.fixture(scope="module")
def db(database_url: str) -> Iterator[psycopg.Connection]:
    """The superuser, outside RLS: what is really stored."""
    with psycopg.connect(database_url, autocommit=True) as connection:
        yield connection


def snapshot(db: psycopg.Connection) -> tuple:
    """Every todo row and the number of users."""
    return db.execute(
        "SELECT (SELECT md5(string_agg(t::text, ',' ORDER BY id)) FROM todos t), count(*)"
        " FROM users"
    ).fetchone()


@contextmanager
def stores_nothing(db: psycopg.Connection) -> Iterator[None]:
    before = snapshot(db)
    yield
    assert snapshot(db) == before, "the database changed"


def raw(base_url: str, request: bytes) -> tuple[int, str, bytes]:
    """Send bytes no client library would send; (status, content type, body) of the answer."""
    address = urlsplit(base_url)
    with socket.create_connection((address.hostname, address.port)) as sock:
        sock.sendall(request)
        response = HTTPResponse(sock)
        response.begin()
        return response.status, response.getheader("content-type", ""), response.read()


def raw_post(base_url: str, header_lines: bytes, body: bytes = BODY) -> tuple[int, str, bytes]:
    head = b"POST /api/v1/todos HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
    head += b"Content-Type: application/json\r\nContent-Length: %d\r\n" % len(body)
    return raw(base_url, head + header_lines + b"\r\n" + body)


A, B = str(uuid.uuid4()), str(uuid.uuid4())
INJECTIONS = [
    "' OR '1'='1",
    f"{A}' OR '1'='1",
    f"{A}'; DROP TABLE todos; --",
    f"{A}', true); SELECT set_config('app.user_id', '{B}', false); --",
    "' UNION SELECT id, user_id, title FROM todos --",
    f"{A} OR user_id IS NOT NULL",
    f"{A},{B}",
    f"{A} {B}",
    "NULL",
    "*",
    "%",
    "",
    f"../{A}",
    f"{A}\\x00",
    A[:-1] + "g",
]


@pytest.mark.parametrize("method", ["POST", "GET"])
@pytest.mark.parametrize("injection", INJECTIONS)
def test_injection_in_the_caller_header_is_refused(mode, db, method, injection):
    headers = {**JSON, mode.header: (mode.scheme + injection).strip()}
    with stores_nothing(db):
        response = mode.http.request(method, TODOS, content=BODY, headers=headers)
    assert_problem(response, *mode.refusal)


def test_x_user_id_next_to_a_token_names_nobody(http, user):
    response = http.post(TODOS, content=BODY, headers={**JSON, **user, "X-User-ID": B})
    assert response.status_code == 201, response.text
    assert response.json()["user_id"] == id_of(user)


# Header values that may or may not spell a UUID: near misses and other spellings of one.
HEADER_TEXT = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=40)
SPELLINGS = [str, str.upper, lambda u: u.replace("-", ""), "{{{}}}".format, "urn:uuid:{}".format]
USER_IDS = st.one_of(
    HEADER_TEXT,
    st.builds(
        lambda before, u, after: f"{before}{u}{after}",
        HEADER_TEXT,
        st.uuids().map(str),
        HEADER_TEXT,
    ),
    st.builds(lambda spell, u: spell(u), st.sampled_from(SPELLINGS), st.uuids().map(str)),
)


@FUZZ
@given(user_id=USER_IDS)
def test_a_header_acts_for_the_uuid_it_spells_or_for_nobody(trusted_header, db, user_id):
    before = snapshot(db)
    response = trusted_header.http.post(TODOS, content=BODY, headers={**JSON, "X-User-ID": user_id})
    if response.status_code == 201:
        assert response.json()["user_id"] == str(uuid.UUID(user_id))
    else:
        assert_problem(response, 400, "INVALID_USER_ID")
        assert snapshot(db) == before


@FUZZ
@given(credentials=st.one_of(HEADER_TEXT, HEADER_TEXT.map("Bearer {}".format), USER_IDS))
def test_made_up_credentials_act_for_nobody(http, db, credentials):
    before = snapshot(db)
    response = http.post(
        TODOS, content=BODY, headers={**JSON, "Authorization": credentials.strip()}
    )
    error_code = response.json().get("error_code")
    assert error_code in ("MISSING_CREDENTIALS", "INVALID_TOKEN"), response.text
    assert_problem(response, 401, error_code)
    assert snapshot(db) == before


DUPLICATES = {
    "same": lambda name, a, b: [(name, a), (name, a)],
    "different": lambda name, a, b: [(name, a), (name, b)],
    "case": lambda name, a, b: [(name.lower(), a), (name.upper(), b)],
    "second-empty": lambda name, a, b: [(name, a), (name, "")],
}


@pytest.mark.parametrize("duplicate", DUPLICATES.values(), ids=DUPLICATES.keys())
@pytest.mark.parametrize("method", ["POST", "GET"])
def test_duplicated_caller_header_is_refused(mode, db, method, duplicate):
    a, b = mode.credentials(A), mode.credentials(B)
    with stores_nothing(db):
        response = mode.http.request(
            method, TODOS, content=BODY, headers=[*JSON.items(), *duplicate(mode.header, a, b)]
        )
    assert_problem(response, *mode.refusal)


HUGE_HEADERS = {
    "huge caller header": lambda user: {
        name: value + "0" * MAX_HEADERS for name, value in user.items()
    },
    "huge other header": lambda user: {**user, "X-Padding": "p" * MAX_HEADERS},
    "many headers": lambda user: {
        **user,
        **{f"X-H{n}": "v" * 10 for n in range(MAX_HEADERS // 10)},
    },
}


@pytest.mark.parametrize(
    ("app", "new_caller"), [("client", new_user), ("header_client", new_header_user)]
)
@pytest.mark.parametrize("headers", HUGE_HEADERS.values(), ids=HUGE_HEADERS.keys())
def test_huge_headers_are_refused_by_the_app(request, db, app, new_caller, headers):
    # In process: uvicorn may refuse a head this large first, depending on how it arrives.
    client = request.getfixturevalue(app)
    with stores_nothing(db):
        response = client.post(TODOS, content=BODY, headers={**JSON, **headers(new_caller())})
    assert_problem(response, 400, "HEADERS_TOO_LARGE")


# Sizes a loopback socket delivers whole: a head that arrives in pieces is refused by uvicorn
# itself (400, text/plain), and one it stops reading may be cut off with a reset.
@pytest.mark.parametrize("size", [MAX_HEADERS, 48 * 1024])
def test_huge_headers_are_refused_over_http(mode, db, size):
    line = b"%s\r\nX-Padding: %s\r\n" % (mode.line(str(uuid.uuid4())), b"p" * size)
    with stores_nothing(db):
        status, _, _ = raw_post(mode.base_url, line)
    assert status == 400


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize("method", ["POST", "PATCH"])
@pytest.mark.parametrize(
    ("content", "status"),
    [
        (nested(30_000).encode(), 400),
        (b'{"title": "x", "description": %s}' % nested(30_000).encode(), 400),
        (b'{"title": %s}' % nested(500).encode(), 422),
        (b'{"title": "x", "foo": %s}' % (b'{"a": ' * 500 + b"1" + b"}" * 500), 422),
    ],
    ids=["top-level", "in-a-field", "500-deep-title", "500-deep-unknown"],
)
def test_deeply_nested_json_is_refused(http, db, user, todo, method, content, status):
    url = TODOS if method == "POST" else f"{TODOS}/{todo['id']}"
    with stores_nothing(db):
        response = http.request(method, url, content=content, headers={**JSON, **user})
    assert_problem(response, status, "MALFORMED_BODY" if status == 400 else "VALIDATION_ERROR")


CONTENT_TYPES = [
    ("text/plain", BODY),
    ("text/json", BODY),
    ("application/x-www-form-urlencoded", b"title=hostile"),
    (
        "multipart/form-data; boundary=b",
        b'--b\r\nContent-Disposition: form-data; name="title"\r\n\r\nhostile\r\n--b--\r\n',
    ),
    ("application/xml", b"<todo><title>hostile</title></todo>"),
    ("application/jsonx", BODY),
    ("application/octet-stream", BODY),
    ("image/png", b"\x89PNG\r\n\x1a\n"),
]


@pytest.mark.parametrize("method", ["POST", "PATCH"])
@pytest.mark.parametrize(
    ("content_type", "content"), CONTENT_TYPES, ids=[ct for ct, _ in CONTENT_TYPES]
)
def test_wrong_content_type_is_refused(http, db, user, todo, method, content_type, content):
    url = TODOS if method == "POST" else f"{TODOS}/{todo['id']}"
    with stores_nothing(db):
        response = http.request(
            method, url, content=content, headers={**user, "Content-Type": content_type}
        )
    assert_problem(response, 415, "UNSUPPORTED_MEDIA_TYPE")


NOT_UTF8 = {
    "invalid bytes": b'{"title": "\xff\xfe\xfd"}',
    "latin-1": '{"title": "café"}'.encode("latin-1"),
    "utf-16": '{"title": "utf16"}'.encode("utf-16"),
    "utf-16-le without bom": '{"title": "utf16"}'.encode("utf-16-le"),
    "utf-32": '{"title": "utf32"}'.encode("utf-32"),
    "truncated sequence": '{"title": "€"}'.encode()[:-3] + b'"}',
}


@pytest.mark.parametrize("method", ["POST", "PATCH"])
@pytest.mark.parametrize("content", NOT_UTF8.values(), ids=NOT_UTF8.keys())
def test_body_that_is_not_utf8_is_refused(http, db, user, todo, method, content):
    url = TODOS if method == "POST" else f"{TODOS}/{todo['id']}"
    with stores_nothing(db):
        response = http.request(method, url, content=content, headers={**JSON, **user})
    assert_problem(response, 400, "MALFORMED_BODY")


def test_lone_surrogate_in_a_field_is_refused(http, db, user):
    with stores_nothing(db):
        response = http.post(TODOS, content=b'{"title": "\\ud800"}', headers={**JSON, **user})
    assert_problem(response, 422, "VALIDATION_ERROR")


def test_caller_header_with_bytes_that_are_not_utf8_is_refused(mode, db):
    line = mode.line(str(uuid.uuid4()), inject=b"\xff\xfe")
    with stores_nothing(db):
        status, content_type, body = raw_post(mode.base_url, line + b"\r\n")
    assert (status, content_type) == (mode.refusal[0], PROBLEM_JSON)
    assert json.loads(body)["error_code"] == mode.refusal[1]


@pytest.mark.parametrize("method", ["GET", "PATCH", "DELETE"])
def test_todo_id_with_bytes_that_are_not_utf8_is_refused(http, db, user, method):
    with stores_nothing(db):
        response = http.request(method, f"{TODOS}/%FF%FE", content=b"{}", headers={**JSON, **user})
    assert_problem(response, 400, "INVALID_TODO_ID")


def test_cursor_with_bytes_that_are_not_utf8_is_refused(http, user):
    response = http.get(f"{TODOS}?limit=1&cursor=%FF%FE", headers=user)
    assert_problem(response, 422, "VALIDATION_ERROR")


@pytest.mark.parametrize(
    "header_lines",
    [b"%s\x00\r\n", b"%s\r\n folded\r\n", b"%s\rX-Other: 1\r\n"],
    ids=["nul", "obsolete-fold", "bare-cr"],
)
def test_malformed_header_lines_are_refused(mode, db, header_lines):
    """By uvicorn (400, text/plain), or by the app as credentials that name nobody: never
    read as a valid caller header."""
    with stores_nothing(db):
        status, content_type, _ = raw_post(mode.base_url, header_lines % mode.line(A))
    assert status == 400 or (status, content_type) == (mode.refusal[0], PROBLEM_JSON)
