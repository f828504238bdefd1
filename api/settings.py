"""The service's configuration, read once from the environment (or a .env file)."""

from functools import lru_cache

from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    # Unset: an embedded PostgreSQL in .data/postgres.
    neon_database_url: str | None = None
    # Per worker. Neon's pooled endpoint multiplexes these over a few server connections.
    db_pool_min_size: int = 1
    db_pool_max_size: int = 10
    db_connect_timeout_s: int = 10
    db_statement_timeout_ms: int = 5000
    # psycopg prepares a statement after it ran this many times on a connection.
    # None disables preparing; it is forced off behind PgBouncer (`-pooler` hosts).
    db_prepare_threshold: int | None = 5

    @property
    def prepare_threshold(self) -> int | None:
        if self.neon_database_url and "-pooler" in self.neon_database_url:
            return None
        return self.db_prepare_threshold


@lru_cache
def get_settings() -> Settings:
    return Settings()
