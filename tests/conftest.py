"""Fixtures: a real PostgreSQL (TEST_DATABASE_URL, or the embedded one), a fresh database
per run created with sqlalchemy-utils and dropped afterwards, and the app in front of it.

The app runs as in production: callers send bearer tokens from the test identity provider
(tests/issuer.py). `header_client` runs it behind a trusted gateway instead (X-User-ID)."""

import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import jwt
import psycopg
import pytest
from fastapi.testclient import TestClient
from issuer import ISSUER
from sqlalchemy.engine import make_url
from sqlalchemy_utils import create_database, drop_database

from api import cli
from api.cli import migrate
from api.main import create_app
from api.settings import Settings, get_settings
from db.connection import PROJECT_ROOT, normalize_url, sqlalchemy_url, start_embedded


def with_url(url: str, **parts: str) -> str:
    """`url` with some of its parts (database, username, ...) replaced."""
    return make_url(url).set(**parts).render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def server_url() -> str:
    """A superuser URL to the cluster the tests use."""
    url = os.environ.get("TEST_DATABASE_URL")
    if url:
        return normalize_url(url)
    return start_embedded(PROJECT_ROOT / ".data" / "test-postgres")


@pytest.fixture(scope="session")
def make_database(server_url: str) -> Iterator[Callable[..., str]]:
    """Creates a fresh database (migrated unless told not to); all are dropped at the end."""
    created: list[str] = []

    def make(*, migrated: bool = True, owner: str | None = None) -> str:
        url = with_url(server_url, database=f"todo_test_{uuid.uuid4().hex[:12]}")
        create_database(sqlalchemy_url(url))
        created.append(url)
        if owner:
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute(f'ALTER DATABASE "{make_url(url).database}" OWNER TO "{owner}"')
            url = with_url(url, username=owner)
        if migrated:
            migrate(url)
        return url

    yield make
    for url in created:
        drop_database(sqlalchemy_url(url))


@pytest.fixture(scope="session")
def database_url(make_database: Callable[..., str]) -> str:
    """The run's migrated database, connected to as the superuser (or TEST_DATABASE_URL's role)."""
    return make_database()


def run_cli(*argv: str) -> SystemExit:
    """Run `todo-api <argv>` in this process; every command ends in SystemExit here."""
    with pytest.raises(SystemExit) as exit_info:
        cli.main(list(argv))
    return exit_info.value


@pytest.fixture
def use_database(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], None]]:
    """Points the CLI at a database through NEON_DATABASE_URL (get_settings is cached),
    trusting the test identity provider, as `serve` requires."""

    def use(url: str) -> None:
        monkeypatch.setenv("NEON_DATABASE_URL", url)
        for name, value in ISSUER.env().items():
            monkeypatch.setenv(name, value)
        get_settings.cache_clear()

    get_settings.cache_clear()
    yield use
    get_settings.cache_clear()


# Bearer tokens from ISSUER, verified against its JWKS: the production mode.
BEARER = {"auth_jwks_url": ISSUER.jwks_url, "auth_issuer": ISSUER.url, "auth_audience": ISSUER.url}
TRUSTED_HEADER = {"auth_trusted_header": "X-User-ID"}
IDENTITY_MODES = ("auth_jwks_url", "auth_jwt_secret", "auth_trusted_header")


def app_settings(url: str, **settings: object) -> Settings:
    """Settings for the app on `url`: bearer mode trusting ISSUER, unless `settings` choose
    another identity mode; `settings` override the rest."""
    identity = {} if IDENTITY_MODES & settings.keys() else BEARER
    return Settings(neon_database_url=url, **{**identity, **settings})


def app_client(url: str, **settings: object) -> TestClient:
    return TestClient(create_app(app_settings(url, **settings)))


@pytest.fixture(scope="session")
def client(database_url: str) -> Iterator[TestClient]:
    with app_client(database_url) as test_client:
        yield test_client


@pytest.fixture(scope="session")
def header_client(database_url: str) -> Iterator[TestClient]:
    """The app behind a trusted gateway that names the caller in X-User-ID."""
    with app_client(database_url, **TRUSTED_HEADER) as test_client:
        yield test_client


def new_user() -> dict[str, str]:
    """Headers of a brand-new caller: a bearer token for a new UUID subject."""
    return ISSUER.headers(str(uuid.uuid4()))


def new_header_user() -> dict[str, str]:
    """Headers of a brand-new caller behind the trusted gateway (header_client)."""
    return {"X-User-ID": str(uuid.uuid4())}


def id_of(user: dict[str, str]) -> str:
    """The user id that `user`'s headers name: its token's subject, or its X-User-ID."""
    if "X-User-ID" in user:
        return user["X-User-ID"]
    token = user["Authorization"].removeprefix("Bearer ")
    return jwt.decode(token, options={"verify_signature": False})["sub"]


