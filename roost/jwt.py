"""JSON Web Tokens: inter-service auth (ES256K / ES256) and HS256 session tokens.

Service auth (``spec/xrpc.md`` section 7) is split in steps so the XRPC layer
can resolve the issuer's key, which needs network I/O, in between::

    parsed = parse_jwt(token)                         # BadJwt if malformed
    iss = check_service_claims(parsed, aud=own, lxm=nsid).iss   # no I/O
    key = await resolve_atproto_key(iss)              # caller's business
    claims = verify_service_jwt(parsed, key, aud=own, lxm=nsid)

Checks, in the order the reference ``xrpc-server`` applies them, each with
its own error: ``typ`` (:class:`BadJwtType`), payload shape (:class:`BadJwt`),
``exp`` (:class:`JwtExpired`), ``iat`` (:class:`BadJwt`), ``aud``
(:class:`BadJwtAudience`), ``lxm`` (:class:`BadJwtLexiconMethod`), ``iss``
(:class:`BadJwtIss`), then ``alg`` against the key and the signature
(:class:`BadJwtSignature`). High-S signatures are accepted on service JWTs, as
the reference does; DER is not.

Session tokens (``at+jwt`` access, ``refresh+jwt`` refresh) are HS256 with the
server's own secret; :func:`verify_hs256_jwt` checks alg, ``typ`` (domain
separation: a refresh token is never an access token), the MAC in constant
time, ``exp``, ``aud``, ``sub``, and that no ``lxm``/``cnf`` claim is present.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import math
import re
import secrets
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, TypeGuard

from roost.crypto import CURVE_BY_JWT_ALG, PrivateKey, PublicKey
from roost.errors import (
    BadJwt,
    BadJwtAudience,
    BadJwtIss,
    BadJwtLexiconMethod,
    BadJwtSignature,
    BadJwtType,
    JwtExpired,
)
from roost.limits import JWT_CLOCK_SKEW_SECONDS, MAX_JWT_BYTES

__all__ = [
    "ACCESS_TOKEN_TYP",
    "MAX_IAT_FUTURE_SECONDS",
    "NON_SERVICE_TYPS",
    "REFRESH_TOKEN_TYP",
    "SERVICE_TOKEN_TYP",
    "ParsedJwt",
    "ServiceClaims",
    "b64url_decode",
    "b64url_encode",
    "check_service_claims",
    "create_hs256_jwt",
    "create_service_jwt",
    "parse_jwt",
    "verify_hs256_jwt",
    "verify_service_jwt",
    "verify_service_signature",
]

ACCESS_TOKEN_TYP: Final = "at+jwt"
REFRESH_TOKEN_TYP: Final = "refresh+jwt"
SERVICE_TOKEN_TYP: Final = "JWT"
#: ``typ`` values that mark a token as *not* a service token.
NON_SERVICE_TYPS: Final = frozenset({"at+jwt", "refresh+jwt", "dpop+jwt"})
#: How far ``iat`` may lie in the future on a service token (seconds); the
#: reference ``lex-server`` allows the same 300 s.
MAX_IAT_FUTURE_SECONDS: Final = 300

_DID_RE: Final = re.compile(r"did:[a-z]+:[a-zA-Z0-9._:%-]*[a-zA-Z0-9._-]")
_FRAGMENT_RE: Final = re.compile(r"[a-zA-Z0-9._:~-]+")
_MAX_DID_LENGTH: Final = 2048
_B64URL_RE: Final = re.compile(r"[A-Za-z0-9_-]*")


# -- base64url ----------------------------------------------------------------


def b64url_encode(data: bytes) -> str:
    """base64url without padding."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Strict base64url: URL alphabet only, no padding, canonical (zero unused bits).

    Raises ``ValueError`` on anything else.
    """
    if not isinstance(text, str) or not _B64URL_RE.fullmatch(text):
        raise ValueError("not unpadded base64url")
    if len(text) % 4 == 1:
        raise ValueError("impossible base64url length")
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except binascii.Error as exc:  # pragma: no cover - the regex leaves nothing to reject
        raise ValueError(str(exc)) from None
    if b64url_encode(data) != text:
        raise ValueError("non-canonical base64url (unused bits set)")
    return data


# -- helpers ------------------------------------------------------------------


def _now(now: float | None) -> float:
    return time.time() if now is None else now


def _is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_did(value: object) -> bool:
    return (
        isinstance(value, str)
        and len(value) <= _MAX_DID_LENGTH
        and _DID_RE.fullmatch(value) is not None
    )


def _split_did_fragment(value: str) -> tuple[str, str | None] | None:
    """(DID, fragment or None) for ``did`` or ``did#fragment``; None if invalid."""
    did, sep, fragment = value.partition("#")
    if not _is_did(did):
        return None
    if not sep:
        return did, None
    if not _FRAGMENT_RE.fullmatch(fragment):
        return None
    return did, fragment


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-finite number {name}")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("non-finite number")
    return value


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise ValueError("duplicate key in JSON object")
    return obj


