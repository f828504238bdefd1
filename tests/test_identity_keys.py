"""Identity beyond a single token: the provider's keys over time (each test with an app and
key cache of its own), the other identity modes, settings validation, and the command line.

What this file proves:
- A key published after start is fetched when its kid is first seen: its first token works.
- A key removed from the JWKS is refused after the next fetch, even for a token that was
  accepted (and perhaps cached) before.
- During a provider outage the last good keys keep working, and an unknown kid is 401, not 503.
- With no key ever fetched (provider down, or nothing listening), tokens get 503
  AUTH_UNAVAILABLE with Retry-After, start-up waits only AUTH_JWKS_WAIT_S, and the service
  recovers once the provider answers.
- 40 tokens with 40 unknown kids cost at most 3 JWKS fetches.
- A verified (cached) token stops working when it expires.
- Trusted-header mode ignores Authorization; HS256 secret mode accepts only its secret;
  incoherent settings are refused at construction, coherent ones accepted.
- CLI: `serve` fails closed without identity, naming the settings; `token` mints dev tokens
  (embedded database only); `psql --subject --issuer` acts as user_id_for(issuer, subject);
  a trusted-header server warns at start.
"""

import json
import re
import secrets
import socket
import subprocess
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, nullcontext
from pathlib import Path

import httpx
import jwt
import pytest
from cluster import (
    AUTH_VARS,
    TODO_API,
    Server,
    free_port,
    stop_process,
    todo_api,
    wait_until,
)
from issuer import ISSUER
from jwt.algorithms import OKPAlgorithm
from test_api import TODOS, assert_problem
from test_identity import (
    UNPUBLISHED,
    assert_refused,
    bearer,
    bearer_settings,
    counts,
    create,
    fresh_client,
    hand_made,
    listed,
    new_sub,
    owner_of,
    settings_for,
    unverified_claims,
    users_row,
)

from api import identity, jwks
from api.identity import user_id_for
from api.main import create_app

QUICK_REFETCH_S = 0.2


@pytest.fixture
def own_keys(monkeypatch):
    """ISSUER.published as it is now, restored after the test whatever it adds or removes."""
    monkeypatch.setattr(ISSUER, "published", list(ISSUER.published))


# === keys over time =======================================================================


def test_a_newly_published_key_is_fetched_on_first_sight(database_url, own_keys):
    with fresh_client(bearer_settings(database_url)) as client:
        rotated = ISSUER.add_key("EdDSA")
        before = ISSUER.fetches
        headers = bearer(ISSUER.token(new_sub(), kid=rotated))
        todo = create(client, headers)
        assert ISSUER.fetches == before + 1
        assert listed(client, headers) == [todo]
        assert ISSUER.fetches == before + 1  # known now: no more fetching


def test_a_removed_key_is_refused_after_the_next_fetch_even_if_cached(database_url, own_keys):
    retiring = ISSUER.add_key("ES256")
    sub = new_sub()
    token = ISSUER.token(sub, kid=retiring)
    with fresh_client(bearer_settings(database_url)) as client:
        todo = create(client, bearer(token))
        assert listed(client, bearer(token)) == [todo]  # verified twice: cached if ever
        ISSUER.published.remove(retiring)
        before = ISSUER.fetches
        stranger = client.get(TODOS, headers=bearer(ISSUER.token(sub, kid=UNPUBLISHED)))
        assert_refused(stranger, 401, "INVALID_TOKEN")
        assert ISSUER.fetches > before, "an unknown kid should have made it fetch the keys"
        assert_refused(client.get(TODOS, headers=bearer(token)), 401, "INVALID_TOKEN")
        # The keys still published still work, for the same user.
        assert listed(client, ISSUER.headers(sub)) == [todo]


