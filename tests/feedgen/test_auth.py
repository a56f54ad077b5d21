"""Remembered service tokens: checked in full once, then accepted until they expire."""

from __future__ import annotations

import pytest
from starlette.requests import Request

from feedgen.auth import RememberingServiceAuth
from roost.crypto import PrivateKey, PublicKey
from roost.errors import BadJwt, BadJwtLexiconMethod, BadJwtSignature, JwtExpired
from roost.jwt import create_service_jwt
from roost.limits import JWT_CLOCK_SKEW_SECONDS

SERVICE = "did:web:feeds.example"
VIEWER = "did:plc:viewer"
SKELETON = "app.bsky.feed.getFeedSkeleton"
KEY = PrivateKey.generate("k256")


def request(token: str) -> Request:
    return Request({"type": "http", "method": "GET", "path": "/", "query_string": b"",
                    "headers": [(b"authorization", f"Bearer {token}".encode())]})


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def verifier(clock: Clock, lookups: list[str], *, replay: bool = False) -> RememberingServiceAuth:
    async def resolve_key(did: str, *, force_refresh: bool) -> PublicKey:
        lookups.append(did)
        return KEY.public_key

    return RememberingServiceAuth(SERVICE, resolve_key, replay_cache=replay, clock=clock)


async def test_a_token_is_checked_once_then_remembered_until_it_expires() -> None:
    clock, lookups = Clock(), []
    auth = verifier(clock, lookups)
    token = create_service_jwt(KEY, iss=VIEWER, aud=SERVICE, lxm=SKELETON, exp_seconds=60,
                               now=clock.now)
    first = await auth(request(token), SKELETON)
    assert first.did == VIEWER and lookups == [VIEWER]
    clock.now += 60 + JWT_CLOCK_SKEW_SECONDS  # the last moment the full check accepts it
    assert await auth(request(token), SKELETON) == first
    assert lookups == [VIEWER] and auth.hits == 1
    # another method is checked in full (and its lxm does not match)
    with pytest.raises(BadJwtLexiconMethod):
        await auth(request(token), "app.bsky.feed.getFeed")
    clock.now += 1
    with pytest.raises(JwtExpired):
        await auth(request(token), SKELETON)
    with pytest.raises(JwtExpired):
        await auth(request(token), SKELETON)


async def test_a_bad_token_is_never_remembered() -> None:
    clock, lookups = Clock(), []
    auth = verifier(clock, lookups)
    forged = create_service_jwt(PrivateKey.generate("k256"), iss=VIEWER, aud=SERVICE,
                                lxm=SKELETON, now=clock.now)
    for _ in range(2):
        with pytest.raises(BadJwtSignature):
            await auth(request(forged), SKELETON)
    assert auth.hits == 0


async def test_with_replay_protection_a_repeat_is_a_replay() -> None:
    clock, lookups = Clock(), []
    auth = verifier(clock, lookups, replay=True)
    token = create_service_jwt(KEY, iss=VIEWER, aud=SERVICE, lxm=SKELETON, now=clock.now)
    assert (await auth(request(token), SKELETON)).did == VIEWER
    with pytest.raises(BadJwt, match="replayed"):
        await auth(request(token), SKELETON)
    assert auth.hits == 0
