"""A local identity provider for the tests, shaped like Better Auth's JWT plugin: a JWKS
endpoint over real HTTP with Ed25519, P-256 and RSA keys (the Ed25519 JWK without `alg`),
and tokens signed EdDSA with iss = aud = the app's base URL and a 15-minute expiry.

One provider per test process (ISSUER); tests may rotate its keys or take it down.
"""

import json
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

JWKS_PATH = "/api/auth/jwks"
BETTER_AUTH_TTL_S = 15 * 60

_KINDS = {
    "EdDSA": (ed25519.Ed25519PrivateKey.generate, OKPAlgorithm),
    "ES256": (lambda: ec.generate_private_key(ec.SECP256R1()), ECAlgorithm),
    "RS256": (lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048), RSAAlgorithm),
}


class Issuer:
    """Signs tokens and publishes the public keys of `published` at `jwks_url`."""

    def __init__(self) -> None:
        self.keys: dict[str, tuple[str, Any]] = {}  # kid -> (alg, private key)
        self.published: list[str] = []
        self.unusable: list[dict[str, Any]] = []  # more JWKs to publish, as they are
        self.answer: object = None  # served instead of the JWK Set when set
        self.down = False  # the JWKS endpoint answers 503
        self.fetches = 0
        for alg in _KINDS:
            self.add_key(alg)
        server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{server.server_address[1]}"  # Better Auth's base URL
        self.jwks_url = self.url + JWKS_PATH

    def add_key(self, alg: str = "EdDSA", *, publish: bool = True) -> str:
        kid = f"{alg.lower()}-{uuid.uuid4().hex[:8]}"
        self.keys[kid] = (alg, _KINDS[alg][0]())
        if publish:
            self.published.append(kid)
        return kid

    def kid(self, alg: str = "EdDSA") -> str:
        """The first published key of this algorithm."""
        return next(kid for kid in self.published if self.keys[kid][0] == alg)

    def jwks(self) -> dict[str, Any]:
        keys = []
        for kid in self.published:
            alg, private = self.keys[kid]
            jwk = json.loads(_KINDS[alg][1].to_jwk(private.public_key()))
            jwk["kid"] = kid
            if alg != "EdDSA":  # Better Auth's Ed25519 JWK carries no `alg`
                jwk["alg"] = alg
            keys.append(jwk)
        return {"keys": keys + self.unusable}

    def claims(self, sub: str, ttl_s: int = BETTER_AUTH_TTL_S, **extra: Any) -> dict[str, Any]:
        now = int(time.time())
        claims = {"sub": sub, "iss": self.url, "aud": self.url, "iat": now, "exp": now + ttl_s}
        return {**claims, "email": f"{sub}@example.com", "emailVerified": True, **extra}

    def token(self, sub: str, *, kid: str | None = None, **claims: Any) -> str:
        kid = kid or self.kid()
        alg, private = self.keys[kid]
        return jwt.encode(self.claims(sub, **claims), private, algorithm=alg, headers={"kid": kid})

    def headers(self, sub: str, **claims: Any) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(sub, **claims)}"}

    def env(self) -> dict[str, str]:
        """The settings that make the service trust this provider."""
        return {"AUTH_JWKS_URL": self.jwks_url, "AUTH_ISSUER": self.url, "AUTH_AUDIENCE": self.url}

    @contextmanager
    def outage(self) -> Iterator[None]:
        self.down = True
        try:
            yield
        finally:
            self.down = False


def _handler(issuer: Issuer) -> type[BaseHTTPRequestHandler]:
    class JwksHandler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            issuer.fetches += 1
            if self.path != JWKS_PATH or issuer.down:
                self.send_error(404 if self.path != JWKS_PATH else 503)
                return
            body = json.dumps(issuer.answer or issuer.jwks()).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    return JwksHandler


ISSUER = Issuer()
