"""Verified identity, attacked: a real JWKS provider (tests/issuer.py, shaped like Better
Auth's JWT plugin) in front of the app, and a real PostgreSQL behind it.

What this file proves:
- Better-Auth-shaped tokens are accepted: EdDSA (JWK without `alg`), ES256 and RS256 keys,
  iss = aud = the provider's base URL, UUID and non-UUID subjects (Better Auth, Clerk, Auth0).
- Every forged, tampered, misaddressed, expired or misplaced credential is refused with the
  documented status, error_code and WWW-Authenticate header, and writes nothing (checked
  with direct SQL): alg none, HS256 keyed with the provider's public key, unknown kid,
  another key under a known kid, keys offered in the token (jwk, jku), tampered payload,
  wrong iss/aud, missing claims, expired and not-yet-valid tokens beyond the leeway, two
  Authorization headers, a token in the query string, a non-Bearer scheme, X-User-ID alone,
  oversized headers.
- Mapping: a canonical UUID sub is the user id; any other sub is uuid5(iss|sub), recorded in
  users.issuer/subject; two subs never see each other's todos; one sub is always one user.
- The verified claims reach SQL as `request.jwt.claims`, in the request's transaction only:
  a RESTRICTIVE policy on emailVerified decides what a token may see and write.

Keys over time (rotation, outages, kid sprays), the other identity modes, settings
validation and the command line: tests/test_identity_keys.py.
"""

import base64
import hashlib
import hmac
import json
import secrets
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import jwt
import psycopg
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from fastapi.testclient import TestClient
from issuer import ISSUER
from jwt.algorithms import OKPAlgorithm
from test_api import TODOS, assert_problem

from api.identity import NAMESPACE, user_id_for
from api.main import create_app
from api.settings import Settings

LEEWAY_S = 30  # AUTH_LEEWAY_S's default
NO_IDENTITY = {
    "auth_jwks_url": None,
    "auth_issuer": None,
    "auth_audience": None,
    "auth_jwt_secret": None,
    "auth_trusted_header": None,
}
# A key the provider holds but never publishes: its kid is unknown to the service.
UNPUBLISHED = ISSUER.add_key("EdDSA", publish=False)


# --- building the app --------------------------------------------------------------------


def settings_for(url: str, **auth: Any) -> Settings:
    """Settings with exactly the identity given here (explicit None beats the environment)."""
    return Settings(neon_database_url=url, **{**NO_IDENTITY, **auth})


def bearer_settings(url: str, **overrides: Any) -> Settings:
    """Bearer mode trusting ISSUER, as ISSUER.env() configures the service."""
    trust = {
        "auth_jwks_url": ISSUER.jwks_url,
        "auth_issuer": ISSUER.url,
        "auth_audience": ISSUER.url,
        "auth_jwks_wait_s": 5,
    }
    return settings_for(url, **{**trust, **overrides})


@contextmanager
def fresh_client(settings: Settings, **options: Any) -> Iterator[TestClient]:
    """An app of its own (own key cache); the lifespan, key fetch included, runs inside."""
    with TestClient(create_app(settings), **options) as client:
        yield client


@pytest.fixture(scope="module")
def api(database_url: str) -> Iterator[TestClient]:
    with fresh_client(bearer_settings(database_url)) as client:
        yield client


# --- tokens ------------------------------------------------------------------------------


def new_sub() -> str:
    return str(uuid.uuid4())


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def segment(value: dict[str, Any]) -> str:
    return b64url(json.dumps(value, separators=(",", ":")).encode())


def hand_made(header: dict[str, Any], claims: dict[str, Any], sign: Callable | None = None) -> str:
    """A compact JWS built by hand; no signature when `sign` is None (as `alg: none` has)."""
    signing_input = f"{segment(header)}.{segment(claims)}"
    signature = b64url(sign(signing_input.encode())) if sign else ""
    return f"{signing_input}.{signature}"


def hs256_with(secret: bytes) -> Callable[[bytes], bytes]:
    return lambda data: hmac.new(secret, data, hashlib.sha256).digest()


def public_pem(kid: str) -> bytes:
    return (
        ISSUER.keys[kid][1]
        .public_key()
        .public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    )


def published_jwk(kid: str) -> dict[str, Any]:
    return next(jwk for jwk in ISSUER.jwks()["keys"] if jwk["kid"] == kid)


