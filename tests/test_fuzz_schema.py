"""Schema fuzzing: schemathesis reads /openapi.json from the running service (uvicorn on a
real socket), generates requests from it, and checks every answer against the document: no
5xx, only documented status codes, content types, headers and bodies, schema-valid requests
accepted and schema-invalid ones refused.

This module also holds what the other fuzz and model tests share: the hypothesis budget
(bounded by default, `FUZZ_PROFILE=long` for a longer hunt) and the live server."""

import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import jsonschema_rs  # the validator schemathesis itself uses
import jwt
import pytest
import requests
import schemathesis
import uvicorn
from conftest import app_settings, new_user
from cryptography.hazmat.primitives.asymmetric import ed25519
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from issuer import ISSUER
from schemathesis import APIOperation, Case, GenerationMode
from schemathesis.checks import positive_data_acceptance
from schemathesis.core.parameters import ParameterLocation
from schemathesis.errors import FailureGroup

from api.main import create_app

settings.register_profile(
    "fuzz-bounded",
    max_examples=60,
    stateful_step_count=30,
    deadline=None,  # real HTTP and a real database: no timing assertions
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    print_blob=True,
)
settings.register_profile("fuzz-long", settings.get_profile("fuzz-bounded"), max_examples=1000)
FUZZ = settings.get_profile(f"fuzz-{os.environ.get('FUZZ_PROFILE', 'bounded')}")
# For tests whose every example costs many requests (a state machine run is
# stateful_step_count steps), or where more examples would only repeat themselves.
FEWER = settings(FUZZ, max_examples=FUZZ.max_examples // 4)

TODOS = "/api/v1/todos"


def _serve(server: uvicorn.Server, sock: socket.socket) -> None:
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()  # a server that failed to start refuses connections instead of hanging them


@contextmanager
def serving(database_url: str, **settings: object) -> Iterator[str]:
    """The service under uvicorn on 127.0.0.1, at a port the OS chose; yields its base URL.
    The socket listens before the server starts, so early requests wait in the backlog.
    It takes bearer tokens from the test identity provider unless `settings` say otherwise."""
    # IPPROTO_TCP spelled out: the asyncio loop sets TCP_NODELAY only on sockets that say so;
    # without it every response waits ~40 ms for a delayed ACK.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    port = sock.getsockname()[1]
    app = create_app(app_settings(database_url, **settings))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=_serve, args=(server, sock))
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join()


@pytest.fixture(scope="module")
def base_url(database_url: str) -> Iterator[str]:
    with serving(database_url) as url:
        yield url


@pytest.fixture(scope="module")
def api_schema(base_url: str) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"{base_url}/openapi.json")


@pytest.fixture(scope="module")
def session() -> Iterator[requests.Session]:
    with requests.Session() as http:
        yield http


# Characters a header value may hold (RFC 9110: VCHAR, obs-text, inner spaces). Others, DEL
# or CR for instance, make an invalid HTTP message, which uvicorn refuses before the app.
HEADER_TEXT = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=64
)
FORGER = ed25519.Ed25519PrivateKey.generate()  # not the provider's key


def forged(sub: str) -> str:
    """A token that names the provider's key but is signed with another."""
    return jwt.encode(ISSUER.claims(sub), FORGER, algorithm="EdDSA", headers={"kid": ISSUER.kid()})


SUBJECTS = st.uuids().map(str)
# The caller's headers: a token for a new user, none, or credentials that name nobody.
CALLERS = {
    "valid": SUBJECTS.map(ISSUER.headers),
    "missing": st.just({}),
    "invalid": st.one_of(
        HEADER_TEXT,  # no "Bearer" scheme, mostly
        HEADER_TEXT.map("Bearer {}".format),  # not a JWT
        SUBJECTS.map(lambda sub: "Bearer " + ISSUER.token(sub, ttl_s=-3600)),  # expired
        SUBJECTS.map(lambda sub: "Bearer " + forged(sub)),
    ).map(lambda value: {"Authorization": value.strip()}),
}


