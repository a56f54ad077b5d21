"""Auth verifiers for XRPC methods, and minting service tokens for outgoing calls.

A verifier is an object with two methods::

    accepts(conn) -> bool                        # is this request's credential my kind?
    async __call__(conn, nsid) -> Credentials    # verify it, or raise a typed error

``conn`` is the Starlette ``Request`` or ``WebSocket``; ``nsid`` the method
called (service tokens are bound to it by ``lxm``). Each method picks its
verifier; they compose:

- :class:`SessionAuth`: ``Bearer`` HS256 session tokens (access or refresh)
  signed with the server's secret, with allowed scopes and an optional
  ``check`` callback that confirms the account/session is still valid.
  Expired -> ``400 ExpiredToken``; anything else wrong -> ``400 InvalidToken``;
  no bearer token -> ``401 AuthMissing``.
- :class:`AdminAuth`: ``Basic base64("admin:<password>")``, compared in
  constant time; anything else -> ``401 AuthenticationRequired``.
- :class:`ServiceAuth`: inter-service ``Bearer`` JWTs (ES256K / ES256) signed
  by the issuer's ``#atproto`` key, fetched through an injected
  ``async resolve_key(did, *, force_refresh) -> PublicKey`` (retried once with
  ``force_refresh=True`` when the signature fails: key rotation). Checks
  ``aud``, ``exp``, ``iat``, ``lxm`` (must name the called method) and rejects
  a ``jti`` seen before within the token's lifetime (:class:`ReplayCache`).
  Errors are the ``BadJwt*`` family (401); no token -> ``401 MissingJwt``.
- :func:`optional` (no ``Authorization`` header -> :data:`UNAUTHENTICATED`)
  and :func:`any_of` (the first verifier that accepts the credential's kind
  decides; e.g. a session token or a service token on the same route).

Credentials are frozen values: :class:`Unauthenticated`,
:class:`SessionCredentials`, :class:`ServiceCredentials`,
:class:`AdminCredentials`; each has ``did`` (``None`` when nobody in
particular is authenticated).

Limitation: the key resolver gets the bare issuer DID, so labeler-issued
tokens (``iss`` = ``did#atproto_labeler``, signed with ``#atproto_label``)
verify only if the resolver returns that key for the DID.

Error classes :class:`AuthMissing`, :class:`InvalidToken`,
:class:`ExpiredToken` and :class:`MissingJwt` are defined here until they move
to :mod:`roost.errors`.
"""

from __future__ import annotations

import base64
import binascii
import heapq
import hmac
import json
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Final, Protocol, runtime_checkable

from starlette.requests import HTTPConnection

from roost.crypto import PrivateKey, PublicKey
from roost.errors import (
    AuthMissing,
    AuthRequired,
    BadJwt,
    BadJwtIss,
    BadJwtSignature,
    CryptoError,
    ExpiredToken,
    IdentityError,
    InvalidToken,
    JwtError,
    JwtExpired,
    MissingJwt,
    RoostError,
)
from roost.jwt import (
    ACCESS_TOKEN_TYP,
    REFRESH_TOKEN_TYP,
    ParsedJwt,
    b64url_decode,
    check_service_claims,
    create_service_jwt,
    parse_jwt,
    verify_hs256_jwt,
    verify_service_signature,
)
from roost.limits import JWT_CLOCK_SKEW_SECONDS

__all__ = [
    "ACCESS_SCOPES",
    "FULL_ACCESS_SCOPES",
    "PRIVILEGED_SCOPES",
    "SCOPE_ACCESS",
    "SCOPE_APP_PASS",
    "SCOPE_APP_PASS_PRIVILEGED",
    "SCOPE_REFRESH",
    "SCOPE_SIGNUP_QUEUED",
    "SCOPE_TAKENDOWN",
    "UNAUTHENTICATED",
    "VERIFIED_TOKEN_CACHE_SIZE",
    "AdminAuth",
    "AdminCredentials",
    "AuthMissing",
    "Credentials",
    "ExpiredToken",
    "InvalidToken",
    "KeyResolver",
    "MissingJwt",
    "ReplayCache",
    "ServiceAuth",
    "ServiceCredentials",
    "SessionAuth",
    "SessionCredentials",
    "Unauthenticated",
    "Verifier",
    "any_of",
    "bearer_token",
    "mint_service_token",
    "optional",
    "service_auth_headers",
]