def signed(claims: dict[str, Any], *, kid: str, key: Any = None, **header: Any) -> str:
    """Signed with ISSUER's key for `kid`, or with `key` (EdDSA) under that kid."""
    alg, private = ISSUER.keys[kid] if key is None else ("EdDSA", key)
    return jwt.encode(claims, private, algorithm=alg, headers={"kid": kid, **header})


def without(claims: dict[str, Any], *names: str) -> dict[str, Any]:
    return {name: value for name, value in claims.items() if name not in names}


def unverified_claims(token: str) -> dict[str, Any]:
    return jwt.decode(token, options={"verify_signature": False})


# --- outcomes ----------------------------------------------------------------------------


def create(client: TestClient, headers: Any, title: str = "Buy milk") -> dict[str, Any]:
    response = client.post(TODOS, json={"title": title}, headers=headers)
    assert response.status_code == 201, response.text
    return response.json()


def listed(client: TestClient, headers: Any) -> list[dict[str, Any]]:
    response = client.get(TODOS, headers=headers)
    assert response.status_code == 200, response.text
    return response.json()["items"]


def assert_refused(response: Any, status: int, error_code: str) -> None:
    """The problem, and the WWW-Authenticate challenge RFC 6750 asks for."""
    assert_problem(response, status, error_code)
    challenge = response.headers.get("www-authenticate", "")
    assert challenge.startswith("Bearer"), response.headers
    if error_code == "MISSING_CREDENTIALS":
        assert "error=" not in challenge  # no credentials: nothing to call invalid
    else:
        assert 'error="invalid_token"' in challenge


def counts(sql: psycopg.Connection) -> tuple[int, int]:
    row = sql.execute("SELECT (SELECT count(*) FROM users), (SELECT count(*) FROM todos)")
    return row.fetchone()  # type: ignore[return-value]


def owner_of(sql: psycopg.Connection, todo_id: str) -> uuid.UUID:
    return sql.execute("SELECT user_id FROM todos WHERE id = %s", (todo_id,)).fetchone()[0]


def users_row(sql: psycopg.Connection, user_id: uuid.UUID) -> tuple[str | None, str | None]:
    row = sql.execute("SELECT issuer, subject FROM users WHERE id = %s", (user_id,)).fetchone()
    assert row is not None, f"no users row for {user_id}"
    return row


# === accepted: what Better Auth (and Clerk, Auth0) actually issue =========================

SUBJECTS = {
    "uuid": lambda: str(uuid.uuid4()),
    "better-auth": lambda: secrets.token_urlsafe(24)[:32],  # 32 characters, not a UUID
    "clerk": lambda: "user_2" + secrets.token_hex(13),
    "auth0": lambda: f"auth0|{secrets.randbelow(10**12)}",
}


def test_the_providers_ed25519_jwk_has_no_alg_as_better_auths() -> None:
    jwk = published_jwk(ISSUER.kid("EdDSA"))
    assert jwk["kty"] == "OKP" and "alg" not in jwk


@pytest.mark.parametrize("kind", SUBJECTS)
@pytest.mark.parametrize("alg", ["EdDSA", "ES256", "RS256"])
def test_better_auth_shaped_tokens_are_accepted(api, sql, alg, kind) -> None:
    sub = SUBJECTS[kind]()
    headers = bearer(ISSUER.token(sub, kid=ISSUER.kid(alg)))
    todo = create(api, headers, f"{alg} {kind}")
    assert listed(api, headers) == [todo]
    assert owner_of(sql, todo["id"]) == user_id_for(ISSUER.url, sub)


def test_an_audience_list_containing_ours_is_accepted(api) -> None:
    headers = ISSUER.headers(new_sub(), aud=["https://other.example", ISSUER.url])
    assert listed(api, headers) == []


def test_a_token_expired_by_less_than_the_leeway_is_accepted(api) -> None:
    headers = ISSUER.headers(new_sub(), ttl_s=-(LEEWAY_S - 20))  # expired 10 s ago
    create(api, headers)


def test_a_token_valid_within_the_leeway_of_its_nbf_is_accepted(api) -> None:
    headers = ISSUER.headers(new_sub(), nbf=int(time.time()) + LEEWAY_S - 20)
    create(api, headers)