#: One strict decoder for every segment (building one per call costs more than a small decode).
_STRICT_JSON: Final = json.JSONDecoder(
    parse_constant=_reject_constant, parse_float=_finite_float, object_pairs_hook=_no_duplicates
)


def _json_object(segment: str, what: str) -> dict[str, Any]:
    try:
        raw = b64url_decode(segment)
        value = _STRICT_JSON.decode(raw.decode("utf-8"))
    except (ValueError, RecursionError):
        raise BadJwt(f"poorly formatted jwt: {what} is not base64url JSON") from None
    if not isinstance(value, dict):
        raise BadJwt(f"poorly formatted jwt: {what} is not a JSON object")
    return value


def _dumps(value: Mapping[str, Any]) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode(
        "utf-8"
    )


# -- parsing ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ParsedJwt:
    """A structurally valid JWT; nothing about its claims or signature is checked yet."""

    header: dict[str, Any] = field(hash=False)
    payload: dict[str, Any] = field(hash=False)
    signing_input: bytes
    signature: bytes

    @property
    def alg(self) -> str:
        return str(self.header["alg"])

    @property
    def typ(self) -> object:
        return self.header.get("typ")


def parse_jwt(token: str) -> ParsedJwt:
    """Split and decode a compact JWT; raises :class:`BadJwt` on anything malformed.

    Requires: at most ``MAX_JWT_BYTES``, ASCII, exactly three non-empty
    dot-separated strict base64url parts, header and payload JSON objects
    (finite numbers, no duplicate keys), a string ``alg`` in the header.
    """
    if isinstance(token, (bytes, bytearray)):
        try:
            token = bytes(token).decode("ascii")
        except UnicodeDecodeError:
            raise BadJwt("poorly formatted jwt: not ASCII") from None
    if not isinstance(token, str):
        raise BadJwt("poorly formatted jwt: not a string")
    if len(token) > MAX_JWT_BYTES:
        raise BadJwt(f"jwt is longer than {MAX_JWT_BYTES} bytes")
    if not token.isascii():
        raise BadJwt("poorly formatted jwt: not ASCII")
    parts = token.split(".")
    if len(parts) != 3 or not all(parts):
        raise BadJwt("poorly formatted jwt: expected three non-empty parts")
    header = _json_object(parts[0], "header")
    payload = _json_object(parts[1], "payload")
    if not isinstance(header.get("alg"), str):
        raise BadJwt("poorly formatted jwt: header has no string alg")
    try:
        signature = b64url_decode(parts[2])
    except ValueError:
        raise BadJwt("poorly formatted jwt: signature is not base64url") from None
    signing_input = (parts[0] + "." + parts[1]).encode("ascii")
    return ParsedJwt(header, payload, signing_input, signature)


# -- service auth ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ServiceClaims:
    """The checked claims of a service-auth JWT.

    ``iss`` is the bare DID (the authenticated account); ``iss_fragment`` is
    the legacy ``#fragment`` it carried, if any (``atproto_labeler`` means the
    signing key is ``#atproto_label``). ``payload`` is the full payload.
    """

    iss: str
    iss_fragment: str | None
    aud: str
    exp: int | float
    iat: int | float
    lxm: str | None
    jti: str | None
    payload: dict[str, Any] = field(hash=False, compare=False, repr=False)