Clock = Callable[[], float]

SCOPE_ACCESS: Final = "com.atproto.access"
SCOPE_APP_PASS_PRIVILEGED: Final = "com.atproto.appPassPrivileged"
SCOPE_APP_PASS: Final = "com.atproto.appPass"
SCOPE_REFRESH: Final = "com.atproto.refresh"
SCOPE_TAKENDOWN: Final = "com.atproto.takendown"
SCOPE_SIGNUP_QUEUED: Final = "com.atproto.signupQueued"

#: Scopes of ordinary authenticated routes (main password or any app password).
ACCESS_SCOPES: Final = frozenset({SCOPE_ACCESS, SCOPE_APP_PASS_PRIVILEGED, SCOPE_APP_PASS})
#: Privileged routes (DMs, privileged service tokens): no plain app passwords.
PRIVILEGED_SCOPES: Final = frozenset({SCOPE_ACCESS, SCOPE_APP_PASS_PRIVILEGED})
#: "Full-access" routes: the main password only.
FULL_ACCESS_SCOPES: Final = frozenset({SCOPE_ACCESS})
#: Session tokens a :class:`SessionAuth` remembers as verified (then it starts over).
VERIFIED_TOKEN_CACHE_SIZE: Final = 10_000

_SERVICE_ALGS: Final = frozenset({"ES256K", "ES256"})


# -- errors (to move to roost.errors) ---------------------------------------------


def _challenge(exc: RoostError, scheme: str) -> RoostError:
    """Attach the ``WWW-Authenticate`` challenge the XRPC layer sends with a 401."""
    exc.www_authenticate = scheme  # type: ignore[attr-defined]
    return exc


# -- credentials ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Unauthenticated:
    """No credentials were presented (only from :func:`optional` or no verifier)."""

    did: None = None


UNAUTHENTICATED: Final = Unauthenticated()


@dataclass(frozen=True, slots=True)
class SessionCredentials:
    """A verified HS256 session token: ``token_type`` is ``"access"`` or ``"refresh"``."""

    did: str
    scope: str
    token_type: str
    jti: str | None = None
    payload: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class ServiceCredentials:
    """A verified service-auth JWT; ``did`` is its issuer (the account acted for)."""

    did: str
    aud: str
    lxm: str | None
    jti: str | None
    payload: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class AdminCredentials:
    """The operator, by the admin password."""

    did: None = None


Credentials = Unauthenticated | SessionCredentials | ServiceCredentials | AdminCredentials


# -- header parsing --------------------------------------------------------------------


def _authorization(conn: HTTPConnection) -> tuple[str, str] | None:
    """``(scheme lower-cased, rest)`` of the ``Authorization`` header, or None."""
    value = conn.headers.get("authorization")
    if not value:
        return None
    scheme, _, rest = value.strip().partition(" ")
    return scheme.lower(), rest.strip()


def bearer_token(conn: HTTPConnection) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None."""
    auth = _authorization(conn)
    if auth is None or auth[0] != "bearer" or not auth[1]:
        return None
    return auth[1]


def _token_alg(token: str) -> str | None:
    """The ``alg`` of a JWT's header without verifying anything; None if unreadable."""
    head = token.partition(".")[0]
    if not head or len(head) > 1024:
        return None
    try:
        header = json.loads(b64url_decode(head))
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    alg = header.get("alg") if isinstance(header, dict) else None
    return alg if isinstance(alg, str) else None


# -- verifiers ----------------------------------------------------------------------------


@runtime_checkable
class Verifier(Protocol):
    """What a method's ``auth=`` takes."""

    def accepts(self, conn: HTTPConnection) -> bool: ...

    async def __call__(self, conn: HTTPConnection, nsid: str) -> Credentials: ...


