"""Who is calling: a verified bearer token (a provider's JWKS, or an HS256 secret), or the
header a trusted gateway sets."""

import json
import logging
import os
import secrets
import tempfile
import time
from pathlib import Path
from typing import Any, Protocol
from uuid import UUID, uuid5

import jwt
from fastapi import Request
from pydantic import TypeAdapter

from api.errors import ApiError
from api.jwks import JwksKeys, UnknownKey
from api.settings import Settings
from db.transaction import Caller

log = logging.getLogger("todo.identity")

# A subject that is not a UUID maps to uuid5(NAMESPACE, "<iss>|<sub>"). Never change it:
# every such user would get a new id. docs/api.md states it.
NAMESPACE = UUID("0c3d38b4-ac4b-4a09-a949-2f01c5f2e44c")
DEV_ISSUER = "todo-api-dev"
DEV_SECRET_FILE = "dev-issuer-secret"

# Verified tokens kept, each until its exp: a verification costs about 0.1 ms of CPU, a
# quarter of a get. Each entry holds the token and its claims: about 2 KiB for real tokens
# (20 MB in all), 70 MB at worst.
MAX_REMEMBERED = 10_000
MAX_REMEMBERED_TOKEN_BYTES = 4096

NOT_CONFIGURED = (
    "no identity is configured: set AUTH_JWKS_URL and AUTH_ISSUER (your identity provider's"
    " keys), or AUTH_JWT_SECRET (a shared HS256 secret), or AUTH_TRUSTED_HEADER=X-User-ID"
    " (behind a gateway that authenticates)"
)


def user_id_for(issuer: str, subject: str) -> UUID:
    """The user id of a token's subject: the subject itself when it is a UUID (canonical
    form), else a UUIDv5 of `<iss>|<sub>`, so that one account is always one id and two
    issuers' non-UUID subjects never share one."""
    try:
        if str(UUID(subject)) == subject:
            return UUID(subject)
    except ValueError:
        pass
    return uuid5(NAMESPACE, f"{issuer}|{subject}")


class Identity(Protocol):
    scheme: dict[str, str]  # the OpenAPI security scheme

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def caller(self, request: Request) -> Caller: ...


def from_settings(settings: Settings) -> Identity:
    """The identity mode the settings choose; ValueError when they choose none."""
    if settings.auth_trusted_header:
        return TrustedHeader(settings.auth_trusted_header)
    keys: Keys
    if settings.auth_jwks_url:
        keys = JwksKeys(settings.auth_jwks_url, settings.algorithms, settings.auth_jwks_wait_s)
    elif settings.auth_jwt_secret:
        keys = SecretKey(settings.auth_jwt_secret.get_secret_value())
    else:
        raise ValueError(NOT_CONFIGURED)
    assert settings.auth_issuer, "Settings require it with a JWKS or a secret"
    return BearerTokens(
        keys,
        issuer=settings.auth_issuer,
        audience=settings.auth_audience,
        leeway_s=settings.auth_leeway_s,
    )


class TrustedHeader:
    """The caller's UUID, as a gateway in front of us that authenticates has set it."""

    _uuid = TypeAdapter(UUID)

    def __init__(self, name: str):
        self.name = name
        self.scheme = {"type": "apiKey", "in": "header", "name": name}

    async def start(self) -> None:
        log.warning(
            "AUTH_TRUSTED_HEADER=%s: every request is believed to come from the user that"
            " header names; only a gateway that authenticates may be able to reach this service",
            self.name,
        )

    async def close(self) -> None:
        pass

    async def caller(self, request: Request) -> Caller:
        values = request.headers.getlist(self.name)
        if not values:
            raise ApiError(
                400,
                "MISSING_USER_CONTEXT",
                f"Send the caller's id as a UUID in the {self.name} header.",
            )
        if len(values) > 1:
            raise ApiError(400, "INVALID_USER_ID", f"Send exactly one {self.name} header.")
        try:
            return Caller(self._uuid.validate_python(values[0]))
        except ValueError:
            raise ApiError(400, "INVALID_USER_ID", f"{self.name} must be a UUID.") from None


# RFC 6750: a request without credentials gets a bare challenge, a bad token an error.
def _missing() -> ApiError:
    return ApiError(
        401,
        "MISSING_CREDENTIALS",
        "Send a token from the identity provider as Authorization: Bearer <token>.",
        headers={"WWW-Authenticate": "Bearer"},
    )


def _invalid(detail: str, error_code: str = "INVALID_TOKEN") -> ApiError:
    return ApiError(
        401, error_code, detail, headers={"WWW-Authenticate": 'Bearer error="invalid_token"'}
    )


class Keys(Protocol):
    algorithms: list[str]
    generation: int  # changes whenever the keys do

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def key_for(self, kid: str) -> jwt.PyJWK | str: ...


