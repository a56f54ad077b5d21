"""roost.jwt: service-auth JWTs (ES256K/ES256) and HS256 session tokens."""

from __future__ import annotations

import json
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from hypothesis import given
from hypothesis import strategies as st

from roost.crypto import K256, P256, PrivateKey
from roost.errors import (
    BadJwt,
    BadJwtAudience,
    BadJwtIss,
    BadJwtLexiconMethod,
    BadJwtSignature,
    BadJwtType,
    JwtError,
    JwtExpired,
)
from roost.jwt import (
    MAX_IAT_FUTURE_SECONDS,
    ParsedJwt,
    b64url_decode,
    b64url_encode,
    check_service_claims,
    create_hs256_jwt,
    create_service_jwt,
    parse_jwt,
    verify_hs256_jwt,
    verify_service_jwt,
)
from roost.limits import JWT_CLOCK_SKEW_SECONDS, MAX_JWT_BYTES

NOW = 1_732_000_000
ISS = "did:plc:ewvi7nxzyoun6zhxrhs64oiz"
AUD = "did:web:feed.example.com"
AUD_FG = AUD + "#bsky_fg"
LXM = "app.bsky.feed.getFeedSkeleton"
ORDER = {
    K256: 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141,
    P256: 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551,
}

KEYS = {
    K256: PrivateKey.from_hex(
        "9085d2bef69286a6cbb51623c8fa258629945cd55ca705cc4e66700396894e0c", K256
    ),
    P256: PrivateKey.from_hex(
        "82ebbd63ebbd9ff60141a69bd4c9be282f2415e8eafa9d42c0ed396daccca979", P256
    ),
}
KEY = KEYS[K256]
PUB = KEY.public_key


def forge(
    key: PrivateKey, header: dict[str, Any], payload: dict[str, Any], *, sig: bytes | None = None
) -> str:
    """A token with an arbitrary header and payload, signed by ``key``."""
    h = b64url_encode(json.dumps(header).encode())
    p = b64url_encode(json.dumps(payload).encode())
    if sig is None:
        sig = key.sign(f"{h}.{p}".encode())
    return f"{h}.{p}.{b64url_encode(sig)}"


def claims(**overrides: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "iat": NOW,
        "iss": ISS,
        "aud": AUD,
        "exp": NOW + 60,
        "lxm": LXM,
        "jti": "abc",
    }
    for name, value in overrides.items():
        if value is _DROP:
            payload.pop(name, None)
        else:
            payload[name] = value
    return payload


_DROP = object()
HEADER = {"typ": "JWT", "alg": "ES256K"}


def verify(
    token: str, *, key: PrivateKey = KEY, aud: Any = AUD, lxm: str | None = LXM, now: float = NOW
) -> Any:
    return verify_service_jwt(parse_jwt(token), key.public_key, aud=aud, lxm=lxm, now=now)


# -- base64url ------------------------------------------------------------------------


@given(st.binary(max_size=100))
def test_b64url_round_trip(data: bytes) -> None:
    text = b64url_encode(data)
    assert "=" not in text and "+" not in text and "/" not in text
    assert b64url_decode(text) == data


@pytest.mark.parametrize(
    "bad",
    ["QQ==", "QQ=", "a+b/", "a b", "QR", "QUJ", "A", "AAAAA", "ab\n", "é", "Zm9v.", "AB=C"],
)
def test_b64url_strict(bad: str) -> None:
    with pytest.raises(ValueError):
        b64url_decode(bad)


def test_b64url_canonical_examples() -> None:
    assert b64url_decode("QQ") == b"A"
    assert b64url_decode("QUI") == b"AB"
    assert b64url_decode("") == b""
    assert b64url_decode("-_8") == b"\xfb\xff"


# -- service JWT: round trips -------------------------------------------------------------


