"""SessionAuth remembers verified tokens: repeats are cheap but judged the same.

A repeat of a verified token skips the parse and the MAC; it must still
expire on time, still go through ``check`` (a takedown or a revocation after
the first use), and a token that differs in any byte is verified afresh.
"""

from __future__ import annotations

from typing import Any

import pytest
from starlette.datastructures import Headers

from roost.auth import (
    VERIFIED_TOKEN_CACHE_SIZE,
    ExpiredToken,
    InvalidToken,
    SessionAuth,
    SessionCredentials,
)
from roost.errors import AccountTakedown
from roost.jwt import create_hs256_jwt

SECRET = b"s" * 32
SERVICE_DID = "did:web:pds.test"
ALICE = "did:plc:aaaaaaaaaaaaaaaaaaaaaaaa"


class _Conn:
    def __init__(self, token: str) -> None:
        self.headers = Headers({"authorization": f"Bearer {token}"})


class _Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def _token(exp: float = 1_100.0, sub: str = ALICE, **claims: Any) -> str:
    payload = {"scope": "com.atproto.access", "sub": sub, "aud": SERVICE_DID, "iat": 1_000, "exp": exp}
    return create_hs256_jwt(SECRET, {**payload, **claims})


async def test_a_remembered_token_still_expires() -> None:
    clock = _Clock()
    auth = SessionAuth(SECRET, SERVICE_DID, clock=clock)
    token = _token(exp=1_100.0)
    first = await auth(_Conn(token), "x.y.z")  # type: ignore[arg-type]
    assert isinstance(first, SessionCredentials) and first.did == ALICE
    clock.now = 1_050.0
    assert await auth(_Conn(token), "x.y.z") == first  # type: ignore[arg-type]
    clock.now = 1_100.5
    with pytest.raises(ExpiredToken):
        await auth(_Conn(token), "x.y.z")  # type: ignore[arg-type]
    with pytest.raises(ExpiredToken):  # and stays expired
        await auth(_Conn(token), "x.y.z")  # type: ignore[arg-type]


async def test_check_runs_on_every_use() -> None:
    taken: set[str] = set()

    async def check(creds: SessionCredentials) -> None:
        if creds.did in taken:
            raise AccountTakedown("Account has been taken down")

    auth = SessionAuth(SECRET, SERVICE_DID, check=check, clock=_Clock())
    token = _token()
    await auth(_Conn(token), "x.y.z")  # type: ignore[arg-type]
    taken.add(ALICE)
    with pytest.raises(AccountTakedown):
        await auth(_Conn(token), "x.y.z")  # type: ignore[arg-type]


async def test_a_tampered_copy_is_verified_afresh() -> None:
    auth = SessionAuth(SECRET, SERVICE_DID, clock=_Clock())
    token = _token()
    await auth(_Conn(token), "x.y.z")  # type: ignore[arg-type]
    head, payload, sig = token.split(".")
    forged = ".".join((head, payload, sig[:-2] + ("AA" if sig[-2:] != "AA" else "BB")))
    with pytest.raises(InvalidToken):
        await auth(_Conn(forged), "x.y.z")  # type: ignore[arg-type]
    # a token that failed is not remembered either
    with pytest.raises(InvalidToken):
        await auth(_Conn(forged), "x.y.z")  # type: ignore[arg-type]
    other = SessionAuth(b"t" * 32, SERVICE_DID, clock=_Clock())
    with pytest.raises(InvalidToken):  # the cache is per verifier (per secret)
        await other(_Conn(token), "x.y.z")  # type: ignore[arg-type]


async def test_the_cache_is_bounded() -> None:
    auth = SessionAuth(SECRET, SERVICE_DID, clock=_Clock())
    for i in range(VERIFIED_TOKEN_CACHE_SIZE + 5):
        await auth(_Conn(_token(jti=f"t{i}")), "x.y.z")  # type: ignore[arg-type]
    assert len(auth._verified) <= VERIFIED_TOKEN_CACHE_SIZE
