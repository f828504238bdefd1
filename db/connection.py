"""Which database, and the connection pool to it. Nothing outside db/ opens a connection."""

import logging
import select
import shutil
import warnings
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import psycopg
from psycopg import AsyncConnection
from psycopg.pq import ConnStatus
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


def psql_path() -> str:
    """psql from PATH, else the one that comes with the embedded PostgreSQL."""
    if found := shutil.which("psql"):
        return found
    import pgserver

    return str(Path(pgserver.__file__).parent / "pginstall" / "bin" / "psql")


def resolve_url(neon_database_url: str | None) -> str:
    """NEON_DATABASE_URL when it is set, else the embedded database."""
    if not neon_database_url:
        return start_embedded()
    url = normalize_url(neon_database_url)
    log.info("using the database at %s", describe(url))
    return url


# Below Neon's scale-to-zero delay (5 minutes without queries): connections beyond the
# pool's minimum are closed by the pool before a suspend would close them.
MAX_IDLE_S = 240.0
# psycopg prepares a statement on the server once it has run this often on a connection.
PREPARE_AFTER = 5

PreparedStatements = Literal["auto", "on", "off"]


class Pool(AsyncConnectionPool[AsyncConnection[Any]]):
    """An unopened pool of autocommit connections (db.transaction makes every transaction).

    Connections are (re)made in the background with exponential backoff for up to
    `reconnect_timeout`; a request waits at most `timeout` for one.

    Server-side prepared statements are on unless `prepared_statements` says "off", and
    `stop_preparing` turns them off for every connection, for good. A transaction-mode
    pooler (PgBouncer before 1.21, or without max_prepared_statements) hands each
    transaction any server connection, where a statement prepared on another one is
    missing, or is another statement under the same name. With "auto", each new connection
    looks for such a pooler before it prepares anything.
    """

    def __init__(
        self,
        url: str,
        *,
        min_size: int,
        max_size: int,
        timeout: float,
        connect_timeout: int,
        reconnect_timeout: float,
        prepared_statements: PreparedStatements,
    ):
        self.prepare_threshold = None if prepared_statements == "off" else PREPARE_AFTER
        self.detect_pooler = prepared_statements == "auto"
        super().__init__(
            normalize_url(url),
            min_size=min_size,
            max_size=max_size,
            timeout=timeout,
            reconnect_timeout=reconnect_timeout,
            max_idle=MAX_IDLE_S,
            configure=self._on_connect,
            check=self._on_checkout,
            kwargs={
                "autocommit": True,
                "connect_timeout": connect_timeout,
                "prepare_threshold": None,  # set by _on_connect
                # Notice a silently dropped TCP path (NAT, load balancer) within a minute.
                "keepalives_idle": 30,
                "keepalives_interval": 10,
                "keepalives_count": 3,
            },
            open=False,
            name="todo",
        )

    def stop_preparing(self, reason: str) -> None:
        if self.prepare_threshold is not None:
            self.prepare_threshold = None
            log.warning("server-side prepared statements turned off: %s", reason)

    async def _on_connect(self, conn: AsyncConnection[Any]) -> None:
        if self.prepare_threshold is not None and self.detect_pooler:
            # A pooler answers the startup with its own backend key, not the server's.
            cursor = await conn.execute("SELECT pg_backend_pid()")
            if (await cursor.fetchone()) != (conn.info.backend_pid,):
                self.stop_preparing("a connection pooler sits in front of PostgreSQL")
        conn.prepare_threshold = self.prepare_threshold

    async def _on_checkout(self, conn: AsyncConnection[Any]) -> None:
        """Without a round trip: an idle connection has nothing to read; if its socket is
        readable, the server closed it (restart, crash, idle timeout, suspended compute)
        and sent its goodbye or EOF."""
        readable, _, _ = select.select([conn.fileno()], [], [], 0)
        if not readable and conn.pgconn.status == ConnStatus.OK:
            conn.prepare_threshold = self.prepare_threshold  # stop_preparing reaches it
            return
        await conn.close()
        # Whatever closed this one has most likely closed its idle siblings too. Test them
        # all now, rather than meet them one checkout at a time with the pool's backoff
        # (0, 1, 2 s) in between, which outlasts a request's wait.
        await self.check()
        # Raising makes the pool drop this connection and hand out another.
        raise psycopg.OperationalError("the server closed this idle connection")