@pytest.mark.parametrize(("curve", "alg"), [(K256, "ES256K"), (P256, "ES256")])
def test_service_jwt_round_trip(curve: str, alg: str) -> None:
    key = KEYS[curve]
    token = create_service_jwt(key, iss=ISS, aud=AUD, lxm=LXM, now=NOW, jti="n1")
    h, p, s = token.split(".")
    assert b64url_decode(h) == b'{"typ":"JWT","alg":"' + alg.encode() + b'"}'
    assert json.loads(b64url_decode(p)) == {
        "iat": NOW,
        "iss": ISS,
        "aud": AUD,
        "exp": NOW + 60,
        "lxm": LXM,
        "jti": "n1",
    }
    assert b" " not in b64url_decode(p)
    sig = b64url_decode(s)
    assert len(sig) == 64
    assert int.from_bytes(sig[32:], "big") <= ORDER[curve] // 2
    parsed = parse_jwt(token)
    assert isinstance(parsed, ParsedJwt)
    assert parsed.alg == alg and parsed.typ == "JWT"
    assert parsed.signing_input == f"{h}.{p}".encode()
    result = verify_service_jwt(parsed, key.public_key, aud=AUD, lxm=LXM, now=NOW + 1)
    assert result.iss == ISS and result.iss_fragment is None
    assert result.aud == AUD and result.lxm == LXM and result.jti == "n1"
    assert result.exp == NOW + 60 and result.iat == NOW
    assert result.payload["iss"] == ISS
    assert check_service_claims(parsed, aud=AUD, lxm=LXM, now=NOW) == result


def test_service_jwt_defaults() -> None:
    token = create_service_jwt(KEY, iss=ISS, aud=AUD_FG)
    payload = parse_jwt(token).payload
    assert "lxm" not in payload
    assert payload["exp"] - payload["iat"] == 60
    assert len(payload["jti"]) == 32 and int(payload["jti"], 16) >= 0
    assert payload["jti"] != parse_jwt(create_service_jwt(KEY, iss=ISS, aud=AUD)).payload["jti"]
    result = verify_service_jwt(parse_jwt(token), PUB, aud=AUD_FG, lxm=None)
    assert result.lxm is None
    token = create_service_jwt(KEY, iss=ISS, aud=AUD, exp_seconds=3600, now=NOW)
    assert parse_jwt(token).payload["exp"] == NOW + 3600