def create_service_jwt(
    key: PrivateKey,
    *,
    iss: str,
    aud: str,
    lxm: str | None = None,
    exp_seconds: int = 60,
    now: float | None = None,
    jti: str | None = None,
) -> str:
    """Sign a service-auth JWT with ``key`` (the account's ``#atproto`` key).

    Header ``{"typ":"JWT","alg":"ES256K"|"ES256"}``; payload ``iat, iss,
    aud, exp, lxm (if given), jti`` (random 16 bytes hex by default). Raises
    ``ValueError`` for an ``iss``/``aud`` that is not ``did`` or ``did#id``
    or a non-positive ``exp_seconds``.
    """
    if not isinstance(iss, str) or _split_did_fragment(iss) is None:
        raise ValueError(f"iss must be a DID, got {iss!r}")
    if not isinstance(aud, str) or _split_did_fragment(aud) is None:
        raise ValueError(f"aud must be a DID or DID#service, got {aud!r}")
    if lxm is not None and not isinstance(lxm, str):
        raise ValueError("lxm must be a string (an NSID)")
    if isinstance(exp_seconds, bool) or not isinstance(exp_seconds, int) or exp_seconds <= 0:
        raise ValueError("exp_seconds must be a positive int")
    iat = int(_now(now))
    payload: dict[str, Any] = {"iat": iat, "iss": iss, "aud": aud, "exp": iat + exp_seconds}
    if lxm is not None:
        payload["lxm"] = lxm
    payload["jti"] = secrets.token_hex(16) if jti is None else jti
    header = {"typ": SERVICE_TOKEN_TYP, "alg": key.jwt_alg}
    signing_input = b64url_encode(_dumps(header)) + "." + b64url_encode(_dumps(payload))
    return signing_input + "." + b64url_encode(key.sign(signing_input.encode("ascii")))


def _audiences(aud: str | Iterable[str]) -> tuple[str, ...]:
    accepted = (aud,) if isinstance(aud, str) else tuple(aud)
    if not accepted or not all(isinstance(a, str) for a in accepted):
        raise TypeError("aud must be a string or a non-empty iterable of strings")
    return accepted


def _audience_ok(token_aud: str, accepted: tuple[str, ...]) -> bool:
    if token_aud in accepted:
        return True
    # Legacy: a bare DID addresses every service of that DID. Accept it when
    # one of our own audiences is that DID with a service fragment.
    if "#" not in token_aud:
        return any(a.partition("#")[0] == token_aud for a in accepted)
    return False


def check_service_claims(
    parsed: ParsedJwt,
    *,
    aud: str | Iterable[str],
    lxm: str | None,
    now: float | None = None,
) -> ServiceClaims:
    """Every service-JWT check except the signature (no key needed, no I/O).

    ``aud`` lists the audiences we answer to: a token's ``aud`` must equal
    one of them, or be the bare DID of one given as ``did#service`` (legacy
    form the reference PDS still sends). Passing a bare DID accepts only the
    bare DID. ``lxm`` is the NSID being called; ``None`` skips the check.
    """
    header, payload = parsed.header, parsed.payload
    typ = header.get("typ")
    if typ is not None and (not isinstance(typ, str) or typ.lower() in NON_SERVICE_TYPS):
        raise BadJwtType("invalid jwt type")
    if (
        not isinstance(payload.get("iss"), str)
        or not isinstance(payload.get("aud"), str)
        or not _is_number(payload.get("exp"))
        or ("lxm" in payload and not isinstance(payload["lxm"], str))
        or ("jti" in payload and not isinstance(payload["jti"], str))
    ):
        raise BadJwt("poorly formatted jwt: iss, aud, exp, lxm or jti missing or mistyped")
    current = _now(now)
    exp = payload["exp"]
    if current > exp + JWT_CLOCK_SKEW_SECONDS:
        raise JwtExpired("jwt expired")
    iat = payload.get("iat")
    if not _is_number(iat):
        raise BadJwt("poorly formatted jwt: iat missing or not a number")
    if iat > current + MAX_IAT_FUTURE_SECONDS:
        raise BadJwt("jwt issued in the future")
    token_aud = payload["aud"]
    if not _audience_ok(token_aud, _audiences(aud)):
        raise BadJwtAudience("jwt audience does not match service did")
    token_lxm = payload.get("lxm")
    if lxm is not None and token_lxm != lxm:
        if token_lxm is None:
            raise BadJwtLexiconMethod(f'missing jwt lexicon method ("lxm"). must match: {lxm}')
        raise BadJwtLexiconMethod(f'bad jwt lexicon method ("lxm"). must match: {lxm}')
    split = _split_did_fragment(payload["iss"])
    if split is None:
        raise BadJwtIss("jwt issuer is not a valid DID")
    return ServiceClaims(
        iss=split[0],
        iss_fragment=split[1],
        aud=token_aud,
        exp=exp,
        iat=iat,
        lxm=token_lxm,
        jti=payload.get("jti"),
        payload=payload,
    )