# === attacks: each refused, and nothing written ===========================================


def forged_key() -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.generate()


def offering_its_own_key(claims: dict[str, Any]) -> str:
    """Signed by the attacker's key, whose public half the header offers as `jwk`."""
    key = forged_key()
    return signed(
        claims, kid="attacker", key=key, jwk=json.loads(OKPAlgorithm.to_jwk(key.public_key()))
    )


def hs256_keyed_with(public: bytes, kid: str, sub: str) -> str:
    """The key-confusion attack: HMAC keyed with bytes of the provider's public key."""
    return hand_made(
        {"alg": "HS256", "typ": "JWT", "kid": kid}, ISSUER.claims(sub), hs256_with(public)
    )


def claims_of(sub: str, /, *dropped: str, **changed: Any) -> dict[str, Any]:
    """ISSUER's claims for `sub`, without `dropped`, with `changed`."""
    return {**without(ISSUER.claims(sub), *dropped), **changed}


ED, RSA = ISSUER.kid("EdDSA"), ISSUER.kid("RS256")

# name -> the token a caller claiming `sub` sends: each is 401 INVALID_TOKEN.
INVALID_TOKENS: dict[str, Callable[[str], str]] = {
    "alg-none": lambda sub: hand_made({"alg": "none", "typ": "JWT", "kid": ED}, claims_of(sub)),
    "alg-None-no-kid": lambda sub: hand_made({"alg": "None"}, claims_of(sub)),
    "hs256-keyed-with-ed25519-public-pem": lambda sub: hs256_keyed_with(public_pem(ED), ED, sub),
    "hs256-keyed-with-rsa-public-pem": lambda sub: hs256_keyed_with(public_pem(RSA), RSA, sub),
    "hs256-keyed-with-the-published-jwk": lambda sub: hs256_keyed_with(
        json.dumps(published_jwk(RSA)).encode(), RSA, sub
    ),
    "unknown-kid": lambda sub: ISSUER.token(sub, kid=UNPUBLISHED),
    "another-key-under-a-known-kid": lambda sub: signed(claims_of(sub), kid=ED, key=forged_key()),
    "eddsa-under-the-rsa-keys-kid": lambda sub: signed(claims_of(sub), kid=RSA, key=forged_key()),
    "key-offered-in-the-jwk-header": lambda sub: offering_its_own_key(claims_of(sub)),
    "key-offered-by-a-jku-header": lambda sub: signed(
        claims_of(sub), kid="attacker-jku", key=forged_key(), jku="http://127.0.0.1:9/jwks"
    ),
    "wrong-iss": lambda sub: ISSUER.token(sub, iss="https://evil.example"),
    "no-iss": lambda sub: signed(claims_of(sub, "iss"), kid=ED),
    "wrong-aud": lambda sub: ISSUER.token(sub, aud="https://evil.example"),
    "no-aud": lambda sub: signed(claims_of(sub, "aud"), kid=ED),
    "no-exp": lambda sub: signed(claims_of(sub, "exp"), kid=ED),
    "no-sub": lambda sub: signed(claims_of(sub, "sub"), kid=ED),
    "empty-sub": lambda sub: ISSUER.token(""),
    "numeric-sub": lambda sub: signed(claims_of(sub, sub=123), kid=ED),
    "not-a-jwt": lambda sub: "not-a-jwt",
    "three-garbage-segments": lambda sub: "a.b.c",
    "header-not-an-object": lambda sub: hand_made([], claims_of(sub)),  # type: ignore[arg-type]
    "header-nested-2000-deep": lambda sub: (
        b64url(b"[" * 2000 + b"]" * 2000) + "." + segment(claims_of(sub)) + "."
    ),
    "kid-not-a-string": lambda sub: hand_made(
        {"alg": "EdDSA", "kid": {"$ne": ""}}, claims_of(sub), ISSUER.keys[ED][1].sign
    ),
    "truncated-signature": lambda sub: ISSUER.token(sub)[:-6],
}
# ... each 401 TOKEN_EXPIRED.
EXPIRED_TOKENS: dict[str, Callable[[str], str]] = {
    "expired-beyond-the-leeway": lambda sub: ISSUER.token(sub, ttl_s=-(LEEWAY_S + 60)),
    "nbf-beyond-the-leeway": lambda sub: ISSUER.token(sub, nbf=int(time.time()) + LEEWAY_S + 60),
}
# name -> the request's other arguments (headers, params) for a caller claiming `sub`.
MISPLACED: dict[str, tuple[Callable[[str], dict[str, Any]], str]] = {
    "two-authorization-headers": (
        lambda sub: {
            "headers": [
                ("Authorization", f"Bearer {ISSUER.token(sub)}"),
                ("Authorization", f"Bearer {ISSUER.token(sub, kid=RSA)}"),
            ]
        },
        "INVALID_TOKEN",
    ),
    "token-in-the-query-string": (
        lambda sub: {"params": {"access_token": ISSUER.token(sub)}},
        "MISSING_CREDENTIALS",
    ),
    "basic-scheme": (
        lambda sub: {"headers": {"Authorization": "Basic " + b64url(f"{sub}:pw".encode())}},
        "MISSING_CREDENTIALS",
    ),
    "valid-jwt-under-another-scheme": (
        lambda sub: {"headers": {"Authorization": f"Token {ISSUER.token(sub)}"}},
        "MISSING_CREDENTIALS",
    ),
    "non-ascii-bytes-in-the-token": (
        lambda sub: {"headers": {"Authorization": b"Bearer \xe9y\xff.\xe9.\xe9"}},
        "INVALID_TOKEN",
    ),
    "x-user-id-alone": (lambda sub: {"headers": {"X-User-ID": sub}}, "MISSING_CREDENTIALS"),
    "nothing": (lambda sub: {}, "MISSING_CREDENTIALS"),
}
ATTACKS: dict[str, tuple[Callable[[str], dict[str, Any]], str]] = {
    **{
        name: ((lambda sub, make=make: {"headers": bearer(make(sub))}), "INVALID_TOKEN")
        for name, make in INVALID_TOKENS.items()
    },
    **{
        name: ((lambda sub, make=make: {"headers": bearer(make(sub))}), "TOKEN_EXPIRED")
        for name, make in EXPIRED_TOKENS.items()
    },
    **MISPLACED,
}