SessionCheck = Callable[[SessionCredentials], Awaitable["SessionCredentials | None"]]


class SessionAuth:
    """``Bearer`` HS256 session tokens issued by this server.

    ``token_type="access"`` checks ``typ: at+jwt``; ``"refresh"`` checks
    ``typ: refresh+jwt``, scope ``com.atproto.refresh`` and a ``jti``.
    ``audience`` is the server's own DID (the tokens' ``aud``). ``scopes``
    lists the scopes the route allows. ``check``, if given, is awaited with
    the credentials once the token verifies: it raises (for instance
    ``ExpiredToken`` for a revoked refresh token, or an account-status error)
    or returns replacement credentials or None.

    A client sends the same token with every request, so tokens that verified
    are remembered (at most :data:`VERIFIED_TOKEN_CACHE_SIZE`) with their
    expiry: a repeat skips the parse and the MAC but not the expiry test nor
    ``check``. Everything else verification decides depends only on the
    token's bytes and this verifier's fixed settings.
    """

    def __init__(
        self,
        secret: bytes,
        audience: str,
        *,
        token_type: str = "access",
        scopes: Iterable[str] | None = None,
        check: SessionCheck | None = None,
        clock: Clock = time.time,
    ) -> None:
        if token_type == "access":
            self._typ = ACCESS_TOKEN_TYP
            default_scopes: Iterable[str] = ACCESS_SCOPES
        elif token_type == "refresh":
            self._typ = REFRESH_TOKEN_TYP
            default_scopes = (SCOPE_REFRESH,)
        else:
            raise ValueError('token_type must be "access" or "refresh"')
        if not isinstance(secret, (bytes, bytearray)) or not secret:
            raise ValueError("secret must be non-empty bytes")
        self.secret = bytes(secret)
        self.audience = audience
        self.token_type = token_type
        self.scopes = frozenset(default_scopes if scopes is None else scopes)
        self.check = check
        self.clock = clock
        #: token -> (exp, credentials) of tokens that verified
        self._verified: dict[str, tuple[float, SessionCredentials]] = {}

    def accepts(self, conn: HTTPConnection) -> bool:
        token = bearer_token(conn)
        return token is not None and _token_alg(token) == "HS256"

    async def __call__(self, conn: HTTPConnection, nsid: str) -> Credentials:
        token = bearer_token(conn)
        if token is None:
            raise _challenge(AuthMissing("Authentication Required"), "Bearer")
        now = self.clock()
        known = self._verified.get(token)
        if known is not None:
            if now > known[0]:
                del self._verified[token]
                raise ExpiredToken("Token has expired")
            creds = known[1]
        else:
            creds = self._verify(token, now)
        if self.check is not None:
            replaced = await self.check(creds)
            if replaced is not None:
                creds = replaced
        return creds

    def _verify(self, token: str, now: float) -> SessionCredentials:
        try:
            payload = verify_hs256_jwt(token, self.secret, typ=self._typ, aud=self.audience, now=now)
        except JwtExpired:
            raise ExpiredToken("Token has expired") from None
        except JwtError as exc:
            raise InvalidToken(f"Token could not be verified: {exc.message}") from None
        scope = payload.get("scope")
        if not isinstance(scope, str) or scope not in self.scopes:
            raise InvalidToken("Bad token scope")
        jti = payload.get("jti")
        if jti is not None and not isinstance(jti, str):
            raise InvalidToken("Token could not be verified: jti is not a string")
        if self.token_type == "refresh" and not jti:
            raise InvalidToken("Token could not be verified: refresh token has no jti")
        creds = SessionCredentials(
            did=payload["sub"], scope=scope, token_type=self.token_type, jti=jti, payload=payload
        )
        if len(self._verified) >= VERIFIED_TOKEN_CACHE_SIZE:
            self._verified.clear()
        self._verified[token] = (payload["exp"], creds)
        return creds