@pytest.mark.parametrize(
    "kwargs",
    [
        {"iss": "alice", "aud": AUD},
        {"iss": ISS, "aud": "https://feed.example.com"},
        {"iss": ISS, "aud": AUD + "#"},
        {"iss": ISS, "aud": AUD, "exp_seconds": 0},
        {"iss": ISS, "aud": AUD, "exp_seconds": 1.5},
        {"iss": ISS, "aud": AUD, "lxm": 5},
    ],
)
def test_create_service_jwt_rejects_bad_arguments(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        create_service_jwt(KEY, **kwargs)


# -- service JWT: every rejection ---------------------------------------------------------


@pytest.mark.parametrize("typ", ["at+jwt", "refresh+jwt", "dpop+jwt", "AT+JWT", 7, None])
def test_bad_typ(typ: Any) -> None:
    header = {"typ": typ, "alg": "ES256K"}
    token = forge(KEY, header, claims())
    if typ is None:
        verify(token)  # typ null: treated as absent
        return
    with pytest.raises(BadJwtType):
        verify(token)


def test_typ_absent_or_other_is_fine() -> None:
    verify(forge(KEY, {"alg": "ES256K"}, claims()))
    verify(forge(KEY, {"alg": "ES256K", "typ": "jwt", "kid": "#atproto"}, claims()))


def test_alg_must_match_key_curve() -> None:
    token = forge(KEY, {"typ": "JWT", "alg": "ES256"}, claims())
    with pytest.raises(BadJwtSignature):
        verify(token)
    p_token = forge(KEYS[P256], {"typ": "JWT", "alg": "ES256K"}, claims())
    with pytest.raises(BadJwtSignature):
        verify(p_token, key=KEYS[P256])
    for alg in ("none", "HS256", "RS256", "EdDSA"):
        with pytest.raises(BadJwtSignature):
            verify(forge(KEY, {"typ": "JWT", "alg": alg}, claims()))


@pytest.mark.parametrize("curve", [K256, P256])
def test_signature_checks(curve: str) -> None:
    key = KEYS[curve]
    header = {"typ": "JWT", "alg": key.jwt_alg}
    good = forge(key, header, claims())
    verify(good, key=key)
    h, p, s = good.split(".")
    sig = b64url_decode(s)
    r, sv = int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big")
    # High-S is accepted on service JWTs (the reference verifies them malleably) ...
    high = r.to_bytes(32, "big") + (ORDER[curve] - sv).to_bytes(32, "big")
    verify(f"{h}.{p}.{b64url_encode(high)}", key=key)
    # ... DER is not.
    der = encode_dss_signature(r, sv)
    with pytest.raises(BadJwtSignature):
        verify(f"{h}.{p}.{b64url_encode(der)}", key=key)
    # Another key, a tampered payload, a truncated signature.
    other = PrivateKey.generate(curve)
    with pytest.raises(BadJwtSignature):
        verify(good, key=other)
    tampered_p = b64url_encode(json.dumps(claims(iss="did:plc:someoneelse")).encode())
    with pytest.raises(BadJwtSignature):
        verify(f"{h}.{tampered_p}.{s}", key=key)
    with pytest.raises(BadJwtSignature):
        verify(f"{h}.{p}.{b64url_encode(sig[:63])}", key=key)
    with pytest.raises(BadJwtSignature):
        verify(f"{h}.{p}.{b64url_encode(bytes(64))}", key=key)


def test_expiry() -> None:
    token = forge(KEY, HEADER, claims(exp=NOW + 60))
    verify(token, now=NOW + 60)
    verify(token, now=NOW + 60 + JWT_CLOCK_SKEW_SECONDS)
    with pytest.raises(JwtExpired):
        verify(token, now=NOW + 61 + JWT_CLOCK_SKEW_SECONDS)
    verify(forge(KEY, HEADER, claims(exp=NOW + 0.5)), now=NOW)


@pytest.mark.parametrize("exp", [_DROP, "1732000060", None, True, [1]])
def test_exp_missing_or_mistyped(exp: Any) -> None:
    with pytest.raises(BadJwt):
        verify(forge(KEY, HEADER, claims(exp=exp)))


def test_iat() -> None:
    with pytest.raises(BadJwt):
        verify(forge(KEY, HEADER, claims(iat=_DROP)))
    with pytest.raises(BadJwt):
        verify(forge(KEY, HEADER, claims(iat="now")))
    verify(forge(KEY, HEADER, claims(iat=NOW + MAX_IAT_FUTURE_SECONDS)))
    with pytest.raises(BadJwt):
        verify(forge(KEY, HEADER, claims(iat=NOW + MAX_IAT_FUTURE_SECONDS + 1)))


def test_audience() -> None:
    bare = forge(KEY, HEADER, claims(aud=AUD))
    frag = forge(KEY, HEADER, claims(aud=AUD_FG))
    other_frag = forge(KEY, HEADER, claims(aud=AUD + "#atproto_labeler"))
    other_did = forge(KEY, HEADER, claims(aud="did:web:evil.example.com"))
    # Our audience given with its service id: accept it and the legacy bare DID.
    assert verify(bare, aud=AUD_FG).aud == AUD
    assert verify(frag, aud=AUD_FG).aud == AUD_FG
    with pytest.raises(BadJwtAudience):
        verify(other_frag, aud=AUD_FG)
    with pytest.raises(BadJwtAudience):
        verify(other_did, aud=AUD_FG)
    # Only the bare DID configured: exact match only.
    verify(bare, aud=AUD)
    with pytest.raises(BadJwtAudience):
        verify(frag, aud=AUD)
    # Several audiences.
    verify(frag, aud=[AUD, AUD_FG])
    verify(other_did, aud=("did:web:evil.example.com",))
    with pytest.raises(BadJwtAudience):
        verify(other_frag, aud=[AUD, AUD_FG])
    with pytest.raises(BadJwt):
        verify(forge(KEY, HEADER, claims(aud=["did:web:x"])), aud=AUD)
    with pytest.raises(BadJwt):
        verify(forge(KEY, HEADER, claims(aud=_DROP)), aud=AUD)
    # A prefix of our DID is not our DID.
    with pytest.raises(BadJwtAudience):
        verify(forge(KEY, HEADER, claims(aud="did:web:feed.example")), aud=AUD_FG)


def test_lexicon_method() -> None:
    with pytest.raises(BadJwtLexiconMethod, match="missing"):
        verify(forge(KEY, HEADER, claims(lxm=_DROP)))
    with pytest.raises(BadJwtLexiconMethod, match="bad"):
        verify(forge(KEY, HEADER, claims(lxm="app.bsky.feed.getTimeline")))
    with pytest.raises(BadJwt):
        verify(forge(KEY, HEADER, claims(lxm=5)))
    # No method required: any lxm (or none) passes.
    verify(forge(KEY, HEADER, claims(lxm=_DROP)), lxm=None)
    verify(forge(KEY, HEADER, claims(lxm="com.atproto.server.createAccount")), lxm=None)


@pytest.mark.parametrize(
    "iss",
    [
        "alice.example.com",
        "did:PLC:abc",
        "did:plc:abc:",
        "did:plc:abc%",
        "did:m123:abc",
        "did:plc:",
        "did:plc:ab/c",
        "did:plc:abc#",
        "did:plc:abc#a#b",
        "did:plc:" + "a" * 2050,
        "",
        " did:plc:abc",
    ],
)
def test_bad_iss(iss: str) -> None:
    with pytest.raises(BadJwtIss):
        verify(forge(KEY, HEADER, claims(iss=iss)))


def test_iss_type_and_fragment() -> None:
    with pytest.raises(BadJwt):
        verify(forge(KEY, HEADER, claims(iss=_DROP)))
    with pytest.raises(BadJwt):
        verify(forge(KEY, HEADER, claims(iss=["did:plc:abc"])))
    result = verify(forge(KEY, HEADER, claims(iss=ISS + "#atproto_labeler")))
    assert result.iss == ISS and result.iss_fragment == "atproto_labeler"
    assert (
        verify(forge(KEY, HEADER, claims(iss="did:web:example.com"))).iss == "did:web:example.com"
    )
    assert verify(forge(KEY, HEADER, claims(iss="did:method:-:_:.:%ab"))).iss


def test_jti_type() -> None:
    with pytest.raises(BadJwt):
        verify(forge(KEY, HEADER, claims(jti=12)))
    assert verify(forge(KEY, HEADER, claims(jti=_DROP))).jti is None


def test_check_order_matches_reference() -> None:
    # typ is checked before everything; exp before aud, aud before lxm, lxm before iss,
    # and all claims before the signature.
    wrong_sig = bytes(64)
    everything_wrong = claims(exp=NOW - 1000, aud="did:web:x", lxm="a.b.c", iss="bad")
    with pytest.raises(BadJwtType):
        verify(forge(KEY, {"typ": "at+jwt", "alg": "ES256K"}, everything_wrong, sig=wrong_sig))
    with pytest.raises(JwtExpired):
        verify(forge(KEY, HEADER, everything_wrong, sig=wrong_sig))
    with pytest.raises(BadJwtAudience):
        verify(forge(KEY, HEADER, {**everything_wrong, "exp": NOW + 60}, sig=wrong_sig))
    with pytest.raises(BadJwtLexiconMethod):
        verify(forge(KEY, HEADER, claims(lxm="a.b.c", iss="bad"), sig=wrong_sig))
    with pytest.raises(BadJwtIss):
        verify(forge(KEY, HEADER, claims(iss="bad"), sig=wrong_sig))
    with pytest.raises(BadJwtSignature):
        verify(forge(KEY, HEADER, claims(), sig=wrong_sig))


def test_check_service_claims_needs_no_key() -> None:
    token = forge(KEY, HEADER, claims(iss=ISS + "#atproto"), sig=bytes(64))
    result = check_service_claims(parse_jwt(token), aud=AUD, lxm=LXM, now=NOW)
    assert result.iss == ISS
    with pytest.raises(TypeError):
        check_service_claims(parse_jwt(token), aud=[], lxm=LXM, now=NOW)


# -- parse_jwt: malformed tokens ------------------------------------------------------------


def _seg(obj: Any) -> str:
    return b64url_encode(json.dumps(obj).encode() if not isinstance(obj, bytes) else obj)


GOOD_H = _seg(HEADER)
GOOD_P = _seg(claims())
GOOD_S = b64url_encode(bytes(64))


def with_payload(raw: bytes) -> str:
    return f"{GOOD_H}.{_seg(raw)}.{GOOD_S}"


@pytest.mark.parametrize(
    "token",
    [
        "",
        "abc",
        f"{GOOD_H}.{GOOD_P}",
        f"{GOOD_H}.{GOOD_P}.{GOOD_S}.{GOOD_S}",
        f"{GOOD_H}..{GOOD_S}",
        f".{GOOD_P}.{GOOD_S}",
        f"{GOOD_H}.{GOOD_P}.",
        f"{GOOD_H}=.{GOOD_P}.{GOOD_S}",
        f"{GOOD_H}.{GOOD_P}.{GOOD_S}=",
        f"{GOOD_H}.{GOOD_P}.{GOOD_S[:-1]}+",
        f"{GOOD_H}.{GOOD_P}.A",
        f"{_seg([1, 2])}.{GOOD_P}.{GOOD_S}",
        f"{GOOD_H}.{_seg('str')}.{GOOD_S}",
        f"{GOOD_H}.{_seg(None)}.{GOOD_S}",
        f"{_seg({'typ': 'JWT'})}.{GOOD_P}.{GOOD_S}",
        f"{_seg({'alg': 1})}.{GOOD_P}.{GOOD_S}",
        f"{_seg(b'not json')}.{GOOD_P}.{GOOD_S}",
        with_payload(b'{"exp": NaN}'),
        with_payload(b'{"exp": Infinity}'),
        with_payload(b'{"exp": 1e999}'),
        with_payload(b'{"a": 1, "a": 2}'),
        with_payload(b"\xff\xfe{}"),
        with_payload("{}".encode("utf-16")),
        with_payload(b"\xef\xbb\xbf{}"),
        with_payload(b"[" * 3000 + b"]" * 3000),
        with_payload(b'{"a": ' + b"9" * 5000 + b"}"),
        f"{GOOD_H}.{GOOD_P}.{GOOD_S}\u00e9",
        f" {GOOD_H}.{GOOD_P}.{GOOD_S}",
    ],
)
def test_parse_jwt_malformed(token: str) -> None:
    with pytest.raises(BadJwt):
        parse_jwt(token)


def test_parse_jwt_size_limit_and_types() -> None:
    big = f"{GOOD_H}.{_seg({**claims(), 'pad': 'x' * MAX_JWT_BYTES})}.{GOOD_S}"
    with pytest.raises(BadJwt, match="longer"):
        parse_jwt(big)
    with pytest.raises(BadJwt):
        parse_jwt(None)  # type: ignore[arg-type]
    with pytest.raises(BadJwt):
        parse_jwt(b"\xff.\xff.\xff")  # type: ignore[arg-type]
    token = f"{GOOD_H}.{GOOD_P}.{GOOD_S}"
    assert parse_jwt(token.encode()) == parse_jwt(token)  # type: ignore[arg-type]


@given(st.text(max_size=300))
def test_random_strings_only_raise_jwt_errors(text: str) -> None:
    for token in (text, f"{GOOD_H}.{text}.{GOOD_S}", f"{text}.{GOOD_P}.{GOOD_S}"):
        try:
            parsed = parse_jwt(token)
            verify_service_jwt(parsed, PUB, aud=AUD, lxm=LXM, now=NOW)
        except JwtError:
            pass


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=10,
)
CLAIM_VALUES = JSON_VALUES | st.sampled_from([ISS, AUD, AUD_FG, LXM, NOW, NOW + 60, "at+jwt"])
CLAIM_NAMES = st.sampled_from(["iss", "aud", "exp", "iat", "lxm", "jti", "typ", "alg", "x"])


