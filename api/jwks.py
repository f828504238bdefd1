"""The identity provider's public keys (its JWKS), kept fresh without blocking a request."""

import asyncio
import contextlib
import logging
import math
import time
from typing import Any

import httpx
import jwt

from api import metrics
from api.errors import RETRY_AFTER_S, ApiError

log = logging.getLogger("todo.identity")

KID_REFETCH_S = 30.0  # an unknown kid fetches the keys again at most this often
REFRESH_S = 300.0  # the keys are fetched again this often
RETRY_S = 5.0  # ... or this often, while they never could be
FETCH_TIMEOUT_S = 5.0  # one whole fetch


class UnknownKey(Exception):
    """The token names a key the provider does not publish."""


class JwksKeys:
    """The provider's signing keys by kid: fetched at start, again every REFRESH_S, and on an
    unknown kid at most once per KID_REFETCH_S. When the provider cannot be reached or
    answers nonsense, the last good keys stay; a JWK Set it serves is the truth, even an
    empty one (so withdrawing a key withdraws it)."""

    def __init__(self, url: str, algorithms: list[str], wait_s: float):
        self.url, self.algorithms, self.wait_s = url, algorithms, wait_s
        self.keys: dict[str, jwt.PyJWK] = {}
        self.generation = 0  # changes whenever the keys do
        self._fetched = False
        self._document: object = None
        self._last_refetch = -math.inf
        self._fetching = asyncio.Lock()  # one fetch at a time; a newer one never loses
        self._client: httpx.AsyncClient | None = None
        self._refresher: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Wait at most `wait_s` for the first keys, retrying; then keep them fresh."""
        self._client = httpx.AsyncClient(timeout=FETCH_TIMEOUT_S)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.wait_s):
                delay = 0.25
                while not await self._fetch():
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 2.0)
        if not self._fetched:
            log.error("no keys from %s yet: 503 AUTH_UNAVAILABLE until they come", self.url)
        self._refresher = asyncio.create_task(self._refresh())

    async def close(self) -> None:
        if self._refresher:
            self._refresher.cancel()
            await asyncio.gather(self._refresher, return_exceptions=True)
        if self._client:
            await self._client.aclose()

    async def key_for(self, kid: str) -> jwt.PyJWK:
        if kid not in self.keys:
            async with self._fetching:  # requests meeting a new kid wait for one fetch
                stale = time.monotonic() - self._last_refetch >= KID_REFETCH_S
                if kid not in self.keys and stale:
                    self._last_refetch = time.monotonic()
                    await self._fetch()
        if not self._fetched:
            raise ApiError(
                503,
                "AUTH_UNAVAILABLE",
                "The identity provider's keys cannot be fetched right now; retry shortly.",
                headers={"Retry-After": RETRY_AFTER_S},
            )
        if kid not in self.keys:
            raise UnknownKey(kid)
        return self.keys[kid]

    async def _refresh(self) -> None:
        while True:
            await asyncio.sleep(REFRESH_S if self._fetched else RETRY_S)
            async with self._fetching:
                await self._fetch()

    async def _fetch(self) -> bool:
        assert self._client is not None, "start() first"
        try:
            async with asyncio.timeout(FETCH_TIMEOUT_S):
                response = await self._client.get(self.url)
            response.raise_for_status()
            document = response.json()
            keys = self._signing_keys(document)
        except Exception as error:  # whatever the provider answers, the last good keys stay
            log.warning(
                "JWKS fetch from %s failed (%s: %s); keeping the %d keys we have",
                self.url,
                type(error).__name__,
                error,
                len(self.keys),
            )
            metrics.JWKS_FETCHES.labels("failed").inc()
            return False
        metrics.JWKS_FETCHES.labels("ok").inc()
        self._fetched = True
        if document != self._document:
            self.keys, self._document = keys, document
            self.generation += 1
            log.info("JWKS from %s: keys %s", self.url, ", ".join(keys) or "none")
        return True

    def _signing_keys(self, document: Any) -> dict[str, jwt.PyJWK]:
        """The usable signing keys of a JWK Set, by kid; ValueError when it is not one."""
        if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
            raise ValueError("not a JWK Set")
        keys = {}
        for data in document["keys"]:
            with contextlib.suppress(jwt.PyJWTError, AttributeError, TypeError):
                key = jwt.PyJWK(data)  # refuses what it cannot use
                usable = key.public_key_use in (None, "sig")
                if key.key_id and usable and key.algorithm_name in self.algorithms:
                    keys[key.key_id] = key
        if not keys:
            log.warning("the JWKS at %s has no key for %s", self.url, ", ".join(self.algorithms))
        return keys