@pytest.fixture
def user() -> dict[str, str]:
    return new_user()


@pytest.fixture
def header_user() -> dict[str, str]:
    return new_header_user()


@pytest.fixture
def sql(database_url: str) -> Iterator[psycopg.Connection]:
    """A direct connection to the run's database, outside the app."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        yield conn


# As db/transaction.py: every setting transaction-local, the values bind parameters.
SWITCH = (
    "SELECT set_config('role', 'todo_app', true), set_config('app.user_id', %s, true),"
    " set_config('statement_timeout', %s, true)"
)


@contextmanager
def as_user(
    conn: psycopg.Connection, user_id: str, *, timeout_ms: int = 5000, rollback: bool = False
) -> Iterator[psycopg.Connection]:
    """One transaction as todo_app on behalf of `user_id` (committed unless `rollback`)."""
    with conn.transaction(force_rollback=rollback):
        conn.execute(SWITCH, (user_id, str(timeout_ms)))
        yield conn


# Roles the tests create: cluster-wide, so each is dropped (or restored) afterwards.


@pytest.fixture(scope="module")
def owner(database_url: str) -> Iterator[str]:
    """A database owner like Neon's neondb_owner, but made with plain SQL: a login role with
    CREATEROLE, no superuser, no BYPASSRLS."""
    role = f"todo_owner_{uuid.uuid4().hex[:8]}"
    password = make_url(database_url).password
    with psycopg.connect(database_url, autocommit=True) as conn:
        create = psycopg.sql.SQL("CREATE ROLE {} LOGIN CREATEROLE NOSUPERUSER NOBYPASSRLS").format(
            psycopg.sql.Identifier(role)
        )
        if password:  # make_database's URL for the owner keeps the superuser's password
            create += psycopg.sql.SQL(" PASSWORD {}").format(psycopg.sql.Literal(password))
        conn.execute(create)
        # todo_app belongs to the cluster and was already created by the superuser migrating the
        # run's database, so this owner did not create it and (since PostgreSQL 16) may not grant
        # it to itself: the README's "runtime role is not the one that created todo_app" case.
        conn.execute(psycopg.sql.SQL("GRANT todo_app TO {}").format(psycopg.sql.Identifier(role)))
    yield role
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(psycopg.sql.SQL("DROP ROLE {}").format(psycopg.sql.Identifier(role)))


@pytest.fixture(scope="module")
def owner_database(
    owner: str, make_database: Callable[..., str], database_url: str
) -> Iterator[str]:
    """A fresh database owned by `owner`, migrated by `owner` itself; the URL logs in as it."""
    url = make_database(migrated=False, owner=owner)
    try:
        migrate(url)
        yield url
    finally:
        # make_database drops the database at session end, after `owner` must be gone: hand
        # everything the role owns there (the database included) to the superuser first.
        with psycopg.connect(as_superuser(url, database_url), autocommit=True) as conn:
            role = psycopg.sql.Identifier(owner)
            conn.execute(psycopg.sql.SQL("REASSIGN OWNED BY {} TO CURRENT_USER").format(role))
            conn.execute(psycopg.sql.SQL("DROP OWNED BY {}").format(role))


@pytest.fixture
def todo_app_bypasses_rls(server_url: str) -> Iterator[None]:
    """todo_app WITH BYPASSRLS: cluster-wide, so it is always restored."""
    try:
        execute(server_url, "ALTER ROLE todo_app BYPASSRLS")
        yield
    finally:
        execute(server_url, "ALTER ROLE todo_app NOBYPASSRLS")


@pytest.fixture
def unswitchable_role(server_url: str) -> Iterator[str]:
    """A login role that owns nothing and is not a member of todo_app."""
    role = f"todo_test_login_{uuid.uuid4().hex[:8]}"
    execute(server_url, f'CREATE ROLE "{role}" LOGIN NOSUPERUSER NOBYPASSRLS')
    try:
        yield role
    finally:
        execute(server_url, f'DROP ROLE "{role}"')


@pytest.fixture
def todo_app_in_another_role(server_url: str) -> Iterator[str]:
    """A role todo_app is a member of: cluster-wide, so it is always dropped."""
    role = f"todo_test_group_{uuid.uuid4().hex[:8]}"
    execute(server_url, f'CREATE ROLE "{role}" NOLOGIN')
    try:
        execute(server_url, f'GRANT "{role}" TO todo_app')
        yield role
    finally:
        execute(server_url, f'DROP ROLE "{role}"')


def as_superuser(url: str, database_url: str) -> str:
    """`url`'s database, logged in as the superuser of `database_url`."""
    return with_url(url, username=make_url(database_url).username)


def execute(url: str, sql: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql)