class AdminAuth:
    """``Authorization: Basic base64("admin:<password>")``."""

    def __init__(self, password: str) -> None:
        if not isinstance(password, str) or not password:
            raise ValueError("admin password must be a non-empty string")
        self._expected = ("admin:" + password).encode("utf-8")

    def accepts(self, conn: HTTPConnection) -> bool:
        auth = _authorization(conn)
        return auth is not None and auth[0] == "basic"

    async def __call__(self, conn: HTTPConnection, nsid: str) -> Credentials:
        auth = _authorization(conn)
        if auth is None or auth[0] != "basic":
            raise _challenge(AuthRequired("Admin authentication required"), 'Basic realm="admin"')
        try:
            given = base64.b64decode(auth[1].encode("ascii"), validate=True)
        except (ValueError, binascii.Error, UnicodeEncodeError):
            given = b""
        if not hmac.compare_digest(given, self._expected):
            raise _challenge(AuthRequired("Invalid admin credentials"), 'Basic realm="admin"')
        return AdminCredentials()


class KeyResolver(Protocol):
    """``async resolve_key(did, *, force_refresh) -> PublicKey`` (the ``#atproto`` key)."""

    def __call__(self, did: str, *, force_refresh: bool) -> Awaitable[PublicKey]: ...


class ReplayCache:
    """Remembers (issuer, ``jti``) pairs until their token expires; bounded.

    When full, the entry closest to expiry is forgotten first.
    """

    def __init__(self, *, max_entries: int = 100_000) -> None:
        if max_entries <= 0:
            raise ValueError("max_entries must be positive")
        self.max_entries = max_entries
        self._expiry: dict[tuple[str, str], float] = {}
        self._heap: list[tuple[float, tuple[str, str]]] = []

    def __len__(self) -> int:
        return len(self._expiry)

    def _purge(self, now: float) -> None:
        heap, expiry = self._heap, self._expiry
        while heap and heap[0][0] <= now:
            at, key = heapq.heappop(heap)
            if expiry.get(key) == at:
                del expiry[key]

    def add(self, issuer: str, jti: str, expires_at: float, now: float) -> bool:
        """Record the pair; False if it is already recorded (a replay)."""
        self._purge(now)
        key = (issuer, jti)
        if key in self._expiry:
            return False
        while len(self._expiry) >= self.max_entries and self._heap:
            at, old = heapq.heappop(self._heap)
            if self._expiry.get(old) == at:
                del self._expiry[old]
        self._expiry[key] = expires_at
        heapq.heappush(self._heap, (expires_at, key))
        return True


