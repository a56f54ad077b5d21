"""pds.passwords: argon2id hashing, policy, app passwords."""

from __future__ import annotations

import asyncio
import re

import pytest

from pds import passwords
from pds.passwords import (
    MAX_PASSWORD_LENGTH,
    InvalidPassword,
    app_password_digest,
    check_new_password,
    generate_app_password,
    hash_password,
    hash_password_async,
    is_app_password_format,
    needs_rehash,
    verify_password,
    verify_password_async,
)


@pytest.fixture
def cheap(monkeypatch: pytest.MonkeyPatch) -> None:
    """Lowest argon2id cost, so the tests stay fast."""
    monkeypatch.setattr(passwords, "OPSLIMIT", 1)
    monkeypatch.setattr(passwords, "MEMLIMIT", 8192)


def test_default_cost_round_trip() -> None:
    hashed = hash_password("correct horse battery staple")
    assert hashed.startswith("$argon2id$v=19$m=65536,t=2,p=1$")
    assert verify_password("correct horse battery staple", hashed)
    assert not verify_password("correct horse battery stapler", hashed)
    assert not needs_rehash(hashed)


def test_hash_and_verify(cheap: None) -> None:
    hashed = hash_password("hunter22")
    assert hashed.startswith("$argon2id$v=19$m=8,t=1,p=1$")
    assert verify_password("hunter22", hashed)
    assert not verify_password("hunter23", hashed)
    assert not verify_password("", hashed)
    assert hash_password("hunter22") != hashed  # fresh salt


def test_unicode_passwords(cheap: None) -> None:
    hashed = hash_password("p\u00e4ssw\u00f6rd \u2603")
    assert verify_password("p\u00e4ssw\u00f6rd \u2603", hashed)
    assert not verify_password("passwoerd \u2603", hashed)
    assert not verify_password("\ud800", hashed)  # lone surrogate: never raises


@pytest.mark.parametrize(
    "hashed",
    [
        "",
        "plaintext",
        "$argon2id$",
        "$argon2i$v=19$m=8,t=1,p=1$c2FsdHNhbHRzYWx0c2FsdA$aGFzaGhhc2hoYXNoaGFzaGhhc2g",
        "$argon2id$v=19$m=8,t=1,p=1$c2FsdHNhbHRzYWx0c2FsdA$!!!!",
        "$argon2id$v=19$m=99999999,t=1,p=1$c2FsdHNhbHRzYWx0c2FsdA$aGFzaGhhc2hoYXNoaGFzaGhhc2g",
        "$argon2id$v=19$m=8,t=999999,p=1$c2FsdHNhbHRzYWx0c2FsdA$aGFzaGhhc2hoYXNoaGFzaGhhc2g",
        "$scrypt$ln=14,r=8,p=1$abc$def",
        "x" * 10_000,
    ],
)
def test_verify_never_raises_on_malformed_hashes(cheap: None, hashed: str) -> None:
    assert verify_password("whatever", hashed) is False
    assert needs_rehash(hashed)


def test_verify_well_formed_foreign_hash(cheap: None) -> None:
    foreign = "$argon2id$v=19$m=8,t=1,p=1$c2FsdHNhbHRzYWx0c2FsdA$aGFzaGhhc2hoYXNoaGFzaGhhc2g"
    assert verify_password("whatever", foreign) is False
    assert not needs_rehash(foreign)


def test_verify_wrong_types_are_false() -> None:
    assert verify_password(None, "$argon2id$") is False  # type: ignore[arg-type]
    assert verify_password("x", None) is False  # type: ignore[arg-type]
    assert verify_password("x", b"$argon2id$") is False  # type: ignore[arg-type]


def test_over_long_passwords_are_refused_before_hashing(
    cheap: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    hashed = hash_password("a" * MAX_PASSWORD_LENGTH)  # the longest allowed
    assert verify_password("a" * MAX_PASSWORD_LENGTH, hashed)

    calls: list[object] = []

    def boom(*args: object, **kwargs: object) -> bytes:
        calls.append(args)
        raise AssertionError("argon2 must not run")

    monkeypatch.setattr(passwords.pwhash.argon2id, "str", boom)
    monkeypatch.setattr(passwords.pwhash.argon2id, "verify", boom)
    too_long = "a" * (MAX_PASSWORD_LENGTH + 1)
    with pytest.raises(InvalidPassword) as info:
        hash_password(too_long)
    assert info.value.error == "InvalidPassword"
    assert verify_password(too_long, hashed) is False
    assert verify_password("a" * 10_000_000, hashed) is False
    assert calls == []


def test_needs_rehash(cheap: None, monkeypatch: pytest.MonkeyPatch) -> None:
    weak = hash_password("password1")
    assert not needs_rehash(weak)
    monkeypatch.setattr(passwords, "OPSLIMIT", 2)
    assert needs_rehash(weak)
    stronger = hash_password("password1", opslimit=3, memlimit=16384)
    assert not needs_rehash(stronger)


def test_new_password_policy() -> None:
    check_new_password("eight ch")
    check_new_password("x" * MAX_PASSWORD_LENGTH)
    for bad in ["", "short", "x" * (MAX_PASSWORD_LENGTH + 1), None]:
        with pytest.raises(InvalidPassword):
            check_new_password(bad)  # type: ignore[arg-type]


async def test_async_helpers(cheap: None) -> None:
    hashed = await hash_password_async("async password")
    assert await verify_password_async("async password", hashed)
    assert not await verify_password_async("wrong", hashed)
    assert not await verify_password_async("async password", "garbage")
    with pytest.raises(InvalidPassword):
        await hash_password_async("x" * 100_000)


async def test_async_hashing_is_bounded(cheap: None, monkeypatch: pytest.MonkeyPatch) -> None:
    import threading
    import time

    running = 0
    peak = 0
    lock = threading.Lock()
    real = passwords.pwhash.argon2id.verify

    def tracked(hashed: bytes, password: bytes) -> bool:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.02)
        try:
            return bool(real(hashed, password))
        finally:
            with lock:
                running -= 1

    hashed = hash_password("flood me")
    monkeypatch.setattr(passwords.pwhash.argon2id, "verify", tracked)
    results = await asyncio.gather(*(verify_password_async("flood me", hashed) for _ in range(12)))
    assert all(results)
    assert peak == passwords.HASH_CONCURRENCY == 2


def test_app_password_format() -> None:
    seen = set()
    for _ in range(200):
        pw = generate_app_password()
        assert re.fullmatch(r"[a-z2-7]{4}-[a-z2-7]{4}-[a-z2-7]{4}-[a-z2-7]{4}", pw)
        assert is_app_password_format(pw)
        seen.add(pw)
    assert len(seen) == 200
    assert is_app_password_format("1234-abcd-5678-efgh")
    bad_values: list[object] = [
        "",
        "abcd-efgh-ijkl",
        "ABCD-efgh-ijkl-mnop",
        "abcd-efgh-ijkl-mnop-",
        "abcdefghijklmnop",
        "abcd_efgh_ijkl_mnop",
        "abcd-efgh-ijkl-mn\u00f6p",
        None,
        1234,
    ]
    for bad in bad_values:
        assert not is_app_password_format(bad)


def test_app_password_digest() -> None:
    pw = "abcd-efgh-ijkl-mnop"
    d = app_password_digest("did:plc:aaa", pw)
    assert d == app_password_digest("did:plc:aaa", pw)
    assert d != app_password_digest("did:plc:bbb", pw)
    assert d != app_password_digest("did:plc:aaa", "abcd-efgh-ijkl-mnoq")
    assert d.startswith("sha256:") and len(d) == 7 + 64
