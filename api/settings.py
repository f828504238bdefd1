"""The service's configuration, read once from the environment (or a .env file)."""

import re
from functools import lru_cache
from typing import Annotated, Self
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from api.logs import LogFormat
from db.connection import PreparedStatements

# Asymmetric only: a JWKS publishes public keys, and an HMAC "key" from it would be public.
SIGNING_ALGORITHMS = {"EdDSA", "ES256", "ES384", "ES512", "RS256", "RS384", "RS512", "PS256"}
LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1"}
MIN_SECRET_BYTES = 32


class Settings(BaseSettings):
    # An empty variable counts as unset.
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", env_ignore_empty=True)

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
    # Log lines on stdout: one JSON object each, or readable text for local work.
    log_format: LogFormat = "json"

    # Identity: exactly one of a JWKS URL, an HS256 secret, or a trusted gateway's header.
    # See docs/api.md, "Identity".
    auth_jwks_url: str | None = None
    auth_issuer: str | None = None
    auth_audience: str | None = None
    auth_algorithms: str = "EdDSA,ES256,RS256"
    auth_leeway_s: Annotated[int, Field(ge=0, le=300)] = 30
    auth_jwt_secret: SecretStr | None = None
    auth_trusted_header: str | None = None
    # How long the server waits at start for the provider's keys before serving without them.
    auth_jwks_wait_s: float = 10.0

    @property
    def algorithms(self) -> list[str]:
        return [name.strip() for name in self.auth_algorithms.split(",")]

    @property
    def identity_configured(self) -> bool:
        return any((self.auth_jwks_url, self.auth_jwt_secret, self.auth_trusted_header))

    @model_validator(mode="after")
    def _identity_is_coherent(self) -> Self:
        modes = [self.auth_jwks_url, self.auth_jwt_secret, self.auth_trusted_header]
        if sum(mode is not None for mode in modes) > 1:
            raise ValueError(
                "set only one of AUTH_JWKS_URL, AUTH_JWT_SECRET and AUTH_TRUSTED_HEADER"
            )
        bearer = self.auth_jwks_url is not None or self.auth_jwt_secret is not None
        if bearer and not self.auth_issuer:
            raise ValueError("AUTH_ISSUER is required with AUTH_JWKS_URL or AUTH_JWT_SECRET")
        if not bearer and (self.auth_issuer or self.auth_audience):
            raise ValueError(
                "AUTH_ISSUER and AUTH_AUDIENCE check bearer tokens: set AUTH_JWKS_URL or"
                " AUTH_JWT_SECRET too"
            )
        if self.auth_jwks_url is not None:
            url = urlsplit(self.auth_jwks_url)
            if url.scheme != "https" and not (url.scheme == "http" and url.hostname in LOCAL_HOSTS):
                raise ValueError("AUTH_JWKS_URL must be https:// (http:// only for localhost)")
        unknown = set(self.algorithms) - SIGNING_ALGORITHMS
        if unknown:
            raise ValueError(
                f"AUTH_ALGORITHMS: {', '.join(sorted(unknown))} not allowed;"
                f" choose from {', '.join(sorted(SIGNING_ALGORITHMS))}"
            )
        secret = self.auth_jwt_secret
        if secret is not None and len(secret.get_secret_value().encode()) < MIN_SECRET_BYTES:
            raise ValueError(f"AUTH_JWT_SECRET must be at least {MIN_SECRET_BYTES} bytes")
        if self.auth_trusted_header is not None and (
            self.auth_trusted_header.lower() == "authorization"
            or not re.fullmatch(r"[A-Za-z0-9-]+", self.auth_trusted_header)
        ):
            raise ValueError("AUTH_TRUSTED_HEADER must be a header name such as X-User-ID")
        return self


@lru_cache
def get_settings() -> Settings:
    return Settings()