@pytest.mark.parametrize("attack", ATTACKS)
def test_attack_is_refused_and_writes_nothing(api, sql, attack) -> None:
    build, error_code = ATTACKS[attack]
    sub = new_sub()
    before = counts(sql)
    assert_refused(api.post(TODOS, json={"title": "pwned"}, **build(sub)), 401, error_code)
    assert_refused(api.get(TODOS, **build(sub)), 401, error_code)
    assert counts(sql) == before
    assert sql.execute("SELECT 1 FROM users WHERE id = %s", (sub,)).fetchone() is None


def test_a_tampered_payload_is_refused_even_after_the_genuine_token_was_accepted(api, sql) -> None:
    owner, victim = new_sub(), new_sub()
    victims_todo = create(api, ISSUER.headers(victim), "victim's")
    genuine = ISSUER.token(owner)
    create(api, bearer(genuine))  # verified, and perhaps cached
    header, _, signature = genuine.split(".")
    tampered = f"{header}.{segment(ISSUER.claims(victim))}.{signature}"
    before = counts(sql)
    assert_refused(api.get(TODOS, headers=bearer(tampered)), 401, "INVALID_TOKEN")
    assert_refused(
        api.post(TODOS, json={"title": "planted"}, headers=bearer(tampered)), 401, "INVALID_TOKEN"
    )
    assert counts(sql) == before
    assert listed(api, ISSUER.headers(victim)) == [victims_todo]


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param(lambda: ISSUER.headers(new_sub(), padding="x" * 16 * 1024), id="16KiB-token"),
        pytest.param(lambda: {"X-Padding": "x" * 17 * 1024}, id="16KiB-other-header"),
    ],
)
def test_headers_over_16_kib_are_refused_before_identity(api, sql, headers) -> None:
    """A valid token padded past 16 KiB, or no credentials at all: 400, not 201 or 401."""
    before = counts(sql)
    assert_problem(
        api.post(TODOS, json={"title": "big"}, headers=headers()), 400, "HEADERS_TOO_LARGE"
    )
    assert counts(sql) == before