def test_known_keys_keep_working_through_a_provider_outage(database_url, monkeypatch):
    sub = new_sub()
    with fresh_client(bearer_settings(database_url)) as client:
        todo = create(client, ISSUER.headers(sub))
        monkeypatch.setattr(jwks, "KID_REFETCH_S", 0)  # every unknown kid tries the provider
        with ISSUER.outage():
            before = ISSUER.fetches
            unknown = client.get(TODOS, headers=bearer(ISSUER.token(sub, kid=UNPUBLISHED)))
            assert_refused(unknown, 401, "INVALID_TOKEN")  # the keys exist: no 503
            assert ISSUER.fetches > before, "the unknown kid should have tried the provider"
            later = create(client, ISSUER.headers(sub, kid=ISSUER.kid("RS256")), "during outage")
            for alg in ("EdDSA", "ES256", "RS256"):
                headers = ISSUER.headers(sub, kid=ISSUER.kid(alg))
                assert listed(client, headers) == [later, todo]


@pytest.mark.parametrize("provider", ["down", "nothing-listening"])
def test_with_no_key_ever_fetched_tokens_get_503_auth_unavailable(database_url, provider):
    jwks_url = ISSUER.jwks_url if provider == "down" else f"http://127.0.0.1:{free_port()}/jwks"
    settings = bearer_settings(database_url, auth_jwks_url=jwks_url, auth_jwks_wait_s=0.5)
    with ISSUER.outage() if provider == "down" else nullcontext():
        started = time.monotonic()
        with fresh_client(settings) as client:
            assert time.monotonic() - started < 5, "start-up should wait AUTH_JWKS_WAIT_S only"
            for _ in range(2):
                response = client.get(TODOS, headers=ISSUER.headers(new_sub()))
                assert_problem(response, 503, "AUTH_UNAVAILABLE")
                assert int(response.headers["Retry-After"]) > 0


def test_a_service_started_during_an_outage_recovers_when_the_provider_answers(
    database_url, monkeypatch
):
    monkeypatch.setattr(jwks, "KID_REFETCH_S", QUICK_REFETCH_S)
    headers = ISSUER.headers(new_sub())
    with ExitStack() as stack:
        with ISSUER.outage():
            settings = bearer_settings(database_url, auth_jwks_wait_s=0.3)
            client = stack.enter_context(fresh_client(settings))
            assert_problem(client.get(TODOS, headers=headers), 503, "AUTH_UNAVAILABLE")
        wait_until(
            lambda: client.get(TODOS, headers=headers).status_code == 200,
            "the service to fetch the keys once the provider is back",
            timeout=5,
        )


def test_a_kid_spray_costs_at_most_three_fetches(database_url):
    forged = ISSUER.keys[UNPUBLISHED][1]
    before = ISSUER.fetches
    with fresh_client(bearer_settings(database_url)) as client:
        for number in range(40):
            token = jwt.encode(
                ISSUER.claims(new_sub()),
                forged,
                algorithm="EdDSA",
                headers={"kid": f"spray-{number}-{uuid.uuid4().hex[:6]}"},
            )
            assert_refused(client.get(TODOS, headers=bearer(token)), 401, "INVALID_TOKEN")
        assert ISSUER.fetches - before <= 3, f"{ISSUER.fetches - before} JWKS fetches"
        assert listed(client, ISSUER.headers(new_sub())) == []  # genuine callers unaffected


def test_keys_are_refreshed_in_the_background(database_url, own_keys, monkeypatch):
    """No request needs to meet an unknown kid for a withdrawn key to stop working."""
    monkeypatch.setattr(jwks, "REFRESH_S", QUICK_REFETCH_S)
    monkeypatch.setattr(jwks, "KID_REFETCH_S", 3600)  # no refetch on an unknown kid
    retiring = ISSUER.add_key("EdDSA")
    headers = ISSUER.headers(new_sub(), kid=retiring)
    with fresh_client(bearer_settings(database_url)) as client:
        assert listed(client, headers) == []
        ISSUER.published.remove(retiring)
        wait_until(
            lambda: client.get(TODOS, headers=headers).status_code == 401,
            "the background refresh to drop the withdrawn key",
            timeout=5,
        )


