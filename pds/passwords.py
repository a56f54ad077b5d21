"""Account passwords (argon2id) and app passwords.

Main passwords are hashed with argon2id through libsodium (``nacl.pwhash``) in
its standard string form (``$argon2id$v=19$m=...,t=...,p=...$salt$hash``), so
the parameters travel with each hash and :func:`needs_rehash` can tell when a
stored hash is weaker than today's setting.

Hashing costs :data:`OPSLIMIT` passes over :data:`MEMLIMIT` bytes (libsodium's
"interactive" argon2id setting: about 85 ms and 64 MiB per hash on the 2-core
development machine). From async code use :func:`hash_password_async` and
:func:`verify_password_async`: they run on a dedicated pool of
:data:`HASH_CONCURRENCY` threads, so a login flood queues instead of allocating
64 MiB per request, and does not occupy the default executor that file I/O uses.

Passwords longer than :data:`MAX_PASSWORD_LENGTH` characters (or
:data:`MAX_PASSWORD_BYTES` UTF-8 bytes) are refused before any hashing.

App passwords (``com.atproto.server.createAppPassword``) look like
``abcd-2345-efgh-6789``: 16 characters of the lower-case base32 alphabet
(``a-z``, ``2-7``) in four groups, 80 random bits, as the reference PDS makes them.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import re
import secrets
from concurrent.futures import ThreadPoolExecutor

from nacl import pwhash

from roost.errors import RoostError

__all__ = [
    "APP_PASSWORD_ALPHABET",
    "HASH_CONCURRENCY",
    "MAX_HASH_MEMLIMIT",
    "MAX_HASH_OPSLIMIT",
    "MAX_PASSWORD_BYTES",
    "MAX_PASSWORD_LENGTH",
    "MEMLIMIT",
    "MIN_PASSWORD_LENGTH",
    "OPSLIMIT",
    "InvalidPassword",
    "app_password_digest",
    "check_new_password",
    "generate_app_password",
    "hash_password",
    "hash_password_async",
    "is_app_password_format",
    "needs_rehash",
    "verify_password",
    "verify_password_async",
]

# -- policy -------------------------------------------------------------------

#: Shortest password accepted when one is set (the reference server sets no
#: minimum; the Bluesky app asks for 8).
MIN_PASSWORD_LENGTH = 8
#: Longest password accepted, in characters (reference ``NEW_PASSWORD_MAX_LENGTH``).
MAX_PASSWORD_LENGTH = 256
#: Longest password accepted, in UTF-8 bytes (256 characters of up to 4 bytes).
MAX_PASSWORD_BYTES = 1024

# -- argon2id cost ------------------------------------------------------------

#: argon2id passes (libsodium ``OPSLIMIT_INTERACTIVE``).
OPSLIMIT = 2
#: argon2id memory in bytes (libsodium ``MEMLIMIT_INTERACTIVE``, 64 MiB).
MEMLIMIT = 64 * 1024 * 1024
#: Stored hashes asking for more than this are refused unverified (a corrupt or
#: planted row must not make a login allocate gigabytes or spin for minutes).
MAX_HASH_OPSLIMIT = 16
MAX_HASH_MEMLIMIT = 1024 * 1024 * 1024
#: Hashes computed at once by the async helpers (each holds MEMLIMIT bytes).
HASH_CONCURRENCY = 2

_HASH_EXECUTOR = ThreadPoolExecutor(max_workers=HASH_CONCURRENCY, thread_name_prefix="pwhash")

_hash_match = re.compile(
    r"\$argon2id\$v=19\$m=([0-9]{1,10}),t=([0-9]{1,10}),p=([0-9]{1,3})"
    r"\$[A-Za-z0-9+/]{11,64}\$[A-Za-z0-9+/]{16,128}"
).fullmatch


class InvalidPassword(RoostError):
    """A password that breaks the policy (lexicon error ``InvalidPassword``)."""

    error = "InvalidPassword"


def _encode(password: str) -> bytes | None:
    """UTF-8 bytes of an acceptable-length password, else None."""
    if not isinstance(password, str) or len(password) > MAX_PASSWORD_LENGTH:
        return None
    try:
        data = password.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates
        return None
    return data if len(data) <= MAX_PASSWORD_BYTES else None


def check_new_password(password: str) -> None:
    """Raise :class:`InvalidPassword` unless ``password`` may be set as a new password."""
    if not isinstance(password, str):
        raise InvalidPassword("password must be a string")
    if len(password) < MIN_PASSWORD_LENGTH:
        raise InvalidPassword(f"password must be at least {MIN_PASSWORD_LENGTH} characters")
    if _encode(password) is None:
        raise InvalidPassword(f"password must be at most {MAX_PASSWORD_LENGTH} characters")


# -- hashing ------------------------------------------------------------------


def hash_password(
    password: str, *, opslimit: int | None = None, memlimit: int | None = None
) -> str:
    """The argon2id hash string of ``password`` (a fresh random salt each time).

    Raises :class:`InvalidPassword` for a non-string or over-long password,
    before spending anything on it. ``opslimit``/``memlimit`` default to
    :data:`OPSLIMIT`/:data:`MEMLIMIT` as they are at call time.
    """
    data = _encode(password)
    if data is None:
        raise InvalidPassword(
            f"password must be a string of at most {MAX_PASSWORD_LENGTH} characters"
        )
    hashed = pwhash.argon2id.str(
        data,
        opslimit=OPSLIMIT if opslimit is None else opslimit,
        memlimit=MEMLIMIT if memlimit is None else memlimit,
    )
    return hashed.rstrip(b"\x00").decode("ascii")


def _parse_hash(hashed: object) -> tuple[int, int] | None:
    """``(opslimit, memlimit in bytes)`` of a well-formed argon2id hash string."""
    if not isinstance(hashed, str) or len(hashed) > 256:
        return None
    m = _hash_match(hashed)
    if m is None:
        return None
    return int(m.group(2)), int(m.group(1)) * 1024


def verify_password(password: str, hashed: str) -> bool:
    """True if ``password`` matches ``hashed``; False for anything else.

    Never raises: a wrong password, an over-long one, a malformed hash, a hash
    of another algorithm or with absurd cost parameters all give False. The
    comparison itself is libsodium's (constant time).
    """
    data = _encode(password)
    params = _parse_hash(hashed)
    if data is None or params is None:
        return False
    opslimit, memlimit = params
    if opslimit > MAX_HASH_OPSLIMIT or memlimit > MAX_HASH_MEMLIMIT:
        return False
    try:
        return bool(pwhash.argon2id.verify(hashed.encode("ascii"), data))
    except Exception:  # noqa: BLE001 - InvalidkeyError on mismatch, others if malformed
        return False


def needs_rehash(hashed: str) -> bool:
    """True if ``hashed`` is not a usable argon2id hash at today's cost (or stronger).

    Call after a successful verify and store a fresh hash when True.
    """
    params = _parse_hash(hashed)
    if params is None:
        return True
    opslimit, memlimit = params
    if opslimit > MAX_HASH_OPSLIMIT or memlimit > MAX_HASH_MEMLIMIT:
        return True  # unusable: verify_password refuses it
    return opslimit < OPSLIMIT or memlimit < MEMLIMIT


async def hash_password_async(password: str) -> str:
    """:func:`hash_password` on the bounded hashing pool."""
    if _encode(password) is None:  # refuse before queueing
        return hash_password(password)
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_HASH_EXECUTOR, functools.partial(hash_password, password))


async def verify_password_async(password: str, hashed: str) -> bool:
    """:func:`verify_password` on the bounded hashing pool."""
    if _encode(password) is None or _parse_hash(hashed) is None:
        return False
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(
        _HASH_EXECUTOR, functools.partial(verify_password, password, hashed)
    )


# -- app passwords ------------------------------------------------------------

#: Characters of a generated app password (lower-case RFC 4648 base32).
APP_PASSWORD_ALPHABET = "abcdefghijklmnopqrstuvwxyz234567"
_app_password_match = re.compile(r"[a-z0-9]{4}-[a-z0-9]{4}-[a-z0-9]{4}-[a-z0-9]{4}").fullmatch


def generate_app_password() -> str:
    """A new app password, ``xxxx-xxxx-xxxx-xxxx`` over ``a-z2-7`` (80 random bits)."""
    chars = "".join(secrets.choice(APP_PASSWORD_ALPHABET) for _ in range(16))
    return "-".join(chars[i : i + 4] for i in range(0, 16, 4))


def is_app_password_format(s: object) -> bool:
    """True if ``s`` is shaped like an app password (four groups of four ``a-z0-9``).

    Slightly wider than what :func:`generate_app_password` emits, so a
    look-alike is still checked as an app password rather than silently not.
    """
    return isinstance(s, str) and _app_password_match(s) is not None


def app_password_digest(did: str, password: str) -> str:
    """A deterministic digest of an app password, for looking it up by value.

    App passwords carry 80 random bits, so a fast hash is safe here (guessing
    is hopeless either way) and lets a login find the matching row in one
    query instead of running argon2 once per app password of the account.
    The DID is mixed in so equal passwords of two accounts differ.
    """
    data = f"{did}\x00{password}".encode("utf-8", "surrogatepass")
    h = hashlib.sha256(b"roost app password\x00" + data)
    return "sha256:" + h.hexdigest()