def test_the_algorithm_comes_from_configuration_not_the_token(database_url) -> None:
    """AUTH_ALGORITHMS=EdDSA: a genuine token from the provider's own ES256 key is refused."""
    with fresh_client(bearer_settings(database_url, auth_algorithms="EdDSA")) as client:
        sub = new_sub()
        es256 = ISSUER.headers(sub, kid=ISSUER.kid("ES256"))
        assert_refused(client.get(TODOS, headers=es256), 401, "INVALID_TOKEN")
        assert listed(client, ISSUER.headers(sub, kid=ISSUER.kid("EdDSA"))) == []


# === mapping: who a token is ==============================================================


def test_a_canonical_uuid_sub_is_the_user_id_and_other_spellings_are_not() -> None:
    uid = uuid.uuid4()
    issuer = ISSUER.url
    assert user_id_for(issuer, str(uid)) == uid
    spellings = [
        str(uid).upper(),
        uid.hex,
        "{" + str(uid) + "}",
        f"urn:uuid:{uid}",
    ]
    for spelling in spellings:
        assert user_id_for(issuer, spelling) == uuid.uuid5(NAMESPACE, f"{issuer}|{spelling}")
    # Different subjects are different users, however alike they look.
    assert len({user_id_for(issuer, sub) for sub in [str(uid), *spellings]}) == 5


def test_the_same_subject_at_two_issuers_is_two_users() -> None:
    assert user_id_for("https://a.example", "auth0|123") != user_id_for(
        "https://b.example", "auth0|123"
    )
    assert user_id_for("https://a.example", "auth0|123") == user_id_for(
        "https://a.example", "auth0|123"
    )


# Claims that JSON decoding lets through but PostgreSQL text or jsonb cannot hold.
UNSTORABLE_CLAIMS = {
    "a lone surrogate in sub": {"sub": "user-\ud800"},
    "a lone surrogate in another claim": {"name": "\udc00"},
    "NaN": {"score": float("nan")},
    "NUL": {"name": "a\x00b"},
}


@pytest.mark.parametrize("claims", UNSTORABLE_CLAIMS.values(), ids=UNSTORABLE_CLAIMS)
def test_claims_postgresql_cannot_hold_are_refused(api, sql, claims) -> None:
    """401, not a 500 (and not a policy reading request.jwt.claims failing)."""
    before = counts(sql)
    sub = claims.pop("sub", new_sub())
    response = api.post(TODOS, json={"title": "x"}, headers=ISSUER.headers(sub, **claims))
    assert_refused(response, 401, "INVALID_TOKEN")
    assert counts(sql) == before


def test_without_auth_audience_a_token_for_another_audience_is_refused(database_url) -> None:
    """An access token the provider issued for another API is not one for us."""
    with fresh_client(bearer_settings(database_url, auth_audience=None)) as client:
        elsewhere = ISSUER.headers(new_sub(), aud="https://billing.example.com")
        assert_refused(client.get(TODOS, headers=elsewhere), 401, "INVALID_TOKEN")
        for_nobody_in_particular = ISSUER.headers(new_sub(), aud=None)
        assert listed(client, for_nobody_in_particular) == []


def test_two_subjects_never_see_each_others_todos(api) -> None:
    alice, bob = ISSUER.headers("auth0|alice-" + new_sub()), ISSUER.headers(new_sub())
    alices = create(api, alice, "alice's")
    bobs = create(api, bob, "bob's")
    assert listed(api, alice) == [alices]
    assert listed(api, bob) == [bobs]
    for reader, theirs in ((alice, bobs), (bob, alices)):
        assert_problem(api.get(f"{TODOS}/{theirs['id']}", headers=reader), 404, "NOT_FOUND")
        patch = api.patch(f"{TODOS}/{theirs['id']}", json={"title": "mine"}, headers=reader)
        assert_problem(patch, 404, "NOT_FOUND")
        assert_problem(api.delete(f"{TODOS}/{theirs['id']}", headers=reader), 404, "NOT_FOUND")
    assert listed(api, alice) == [alices] and listed(api, bob) == [bobs]


def test_one_subject_is_one_user_whatever_the_token(api, sql) -> None:
    sub = "user_2" + secrets.token_hex(13)
    first = ISSUER.headers(sub, kid=ISSUER.kid("EdDSA"))
    todo = create(api, first)
    for alg in ("EdDSA", "ES256", "RS256"):
        other = ISSUER.headers(sub, kid=ISSUER.kid(alg), email="changed@example.com")
        assert other != first
        assert listed(api, other) == [todo]
    assert owner_of(sql, todo["id"]) == user_id_for(ISSUER.url, sub)


