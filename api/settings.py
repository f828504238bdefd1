"""The service's configuration, read once from the environment (or a .env file)."""

from functools import lru_cache

from pydantic_settings import BaseSettings, SettingsConfigDict

from db.connection import PreparedStatements


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    # Unset: an embedded PostgreSQL in .data/postgres.
    neon_database_url: str | None = None
    # Per worker process; see docs/operations.md, "Pool size and workers".
    db_pool_min_size: int = 1
    db_pool_max_size: int = 10
    # How long a request waits for a connection before answering 503.
    db_pool_timeout_s: float = 3.0
    # One connection attempt; a Neon compute waking from zero takes a few seconds.
    db_connect_timeout_s: int = 10
    # How long the pool keeps retrying, with exponential backoff, to (re)connect;
    # also how long `serve` and `check` wait for the database at start.
    db_reconnect_timeout_s: float = 30.0
    db_statement_timeout_ms: int = 5000
    # Server-side prepared statements: "auto" turns them off behind a connection pooler;
    # see docs/operations.md, "Prepared statements".
    db_prepared_statements: PreparedStatements = "auto"
    # On SIGTERM, how long in-flight requests may take to finish.
    shutdown_timeout_s: int = 30


@lru_cache
def get_settings() -> Settings:
    return Settings()