def call_and_validate(case: Case, session: requests.Session, caller: dict[str, str]) -> None:
    """Send `case` with the caller's headers instead of the credentials schemathesis generated
    from the document's security scheme, unless it left them out or broke them on purpose
    (the only header the document declares is Authorization). The caller's are also passed
    as explicit headers: then on a success schemathesis' ignored_auth check sends the request
    again without credentials and with made-up ones, which must be refused."""
    if case.meta is not None and case.meta.is_negative_at(ParameterLocation.HEADER):
        caller = {}
    else:
        headers = {
            name: value
            for name, value in (case.headers or {}).items()
            if name.lower() != "authorization"
        }
        case.headers = {**headers, **caller}
    # A cursor is opaque: only one the API issued is valid, which no schema can say, so a
    # made-up one is refused with 422 even though it fits the documented string.
    # Likewise an ETag in If-Match is only valid while the todo has that version (412 after),
    # and an Idempotency-Key names one request (422 with another body; hypothesis' examples
    # often share a user, the UUID 0, and a short key).
    stateful = {"if-match", "idempotency-key"} & {name.lower() for name in case.headers or {}}
    excluded = [positive_data_acceptance] if "cursor" in case.query or stateful else []
    case.call_and_validate(session=session, headers=caller or None, excluded_checks=excluded)


def aim_at_own_todo(
    case: Case, caller: dict[str, str], session: requests.Session, base_url: str
) -> None:
    """Point the case at a todo the caller owns, so GET, PATCH and DELETE get past 404."""
    created = session.post(base_url + TODOS, json={"title": "fuzz target"}, headers=caller)
    assert created.status_code == 201, created.text
    case.path_parameters = {**case.path_parameters, "todo_id": created.json()["id"]}


def takes_input(operation: APIOperation) -> bool:
    """Whether there is anything to make invalid: /healthz, /readyz and /metrics take only
    X-Request-ID, which no value makes invalid (one we do not keep is replaced)."""
    parameters = [p for p in operation.iter_parameters() if p.name != "X-Request-ID"]
    return bool(parameters) or bool(operation.body)


@pytest.mark.parametrize("mode", list(GenerationMode))
@pytest.mark.parametrize("caller", list(CALLERS))
def test_fuzzed_requests_get_documented_answers(api_schema, base_url, session, caller, mode):
    # Each operation gets its own budget, so that no operation's bugs hide behind the others'.
    # Without a valid caller every request stops at the token check: a smaller one will do.
    budget = FUZZ if caller == "valid" else FEWER
    for result in api_schema.get_all_operations():
        operation = result.ok()
        if not (mode.is_positive or takes_input(operation)):
            continue

        @budget
        @given(
            case=operation.as_strategy(generation_mode=mode),
            caller_headers=CALLERS[caller],
            own_todo=st.booleans() if caller == "valid" else st.just(False),
        )
        def check(case: Case, caller_headers: dict[str, str], own_todo: bool) -> None:
            if own_todo and "todo_id" in case.path_parameters:
                aim_at_own_todo(case, caller_headers, session, base_url)
            call_and_validate(case, session, caller_headers)

        check()


def coverage_cases(schema: schemathesis.BaseSchema) -> Iterator[Case]:
    for result in schema.get_all_operations():
        operation = result.ok()
        yield from schema.iter_coverage_cases(
            operation,
            generation_modes=list(GenerationMode),
            generation_config=schema.config.generation_for(operation=operation),
        )


def test_coverage_cases_get_documented_answers(api_schema, session):
    """Schemathesis' deterministic cases: boundary values, each required part missing or of
    the wrong type, undocumented methods. All run; every failure is reported. Each is sent by
    a valid caller (schemathesis' own token is empty), so that it gets past the token check."""
    failures = []
    for case in coverage_cases(api_schema):
        try:
            call_and_validate(case, session, new_user())
        except FailureGroup as failure:
            failures.append(str(failure))
    assert not failures, "\n".join(failures)


# Where the document and the validators could part ways: whitespace that str.strip() removes
# (regex dialects disagree on some of it), U+FEFF (which it keeps), NUL, and letters.
EDGE_TEXT = st.text(st.sampled_from(" \t\n\r\x0b\x1c\x85\xa0\u2028\u3000\ufeff\x00ab"), max_size=4)


@FUZZ
@given(fields=st.fixed_dictionaries({"title": EDGE_TEXT}, optional={"description": EDGE_TEXT}))
def test_the_document_says_which_texts_are_accepted(api_schema, base_url, session, fields):
    documented = jsonschema_rs.validator_for(
        api_schema.raw_schema["components"]["schemas"]["TodoCreate"]
    )
    response = session.post(base_url + TODOS, json=fields, headers=new_user())
    assert response.status_code == (201 if documented.is_valid(fields) else 422), response.text