@given(
    header=st.dictionaries(CLAIM_NAMES, CLAIM_VALUES | st.sampled_from(["ES256K", "JWT"])),
    payload=st.dictionaries(CLAIM_NAMES, CLAIM_VALUES),
)
def test_random_claims_only_raise_jwt_errors(header: dict, payload: dict) -> None:
    token = forge(KEY, header, payload)  # json.dumps writes inf as Infinity: rejected
    try:
        result = verify(token)
    except JwtError:
        return
    assert result.iss == ISS


# -- HS256 session tokens ----------------------------------------------------------------

SECRET = b"s3cret-for-tests-only"
ACCESS = {
    "scope": "com.atproto.access",
    "sub": ISS,
    "aud": "did:web:pds.example.com",
    "iat": NOW,
    "exp": NOW + 7200,
}
REFRESH = {**ACCESS, "scope": "com.atproto.refresh", "jti": "r1", "exp": NOW + 90 * 86400}


def test_hs256_round_trip() -> None:
    access = create_hs256_jwt(SECRET, ACCESS)
    h = json.loads(b64url_decode(access.split(".")[0]))
    assert h == {"typ": "at+jwt", "alg": "HS256"}
    assert verify_hs256_jwt(access, SECRET, typ="at+jwt", now=NOW) == ACCESS
    assert (
        verify_hs256_jwt(
            access, SECRET, typ="at+jwt", aud="did:web:pds.example.com", now=NOW + 7200
        )
        == ACCESS
    )
    refresh = create_hs256_jwt(SECRET, REFRESH, typ="refresh+jwt")
    assert verify_hs256_jwt(refresh, SECRET, typ="refresh+jwt", now=NOW)["jti"] == "r1"


