"""Which database, and the connection pool to it. Nothing outside db/ opens a connection."""

import logging
import warnings
from pathlib import Path
from urllib.parse import urlsplit

from psycopg_pool import AsyncConnectionPool

log = logging.getLogger("todo.db")

PROJECT_ROOT = Path(__file__).resolve().parents[1]
EMBEDDED_DATA = PROJECT_ROOT / ".data" / "postgres"
SCHEMES = ("postgresql+psycopg://", "postgresql://", "postgres://")


def normalize_url(url: str) -> str:
    """A libpq URL (`postgresql://...`) from any accepted form; query parameters such as
    `sslmode` and `channel_binding` are kept as they are."""
    for scheme in SCHEMES:
        if url.startswith(scheme):
            return "postgresql://" + url.removeprefix(scheme)
    raise ValueError(
        "NEON_DATABASE_URL must start with postgresql://, postgres:// or postgresql+psycopg://"
    )


def sqlalchemy_url(url: str) -> str:
    return "postgresql+psycopg://" + normalize_url(url).removeprefix("postgresql://")


def describe(url: str) -> str:
    """The URL without its password, for logs."""
    parts = urlsplit(normalize_url(url))
    user = f"{parts.username}@" if parts.username else ""
    host = parts.hostname or "local socket"
    port = f":{parts.port}" if parts.port else ""
    return f"{user}{host}{port}{parts.path}"


def start_embedded(data_dir: Path = EMBEDDED_DATA) -> str:
    """Start (or join) the embedded PostgreSQL kept in `data_dir`; it stops when the last
    process using it exits. Returns its URL."""
    with warnings.catch_warnings():  # platformdirs warns about XDG_RUNTIME_DIR on import
        warnings.simplefilter("ignore")
        import pgserver  # imported here: only the embedded case needs it

    data_dir.parent.mkdir(parents=True, exist_ok=True)
    url = pgserver.get_server(data_dir).get_uri()
    log.info("using the embedded PostgreSQL in %s (set NEON_DATABASE_URL to use another)", data_dir)
    return url


def resolve_url(neon_database_url: str | None) -> str:
    """NEON_DATABASE_URL when it is set, else the embedded database."""
    if not neon_database_url:
        return start_embedded()
    url = normalize_url(neon_database_url)
    log.info("using the database at %s", describe(url))
    return url


def open_pool(
    url: str, *, min_size: int, max_size: int, connect_timeout: int, prepare_threshold: int | None
) -> AsyncConnectionPool:
    """An unopened pool of autocommit connections: db.transaction makes every transaction."""
    return AsyncConnectionPool(
        normalize_url(url),
        min_size=min_size,
        max_size=max_size,
        kwargs={
            "autocommit": True,
            "connect_timeout": connect_timeout,
            "prepare_threshold": prepare_threshold,
        },
        open=False,
        name="todo",
    )
