"""Service auth for the feed generator: service JWTs, with tokens that verified remembered.

A service token is a bearer credential: whoever holds it may use it until
it expires, and whether it verifies depends only on its bytes, the method
called, the clock and the issuer's key. So a token presented again need
not be parsed and its signature checked again: :class:`RememberingServiceAuth`
keeps tokens that passed the full check (signature by the issuer's
``#atproto`` key, ``aud``, ``lxm``, ``iat``, ``exp``), keyed by the exact
token text and the method, and accepts a repeat until the same expiry test
the full check applies would fail. A token whose issuer rotates keys meanwhile stays
accepted until it expires, as it would be by any server that checked it
once (service tokens live about a minute).

With ``jti`` replay protection on (the default), presenting a token twice
is refused as a replay, so there is nothing to remember: every token is
checked in full once and then refused. The memory helps clients that keep
one token for a while (a token from ``com.atproto.server.getServiceAuth``
used for several pages) on services that run without replay protection,
as the reference feed generator template does.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Final

from starlette.requests import HTTPConnection

from roost.auth import (
    Credentials,
    KeyResolver,
    ReplayCache,
    ServiceAuth,
    ServiceCredentials,
    bearer_token,
)
from roost.limits import JWT_CLOCK_SKEW_SECONDS

__all__ = ["REMEMBERED_TOKENS", "RememberingServiceAuth"]

#: Verified tokens remembered at most (then the memory starts over).
REMEMBERED_TOKENS: Final = 20_000


class RememberingServiceAuth(ServiceAuth):
    """:class:`~roost.auth.ServiceAuth` that remembers tokens that verified (see the module doc)."""

    def __init__(
        self,
        audience: str | Iterable[str],
        resolve_key: KeyResolver,
        *,
        replay_cache: ReplayCache | None | bool = True,
        clock: Callable[[], float] = time.time,
        max_entries: int = REMEMBERED_TOKENS,
    ) -> None:
        super().__init__(audience, resolve_key, replay_cache=replay_cache, clock=clock)
        if max_entries < 1:
            raise ValueError("max_entries must be positive")
        self.max_entries = max_entries
        #: (token, method) -> (latest time it is accepted, credentials)
        self._verified: dict[tuple[str, str], tuple[float, ServiceCredentials]] = {}
        self.hits = 0

    async def __call__(self, conn: HTTPConnection, nsid: str) -> Credentials:
        if self.replay_cache is not None:
            return await super().__call__(conn, nsid)
        token = bearer_token(conn)
        if token is None:
            return await super().__call__(conn, nsid)
        key = (token, nsid)
        known = self._verified.get(key)
        if known is not None:
            if self.clock() <= known[0]:
                self.hits += 1
                return known[1]
            del self._verified[key]  # expired: the full check says so
        creds = await super().__call__(conn, nsid)
        assert isinstance(creds, ServiceCredentials)
        verified = self._verified
        if len(verified) >= self.max_entries:
            verified.clear()
        verified[key] = (creds.payload["exp"] + JWT_CLOCK_SKEW_SECONDS, creds)
        return creds