def test_hs256_domain_separation() -> None:
    access = create_hs256_jwt(SECRET, ACCESS)
    refresh = create_hs256_jwt(SECRET, REFRESH, typ="refresh+jwt")
    with pytest.raises(BadJwtType):
        verify_hs256_jwt(refresh, SECRET, typ="at+jwt", now=NOW)
    with pytest.raises(BadJwtType):
        verify_hs256_jwt(access, SECRET, typ="refresh+jwt", now=NOW)
    service = create_service_jwt(KEY, iss=ISS, aud=AUD, now=NOW)
    with pytest.raises(BadJwt):
        verify_hs256_jwt(service, SECRET, typ="JWT", now=NOW)
    # And a session token is never a service token.
    with pytest.raises(BadJwtType):
        verify_service_jwt(parse_jwt(access), PUB, aud="did:web:pds.example.com", lxm=None, now=NOW)


def test_hs256_tamper_and_wrong_secret() -> None:
    access = create_hs256_jwt(SECRET, ACCESS)
    h, p, s = access.split(".")
    forged_p = b64url_encode(json.dumps({**ACCESS, "sub": "did:plc:mallory"}).encode())
    with pytest.raises(BadJwtSignature):
        verify_hs256_jwt(f"{h}.{forged_p}.{s}", SECRET, typ="at+jwt", now=NOW)
    with pytest.raises(BadJwtSignature):
        verify_hs256_jwt(access, b"other secret", typ="at+jwt", now=NOW)
    with pytest.raises(BadJwtSignature):
        verify_hs256_jwt(f"{h}.{p}.{b64url_encode(bytes(32))}", SECRET, typ="at+jwt", now=NOW)
    none_alg = f"{_seg({'typ': 'at+jwt', 'alg': 'none'})}.{p}.{s}"
    with pytest.raises(BadJwt):
        verify_hs256_jwt(none_alg, SECRET, typ="at+jwt", now=NOW)