class ServiceAuth:
    """Inter-service ``Bearer`` JWTs (``spec/xrpc.md`` section 7).

    ``audience``: the DID(s) we answer to, bare or ``did#service_id`` (a
    token addressed to the bare DID is accepted for a ``did#id`` audience,
    the legacy form the reference PDS sends). ``replay_cache=None`` turns
    ``jti`` replay protection off; with it on, a token without ``jti`` is
    refused.
    """

    def __init__(
        self,
        audience: str | Iterable[str],
        resolve_key: KeyResolver,
        *,
        replay_cache: ReplayCache | None | bool = True,
        clock: Clock = time.time,
    ) -> None:
        self.audience: tuple[str, ...] = (
            (audience,) if isinstance(audience, str) else tuple(audience)
        )
        if not self.audience:
            raise ValueError("at least one audience is needed")
        self.resolve_key = resolve_key
        if replay_cache is True:
            replay_cache = ReplayCache()
        self.replay_cache: ReplayCache | None = (
            replay_cache if isinstance(replay_cache, ReplayCache) else None
        )
        self.clock = clock

    def accepts(self, conn: HTTPConnection) -> bool:
        token = bearer_token(conn)
        return token is not None and _token_alg(token) in _SERVICE_ALGS

    async def __call__(self, conn: HTTPConnection, nsid: str) -> Credentials:
        token = bearer_token(conn)
        if token is None:
            raise _challenge(MissingJwt("missing jwt"), "Bearer")
        parsed = parse_jwt(token)
        now = self.clock()
        claims = check_service_claims(parsed, aud=self.audience, lxm=nsid, now=now)
        key = await self._key(claims.iss, force_refresh=False)
        try:
            verify_service_signature(parsed, key)
        except BadJwtSignature:
            fresh = await self._key(claims.iss, force_refresh=True)
            verify_service_signature(parsed, fresh)
        self._check_replay(parsed, claims.iss, claims.jti, claims.exp, now)
        return ServiceCredentials(
            did=claims.iss, aud=claims.aud, lxm=claims.lxm, jti=claims.jti, payload=claims.payload
        )

    async def _key(self, did: str, *, force_refresh: bool) -> PublicKey:
        try:
            return await self.resolve_key(did, force_refresh=force_refresh)
        except (IdentityError, CryptoError) as exc:
            raise BadJwtIss(
                f"could not resolve the jwt issuer's signing key: {exc.message}"
            ) from None

    def _check_replay(
        self, parsed: ParsedJwt, iss: str, jti: str | None, exp: float, now: float
    ) -> None:
        cache = self.replay_cache
        if cache is None:
            return
        if not jti:
            raise BadJwt("jwt has no jti (needed for replay protection)")
        if not cache.add(iss, jti, exp + JWT_CLOCK_SKEW_SECONDS, now):
            raise BadJwt("jwt replayed: its jti was already used")


class _Optional:
    def __init__(self, verifier: Verifier) -> None:
        self.verifier = verifier

    def accepts(self, conn: HTTPConnection) -> bool:
        return self.verifier.accepts(conn)

    async def __call__(self, conn: HTTPConnection, nsid: str) -> Credentials:
        if not conn.headers.get("authorization"):
            return UNAUTHENTICATED
        return await self.verifier(conn, nsid)


def optional(verifier: Verifier) -> Verifier:
    """``verifier``, except that a request without ``Authorization`` is let through
    as :data:`UNAUTHENTICATED` (a present but bad credential still fails)."""
    return _Optional(verifier)


class _AnyOf:
    def __init__(self, verifiers: tuple[Verifier, ...]) -> None:
        self.verifiers = verifiers

    def accepts(self, conn: HTTPConnection) -> bool:
        return any(v.accepts(conn) for v in self.verifiers)

    async def __call__(self, conn: HTTPConnection, nsid: str) -> Credentials:
        for verifier in self.verifiers:
            if verifier.accepts(conn):
                return await verifier(conn, nsid)
        # Nobody recognises the credential (or there is none): the first
        # verifier explains what was expected.
        return await self.verifiers[0](conn, nsid)


def any_of(*verifiers: Verifier) -> Verifier:
    """The first verifier whose ``accepts`` is true handles the request."""
    if not verifiers:
        raise ValueError("any_of needs at least one verifier")
    return _AnyOf(verifiers)


# -- outgoing service auth ---------------------------------------------------------------


def mint_service_token(
    key: PrivateKey,
    *,
    iss: str,
    aud: str,
    lxm: str | None,
    exp_seconds: int = 60,
    clock: Clock = time.time,
) -> str:
    """A service-auth JWT for calling ``lxm`` on the service ``aud`` as ``iss``.

    Signed with ``key``, the account's ``#atproto`` signing key; a fresh
    random ``jti`` every time.
    """
    return create_service_jwt(key, iss=iss, aud=aud, lxm=lxm, exp_seconds=exp_seconds, now=clock())


def service_auth_headers(
    key: PrivateKey,
    *,
    iss: str,
    aud: str,
    lxm: str | None,
    exp_seconds: int = 60,
    clock: Clock = time.time,
) -> dict[str, str]:
    """``{"Authorization": "Bearer <service jwt>"}`` for an outgoing request."""
    token = mint_service_token(key, iss=iss, aud=aud, lxm=lxm, exp_seconds=exp_seconds, clock=clock)
    return {"Authorization": f"Bearer {token}"}