def test_only_keys_of_the_configured_algorithms_are_used(database_url, caplog):
    """The provider publishes EdDSA, ES256 and RS256 keys; none is for ES384."""
    settings = bearer_settings(database_url, auth_algorithms="ES384")
    with fresh_client(settings) as client:
        assert_refused(client.get(TODOS, headers=ISSUER.headers(new_sub())), 401, "INVALID_TOKEN")
    assert "has no key for ES384" in caplog.text


UNUSABLE_JWKS = {
    "a shared secret": {
        "kty": "oct",
        "kid": "oct-1",
        "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA",
    },
    "an encryption key": "enc",
    "a key without kid": None,
    "not a key": {"kty": "nonsense", "kid": "nonsense-1"},
}


@pytest.mark.parametrize("case", UNUSABLE_JWKS)
def test_keys_the_service_must_not_use_are_skipped(database_url, own_keys, monkeypatch, case):
    """Published beside the good keys, each is ignored: tokens naming it are refused."""
    alg, private = ISSUER.keys[UNPUBLISHED]
    public = json.loads(OKPAlgorithm.to_jwk(private.public_key()))
    jwk = UNUSABLE_JWKS[case]
    if jwk == "enc":
        jwk = {**public, "kid": UNPUBLISHED, "use": "enc"}
    elif jwk is None:
        jwk = public  # no kid
    monkeypatch.setattr(ISSUER, "unusable", [jwk])
    kid = jwk.get("kid") or UNPUBLISHED
    with fresh_client(bearer_settings(database_url)) as client:
        if jwk["kty"] == "oct":
            forged = jwt.encode(
                ISSUER.claims(new_sub()),
                "secret-secret-secret-secret-secret",
                algorithm="HS256",
                headers={"kid": kid},
            )
        else:
            forged = jwt.encode(
                ISSUER.claims(new_sub()), private, algorithm=alg, headers={"kid": kid}
            )
        assert_refused(client.get(TODOS, headers=bearer(forged)), 401, "INVALID_TOKEN")
        assert listed(client, ISSUER.headers(new_sub())) == []  # the good keys still work


def test_a_jwk_set_without_keys_withdraws_them_all(database_url, own_keys):
    """The provider's answer is the truth: an empty set revokes; only an unreachable or
    broken provider leaves the last good keys in place."""
    headers = ISSUER.headers(new_sub())
    with fresh_client(bearer_settings(database_url)) as client:
        assert listed(client, headers) == []
        ISSUER.published.clear()
        unknown = bearer(ISSUER.token(new_sub(), kid=UNPUBLISHED))  # makes it fetch again
        assert_refused(client.get(TODOS, headers=unknown), 401, "INVALID_TOKEN")
        assert_refused(client.get(TODOS, headers=headers), 401, "INVALID_TOKEN")


@pytest.mark.parametrize("answer", [["a", "list"], {"keys": "none"}, {"no": "keys"}])
def test_a_provider_answering_nonsense_keeps_the_last_good_keys(database_url, monkeypatch, answer):
    headers = ISSUER.headers(new_sub())
    with fresh_client(bearer_settings(database_url)) as client:
        assert listed(client, headers) == []
        monkeypatch.setattr(ISSUER, "answer", answer)
        before = ISSUER.fetches
        unknown = bearer(ISSUER.token(new_sub(), kid=UNPUBLISHED))  # makes it fetch again
        assert_refused(client.get(TODOS, headers=unknown), 401, "INVALID_TOKEN")
        assert ISSUER.fetches == before + 1
        assert listed(client, headers) == []