def verify_service_jwt(
    parsed: ParsedJwt,
    key: PublicKey,
    *,
    aud: str | Iterable[str],
    lxm: str | None,
    now: float | None = None,
) -> ServiceClaims:
    """All of :func:`check_service_claims`, then ``alg`` against ``key`` and the signature.

    ``key`` is the issuer's ``#atproto`` key. The signature must be 64-byte
    ``r || s``; high-S is accepted here (as the reference does), DER is not.
    """
    claims = check_service_claims(parsed, aud=aud, lxm=lxm, now=now)
    verify_service_signature(parsed, key)
    return claims


def verify_service_signature(parsed: ParsedJwt, key: PublicKey) -> None:
    """The signature half of :func:`verify_service_jwt`, for callers that have
    already checked the claims: ``alg`` against ``key``, then the signature."""
    alg = parsed.header["alg"]
    curve = CURVE_BY_JWT_ALG.get(alg)
    if curve is None:
        raise BadJwtSignature(f"unsupported jwt alg {alg!r} for service auth")
    if curve != key.curve:
        raise BadJwtSignature(f"jwt alg {alg} does not match the issuer's {key.curve} key")
    if not key.verify(parsed.signing_input, parsed.signature, allow_high_s=True):
        raise BadJwtSignature("jwt signature does not match jwt issuer")


# -- HS256 session tokens ---------------------------------------------------------


def _hs256(secret: bytes, signing_input: bytes) -> bytes:
    return hmac.new(secret, signing_input, hashlib.sha256).digest()


def create_hs256_jwt(
    secret: bytes, payload: Mapping[str, Any], *, typ: str = ACCESS_TOKEN_TYP
) -> str:
    """An HS256 token ``{"typ": typ, "alg": "HS256"}`` over ``payload`` (compact JSON).

    The caller builds the claims (reference access token: ``scope, sub, aud,
    iat, exp``; refresh token adds ``jti`` with ``typ="refresh+jwt"``).
    """
    if not isinstance(secret, (bytes, bytearray)) or not secret:
        raise ValueError("HS256 secret must be non-empty bytes")
    header = {"typ": typ, "alg": "HS256"}
    signing_input = b64url_encode(_dumps(header)) + "." + b64url_encode(_dumps(payload))
    mac = _hs256(bytes(secret), signing_input.encode("ascii"))
    return signing_input + "." + b64url_encode(mac)


def verify_hs256_jwt(
    token: str,
    secret: bytes,
    *,
    typ: str,
    aud: str | None = None,
    now: float | None = None,
) -> dict[str, Any]:
    """Verify one of our own session tokens; returns its payload.

    Checks ``alg == "HS256"`` (:class:`BadJwt`), ``typ`` equals ``typ``
    (:class:`BadJwtType`), the MAC in constant time (:class:`BadJwtSignature`),
    ``exp`` present and not passed (:class:`JwtExpired`; no skew: we issued
    it on our own clock), ``aud`` if given (:class:`BadJwtAudience`), ``sub``
    a DID and no ``lxm`` or ``cnf`` claim (:class:`BadJwt`).
    The PDS maps :class:`JwtExpired` to ``ExpiredToken`` and the rest to ``InvalidToken``.
    """
    parsed = parse_jwt(token)
    if parsed.header["alg"] != "HS256":
        raise BadJwt("session token must be HS256")
    if parsed.header.get("typ") != typ:
        raise BadJwtType(f"expected a {typ} token")
    expected = _hs256(bytes(secret), parsed.signing_input)
    if not hmac.compare_digest(expected, parsed.signature):
        raise BadJwtSignature("token signature is invalid")
    payload = parsed.payload
    exp = payload.get("exp")
    if not _is_number(exp):
        raise BadJwt("token has no numeric exp")
    if _now(now) > exp:
        raise JwtExpired("token has expired")
    if aud is not None and payload.get("aud") != aud:
        raise BadJwtAudience("token audience does not match")
    if not _is_did(payload.get("sub")):
        raise BadJwt("token sub is not a DID")
    if "lxm" in payload or "cnf" in payload:
        raise BadJwt("session token must not carry lxm or cnf")
    return payload
