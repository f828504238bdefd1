"""The service's configuration, read once from the environment (or a .env file)."""

from functools import lru_cache
from typing import Literal

from pydantic_settings import BaseSettings, SettingsConfigDict


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
    # Server-side prepared statements. "auto": off behind PgBouncer (hosts with -pooler).
    db_prepared_statements: Literal["auto", "on", "off"] = "auto"
    # On SIGTERM, how long in-flight requests may take to finish.
    shutdown_timeout_s: int = 30

    @property
    def prepare_threshold(self) -> int | None:
        """psycopg's prepare_threshold: prepare after 5 runs on a connection, or never."""
        pooled = "-pooler" in (self.neon_database_url or "")
        if self.db_prepared_statements == "off" or (
            self.db_prepared_statements == "auto" and pooled
        ):
            return None
        return 5


@lru_cache
def get_settings() -> Settings:
    return Settings()