def test_requests_meeting_a_new_key_together_share_its_fetch(database_url, own_keys):
    with fresh_client(bearer_settings(database_url)) as client:
        rotated = ISSUER.add_key("EdDSA")
        before = ISSUER.fetches
        callers = [bearer(ISSUER.token(new_sub(), kid=rotated)) for _ in range(8)]
        with ThreadPoolExecutor(len(callers)) as pool:
            answers = list(pool.map(lambda headers: client.get(TODOS, headers=headers), callers))
        assert [answer.status_code for answer in answers] == [200] * len(callers)
        assert ISSUER.fetches == before + 1


def test_start_up_waits_no_longer_than_auth_jwks_wait_s_for_a_silent_provider(database_url):
    """A provider that accepts the connection and never answers."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/jwks"
        settings = bearer_settings(database_url, auth_jwks_url=url, auth_jwks_wait_s=0.5)
        started = time.monotonic()
        with fresh_client(settings) as client:
            assert time.monotonic() - started < 3
            response = client.get(TODOS, headers=ISSUER.headers(new_sub()))
        assert_problem(response, 503, "AUTH_UNAVAILABLE")


def test_the_verified_token_cache_is_bounded(database_url, monkeypatch):
    monkeypatch.setattr(identity, "MAX_REMEMBERED", 3)
    with fresh_client(bearer_settings(database_url)) as client:
        callers = [ISSUER.headers(new_sub()) for _ in range(5)]
        callers.append(ISSUER.headers(new_sub(), padding="p" * 4096))  # too large to keep
        identities = client.app.state.identity
        verified = []
        verify = identities._verify
        monkeypatch.setattr(
            identities, "_verify", lambda token: verified.append(1) or verify(token)
        )
        for headers in callers:
            assert listed(client, headers) == []
        assert len(verified) == 6
        for headers in callers[2:5]:  # the last three that fit: answered from memory
            assert listed(client, headers) == []
        assert len(verified) == 6
        assert listed(client, callers[0]) == []  # pushed out: verified again
        assert len(verified) == 7
        remembered = identities._remembered
        assert len(remembered) == 3
        assert all(len(token) <= identity.MAX_REMEMBERED_TOKEN_BYTES for token in remembered)


def test_an_app_without_identity_is_refused(database_url) -> None:
    with pytest.raises(ValueError, match="AUTH_JWKS_URL"):
        create_app(settings_for(database_url))


def test_the_development_secret_is_made_once_and_kept_private(tmp_path) -> None:
    secret = identity.dev_secret(tmp_path / "data")
    assert len(secret) >= 32
    assert identity.dev_secret(tmp_path / "data") == secret
    assert (tmp_path / "data" / identity.DEV_SECRET_FILE).stat().st_mode & 0o777 == 0o600


def test_a_verified_token_is_refused_once_it_expires(database_url):
    with fresh_client(bearer_settings(database_url, auth_leeway_s=0)) as client:
        token = ISSUER.token(new_sub(), ttl_s=2)
        headers, expiry = bearer(token), unverified_claims(token)["exp"]
        assert listed(client, headers) == []  # verified, and perhaps cached
        time.sleep(max(0.0, expiry - time.time()) + 0.2)
        assert_refused(client.get(TODOS, headers=headers), 401, "TOKEN_EXPIRED")


# === other modes, and settings ============================================================


def test_trusted_header_mode_ignores_authorization(database_url, sql) -> None:
    with fresh_client(settings_for(database_url, auth_trusted_header="X-User-ID")) as client:
        token_only = ISSUER.headers(new_sub())
        assert_problem(client.get(TODOS, headers=token_only), 400, "MISSING_USER_CONTEXT")
        before = counts(sql)
        post = client.post(TODOS, json={"title": "x"}, headers=token_only)
        assert_problem(post, 400, "MISSING_USER_CONTEXT")
        assert counts(sql) == before
        gateway = {"X-User-ID": new_sub()}
        todo = create(client, {**gateway, **ISSUER.headers(new_sub())})  # the token names nobody
        assert owner_of(sql, todo["id"]) == uuid.UUID(gateway["X-User-ID"])
        assert users_row(sql, uuid.UUID(gateway["X-User-ID"])) == (None, None)
        assert listed(client, {**gateway, "Authorization": "Bearer not-a-jwt"}) == [todo]
        bad = client.get(TODOS, headers={"X-User-ID": "auth0|123"})
        assert_problem(bad, 400, "INVALID_USER_ID")


def test_hs256_secret_mode_accepts_only_its_secret(database_url) -> None:
    secret = secrets.token_hex(32)
    sub = new_sub()
    now = int(time.time())
    claims = {"sub": sub, "iss": "todo-api-dev", "iat": now, "exp": now + 300}
    settings = settings_for(database_url, auth_jwt_secret=secret, auth_issuer="todo-api-dev")
    with fresh_client(settings) as client:
        todo = create(client, bearer(jwt.encode(claims, secret, algorithm="HS256")))
        for forged in (
            jwt.encode(claims, secrets.token_hex(32), algorithm="HS256"),
            # The right secret, shared with another system that issues its own tokens.
            jwt.encode({**claims, "iss": "another-system"}, secret, algorithm="HS256"),
            hand_made({"alg": "none", "typ": "JWT"}, claims),
            ISSUER.token(sub),  # a genuine provider token is no secret-mode token
        ):
            assert_refused(client.get(TODOS, headers=bearer(forged)), 401, "INVALID_TOKEN")
        assert listed(client, bearer(jwt.encode(claims, secret, algorithm="HS256"))) == [todo]


JWKS = {"auth_jwks_url": "https://auth.example.com/jwks", "auth_issuer": "https://auth.example.com"}
SECRET = {"auth_jwt_secret": "s" * 32, "auth_issuer": "https://auth.example.com"}
# Each refused setting, and what the refusal says.
BAD_SETTINGS = {
    "jwks-without-issuer": ({"auth_jwks_url": JWKS["auth_jwks_url"]}, "AUTH_ISSUER is required"),
    "secret-without-issuer": ({"auth_jwt_secret": "s" * 32}, "AUTH_ISSUER is required"),
    "secret-of-31-bytes": ({**SECRET, "auth_jwt_secret": "x" * 31}, "at least 32 bytes"),
    "http-jwks-for-a-remote-host": (
        {**JWKS, "auth_jwks_url": "http://auth.example.com/api/auth/jwks"},
        "must be https://",
    ),
    "http-jwks-for-a-host-that-starts-like-localhost": (
        {**JWKS, "auth_jwks_url": "http://127.0.0.1.evil.example/jwks"},
        "must be https://",
    ),
    "http-jwks-with-localhost-as-userinfo": (
        {**JWKS, "auth_jwks_url": "http://localhost@evil.example/jwks"},
        "must be https://",
    ),
    "hs256-among-the-algorithms": ({**JWKS, "auth_algorithms": "EdDSA,HS256"}, "HS256 not allowed"),
    "none-among-the-algorithms": ({**JWKS, "auth_algorithms": "none"}, "none not allowed"),
    "jwks-and-secret": ({**JWKS, **SECRET}, "set only one of"),
    "secret-and-trusted-header": ({**SECRET, "auth_trusted_header": "X-User-ID"}, "only one of"),
    "jwks-and-trusted-header": ({**JWKS, "auth_trusted_header": "X-User-ID"}, "only one of"),
    "issuer-behind-a-trusted-header": (
        {"auth_trusted_header": "X-User-ID", "auth_issuer": "https://auth.example.com"},
        "check bearer tokens",
    ),
    "authorization-as-the-trusted-header": (
        {"auth_trusted_header": "Authorization"},
        "must be a header name",
    ),
    "a-trusted-header-that-is-no-header-name": (
        {"auth_trusted_header": "X User: id"},
        "must be a header name",
    ),
    "a-negative-leeway": ({**JWKS, "auth_leeway_s": -1}, "greater than or equal to 0"),
}
GOOD_SETTINGS = {
    "https-jwks": {
        "auth_jwks_url": "https://auth.example.com/api/auth/jwks",
        "auth_issuer": "https://auth.example.com",
    },
    "http-jwks-on-localhost": {
        "auth_jwks_url": "http://localhost:3000/api/auth/jwks",
        "auth_issuer": "http://localhost:3000",
    },
    "secret-of-32-bytes": {**SECRET, "auth_jwt_secret": "x" * 32},
    "trusted-header": {"auth_trusted_header": "X-User-ID"},
}


@pytest.mark.parametrize("case", BAD_SETTINGS)
def test_incoherent_identity_settings_are_refused(case) -> None:
    settings, refusal = BAD_SETTINGS[case]
    with pytest.raises(ValueError, match=re.escape(refusal)):
        settings_for("postgresql://x@127.0.0.1/x", **settings)


@pytest.mark.parametrize("case", GOOD_SETTINGS)
def test_coherent_identity_settings_are_accepted(case) -> None:
    assert settings_for("postgresql://x@127.0.0.1/x", **GOOD_SETTINGS[case]).identity_configured


# === CLI ==================================================================================

JWT_PATTERN = re.compile(r"eyJ[\w-]+\.[\w-]+\.[\w-]+")


def test_serve_without_identity_fails_closed_naming_the_settings(database_url, tmp_path) -> None:
    try:
        result = todo_api("serve", "--port", "0", database=database_url, cwd=tmp_path, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("todo-api serve started serving with no identity configured")
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    for setting in ("AUTH_JWKS_URL", "AUTH_JWT_SECRET", "AUTH_TRUSTED_HEADER"):
        assert setting in output
    assert "Traceback" not in output


def dev_token(tmp_path: Path, *args: str) -> str:
    result = todo_api("token", *args, database="", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    [token] = JWT_PATTERN.findall(result.stdout)
    return token


def test_token_mints_a_dev_token_for_the_user(tmp_path) -> None:
    user = new_sub()
    token = dev_token(tmp_path, "--user", user)
    assert jwt.get_unverified_header(token)["alg"] == "HS256"
    claims = unverified_claims(token)
    assert claims["sub"] == user and claims["iss"] == "todo-api-dev"
    assert claims["exp"] - claims["iat"] == 3600  # --ttl defaults to 1h
    assert claims["exp"] > time.time()


def test_token_ttl_sets_the_lifetime(tmp_path) -> None:
    claims = unverified_claims(dev_token(tmp_path, "--user", new_sub(), "--ttl", "5m"))
    assert claims["exp"] - claims["iat"] == 300


def test_token_refuses_against_a_real_database(database_url, tmp_path) -> None:
    result = todo_api("token", "--user", new_sub(), database=database_url, cwd=tmp_path)
    assert result.returncode != 0
    assert not JWT_PATTERN.search(result.stdout + result.stderr)
    assert "NEON_DATABASE_URL" in result.stdout + result.stderr


def test_psql_by_subject_and_issuer_acts_as_user_id_for(database_url, sql, tmp_path) -> None:
    subject, issuer = f"auth0|{secrets.randbelow(10**12)}", "https://x.example/"
    mine, theirs = user_id_for(issuer, subject), uuid.uuid4()
    for user in (mine, theirs):
        sql.execute("INSERT INTO users (id) VALUES (%s)", (user,))
        for _ in range(1 if user == mine else 2):
            sql.execute("INSERT INTO todos (user_id, title) VALUES (%s, 'x')", (user,))
    query = "SELECT concat_ws(' ', current_user, current_setting('app.user_id'), count(*))"
    query += " AS who FROM todos;\n"
    result = todo_api(
        *("psql", "--subject", subject, "--issuer", issuer),
        database=database_url,
        cwd=tmp_path,
        input=query,
        PATH=str(TODO_API.parent),  # no psql on PATH: the one that ships with pgserver
    )
    assert result.returncode == 0, result.stderr
    assert f" todo_app {mine} 1\n" in result.stdout  # that user's one todo, not the other's two


def test_a_trusted_header_server_warns_at_start(database_url, tmp_path) -> None:
    no_bearer = {"AUTH_JWKS_URL": "", "AUTH_ISSUER": "", "AUTH_AUDIENCE": "", "AUTH_JWT_SECRET": ""}
    server = Server(database_url, tmp_path, AUTH_TRUSTED_HEADER="X-User-ID", **no_bearer)
    try:
        wait_until(server.ready, "the trusted-header server to be ready")
        warnings = [line for line in server.output().splitlines() if "AUTH_TRUSTED_HEADER" in line]
        assert warnings and all("WARNING" in line for line in warnings), server.output()
        gateway = {"X-User-ID": new_sub()}
        created = httpx.post(f"{server.base}{TODOS}", json={"title": "x"}, headers=gateway)
        assert created.status_code == 201, created.text
    finally:
        server.stop()


def test_make_run_serves_the_embedded_database_with_the_development_issuer(tmp_path) -> None:
    """The README's quick start: `serve` on the embedded database with nothing configured
    trusts `todo-api token`'s tokens, and nothing else."""
    assert todo_api("migrate", database="", cwd=tmp_path).returncode == 0
    no_identity = dict.fromkeys(AUTH_VARS, "")
    server = Server("", tmp_path, **no_identity)
    try:
        wait_until(server.ready, "the development server to be ready")
        user = new_sub()
        token = dev_token(tmp_path, "--user", user)
        created = httpx.post(f"{server.base}{TODOS}", json={"title": "x"}, headers=bearer(token))
        assert created.status_code == 201, created.text
        assert created.json()["user_id"] == user
        forged = ISSUER.headers(user, iss="todo-api-dev")  # right issuer, wrong key
        assert_problem(httpx.get(f"{server.base}{TODOS}", headers=forged), 401, "INVALID_TOKEN")
        stop_process(server.process)  # gracefully, so its coverage counts
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("env", "named"),
    [
        (
            {"AUTH_JWT_SECRET": "short-secret-hunter2", "AUTH_ISSUER": "x"},
            "AUTH_JWT_SECRET must be at least 32 bytes",
        ),
        ({"AUTH_LEEWAY_S": "hunter2"}, "AUTH_LEEWAY_S: Input should be a valid integer"),
    ],
)
def test_bad_settings_are_named_without_echoing_any_value(tmp_path, env, named) -> None:
    database = "postgresql://app:hunter2@127.0.0.1:1/db"
    result = todo_api("check", database=database, cwd=tmp_path, **env)
    assert result.returncode == 1
    assert named in result.stderr
    assert "hunter2" not in result.stdout + result.stderr


def test_token_refuses_when_an_identity_is_configured(tmp_path) -> None:
    """`serve` would not trust the development issuer then, so its tokens would not work."""
    result = todo_api("token", "--user", new_sub(), database="", cwd=tmp_path, **ISSUER.env())
    assert result.returncode == 1
    assert not JWT_PATTERN.search(result.stdout)


def test_a_token_lifetime_needs_a_unit(tmp_path) -> None:
    result = todo_api("token", "--user", new_sub(), "--ttl", "90", database="", cwd=tmp_path)
    assert result.returncode == 2
    assert "90s, 15m, 1h or 7d" in result.stderr


def test_psql_issuer_without_subject_is_refused(tmp_path) -> None:
    result = todo_api(
        "psql", "--user", new_sub(), "--issuer", ISSUER.url, database="", cwd=tmp_path
    )
    assert result.returncode == 2
    assert "--subject and --issuer go together" in result.stderr