@pytest.mark.parametrize(
    "sub",
    [
        pytest.param(f"auth0|{secrets.randbelow(10**12)}", id="auth0"),
        pytest.param("user_2" + secrets.token_hex(13), id="clerk"),
        pytest.param(str(uuid.uuid4()).upper(), id="uppercase-uuid"),
    ],
)
def test_a_non_uuid_subjects_users_row_records_issuer_and_subject(api, sql, sub) -> None:
    todo = create(api, ISSUER.headers(sub))
    user_id = user_id_for(ISSUER.url, sub)
    assert user_id == uuid.uuid5(NAMESPACE, f"{ISSUER.url}|{sub}")
    assert owner_of(sql, todo["id"]) == user_id
    assert users_row(sql, user_id) == (ISSUER.url, sub)


def test_x_user_id_beside_a_token_names_nobody(api, sql) -> None:
    """In bearer mode the token decides; an X-User-ID naming someone else changes nothing."""
    sub, other = new_sub(), new_sub()
    todo = create(api, {**ISSUER.headers(sub), "X-User-ID": other})
    assert owner_of(sql, todo["id"]) == uuid.UUID(sub)
    assert sql.execute("SELECT 1 FROM users WHERE id = %s", (other,)).fetchone() is None


def test_a_uuid_subjects_users_row_has_that_id_and_records_it(api, sql) -> None:
    sub = new_sub()
    todo = create(api, ISSUER.headers(sub))
    assert owner_of(sql, todo["id"]) == uuid.UUID(sub)
    assert users_row(sql, uuid.UUID(sub)) == (ISSUER.url, sub)


# === request.jwt.claims in SQL ============================================================

# What request.jwt.claims is for: a RESTRICTIVE policy narrows the per-user one by a claim.
EMAIL_VERIFIED_POLICY = """
CREATE POLICY todos_email_verified ON todos AS RESTRICTIVE FOR ALL TO todo_app
USING (coalesce(
    (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'emailVerified')::boolean,
    false))
WITH CHECK (coalesce(
    (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'emailVerified')::boolean,
    false))
"""
# And a column that records the claims each insert ran with.
CLAIMS_COLUMN = (
    "ALTER TABLE todos ADD COLUMN claims jsonb"
    " DEFAULT nullif(current_setting('request.jwt.claims', true), '')::jsonb"
)


def test_request_jwt_claims_drive_a_restrictive_policy(make_database) -> None:
    url = make_database()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(EMAIL_VERIFIED_POLICY)
        conn.execute(CLAIMS_COLUMN)
    sub = "better-auth-" + secrets.token_hex(10)
    verified = ISSUER.token(sub, emailVerified=True)
    unverified = ISSUER.headers(sub, emailVerified=False)
    # One connection: any claims that outlived their transaction would show below.
    one_connection = {"db_pool_min_size": 1, "db_pool_max_size": 1}
    with (
        fresh_client(bearer_settings(url, **one_connection)) as client,
        psycopg.connect(url, autocommit=True) as sql,
    ):
        todo = create(client, bearer(verified))
        recorded = sql.execute("SELECT claims FROM todos WHERE id = %s", (todo["id"],)).fetchone()
        assert recorded[0] == unverified_claims(verified)  # the whole payload, as JSON
        assert listed(client, unverified) == []
        assert_problem(client.get(f"{TODOS}/{todo['id']}", headers=unverified), 404, "NOT_FOUND")
        before = counts(sql)
        refused = client.post(TODOS, json={"title": "unverified"}, headers=unverified)
        assert_problem(refused, 403, "FORBIDDEN")  # the policy's WITH CHECK
        assert counts(sql) == before
        assert listed(client, bearer(verified)) == [todo]


def test_only_a_policy_refusing_a_row_is_a_403(make_database) -> None:
    """Any other missing privilege is the service's fault, not the caller's: a 500."""
    url = make_database()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("REVOKE INSERT ON todos FROM todo_app")
    with fresh_client(bearer_settings(url)) as client:
        response = client.post(TODOS, json={"title": "x"}, headers=ISSUER.headers(new_sub()))
        assert_problem(response, 500, "INTERNAL_ERROR")