def test_hs256_expiry_audience_and_claims() -> None:
    access = create_hs256_jwt(SECRET, ACCESS)
    with pytest.raises(JwtExpired):
        verify_hs256_jwt(access, SECRET, typ="at+jwt", now=NOW + 7201)
    with pytest.raises(BadJwtAudience):
        verify_hs256_jwt(access, SECRET, typ="at+jwt", aud="did:web:other.example", now=NOW)
    for bad in (
        {k: v for k, v in ACCESS.items() if k != "exp"},
        {**ACCESS, "exp": "later"},
        {k: v for k, v in ACCESS.items() if k != "sub"},
        {**ACCESS, "sub": "alice"},
        {**ACCESS, "lxm": "com.atproto.repo.createRecord"},
        {**ACCESS, "cnf": {"jkt": "x"}},
    ):
        with pytest.raises(BadJwt):
            verify_hs256_jwt(create_hs256_jwt(SECRET, bad), SECRET, typ="at+jwt", now=NOW)
    with pytest.raises(ValueError):
        create_hs256_jwt(b"", ACCESS)


@given(st.text(max_size=200))
def test_hs256_random_strings(text: str) -> None:
    try:
        verify_hs256_jwt(text, SECRET, typ="at+jwt", now=NOW)
    except JwtError:
        pass