class SecretKey:
    """One shared HS256 secret, whatever the kid."""

    generation = 0

    def __init__(self, secret: str):
        self.secret = secret
        self.algorithms = ["HS256"]

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def key_for(self, kid: str) -> str:
        return self.secret


class BearerTokens:
    """`Authorization: Bearer <JWT>`, verified: signature, algorithm, exp, nbf, iss, aud."""

    def __init__(self, keys: Keys, *, issuer: str, audience: str | None, leeway_s: int):
        self.scheme = {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
        self.keys = keys
        self.issuer, self.audience, self.leeway_s = issuer, audience, leeway_s
        # token -> (caller, its exp, the key generation it was verified with)
        self._remembered: dict[str, tuple[Caller, int, int]] = {}

    async def start(self) -> None:
        await self.keys.start()

    async def close(self) -> None:
        await self.keys.close()

    async def caller(self, request: Request) -> Caller:
        token = _bearer_token(request)
        remembered = self._remembered.get(token)
        if remembered and remembered[1] > time.time() and remembered[2] == self.keys.generation:
            return remembered[0]
        claims, generation = await self._verify(token)
        caller = _caller_from(claims)
        if len(token) <= MAX_REMEMBERED_TOKEN_BYTES:
            if len(self._remembered) >= MAX_REMEMBERED:
                self._remembered.pop(next(iter(self._remembered)))  # the oldest
            self._remembered[token] = (caller, int(claims["exp"]), generation)
        return caller

    async def _verify(self, token: str) -> tuple[dict[str, Any], int]:
        """The token's claims, and the generation of the keys that verified them."""
        try:
            kid = jwt.get_unverified_header(token).get("kid")
            key = await self.keys.key_for(kid if isinstance(kid, str) else "")
            generation = self.keys.generation
            claims = jwt.decode(
                token,
                key,
                algorithms=self.keys.algorithms,
                issuer=self.issuer,
                # Unset: a token addressed to any audience is refused (PyJWT's default).
                audience=self.audience,
                leeway=self.leeway_s,
                options={"require": ["exp", "sub"]},
            )
        except UnknownKey:
            raise _invalid(
                "The token's key (kid) is not one the identity provider publishes."
            ) from None
        except (jwt.ExpiredSignatureError, jwt.ImmatureSignatureError):
            raise _invalid(
                "The token has expired or is not valid yet; get a new one.", "TOKEN_EXPIRED"
            ) from None
        except jwt.InvalidTokenError as error:
            raise _invalid(f"The token could not be verified: {_reason(error)}") from None
        return claims, generation


def _bearer_token(request: Request) -> str:
    values = request.headers.getlist("authorization")
    if len(values) > 1:
        raise _invalid("Send exactly one Authorization header.")
    scheme, _, token = values[0].partition(" ") if values else ("", "", "")
    if scheme.lower() != "bearer":
        raise _missing()
    token = token.strip()
    if not token:
        raise _invalid("The Authorization header holds no token.")
    return token


def _reason(error: jwt.InvalidTokenError) -> str:
    # PyJWT's messages name the failed check ("Invalid audience", "Signature verification
    # failed") and never echo the token.
    return str(error).rstrip(".") + "." if str(error) else type(error).__name__


def _caller_from(claims: dict[str, Any]) -> Caller:
    issuer, subject = claims["iss"], claims["sub"]
    # Claims that PostgreSQL could not take as text and jsonb (NaN, NUL, lone surrogates)
    # would fail the request, or a policy reading them: refuse the token instead.
    try:
        serialized = json.dumps(claims, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        serialized.encode()
    except (ValueError, UnicodeEncodeError):
        raise _invalid("The token's claims are not valid JSON text.") from None
    if not subject or "\\u0000" in serialized:
        raise _invalid("The token's claims cannot name a user.")
    return Caller(user_id_for(issuer, subject), issuer, subject, serialized)


def dev_secret(folder: Path) -> str:
    """The development issuer's HS256 secret, generated into `folder` the first time."""
    path = folder / DEV_SECRET_FILE
    folder.mkdir(parents=True, exist_ok=True)
    # Written whole, then linked into place: a concurrent reader never sees half of it.
    with tempfile.NamedTemporaryFile("w", dir=folder, delete=False) as draft:  # mode 0600
        draft.write(secrets.token_urlsafe(32))
    try:
        os.link(draft.name, path)
    except FileExistsError:
        pass  # made before, or by a process started at the same moment: that one stands
    finally:
        os.unlink(draft.name)
    return path.read_text().strip()


def dev_token(secret: str, user_id: UUID, ttl_s: int) -> str:
    now = int(time.time())
    claims = {"iss": DEV_ISSUER, "sub": str(user_id), "iat": now, "exp": now + ttl_s}
    return jwt.encode(claims, secret, algorithm="HS256")
