"""roost.crypto: keys, low-S signatures, did:key / Multikey, legacy DID-doc keys."""

from __future__ import annotations

import base64
import pickle

import pytest
from cryptography.exceptions import InvalidSignature as CryptographyInvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)
from hypothesis import given
from hypothesis import strategies as st

from roost.crypto import (
    K256,
    P256,
    PrivateKey,
    PublicKey,
    b58decode,
    b58encode,
    parse_did_key,
    parse_legacy_multibase,
    parse_multikey,
    public_key_from_verification_method,
)
from roost.errors import CryptoError, InvalidKey, UnsupportedKeyType
from tests.interop import b64decode, load_json

N = {
    K256: 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141,
    P256: 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551,
}
CURVE_BY_ALG = {"ES256K": K256, "ES256": P256}
KEY_ERRORS = (InvalidKey, UnsupportedKeyType)
HELLO = bytes.fromhex("a16568656c6c6f65776f726c64")  # DAG-CBOR {"hello": "world"}


def split_sig(sig: bytes) -> tuple[int, int]:
    return int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big")


def join_sig(r: int, s: int) -> bytes:
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def high_s(sig: bytes, curve: str) -> bytes:
    r, s = split_sig(sig)
    return join_sig(r, N[curve] - s)


# -- interop: signature-fixtures.json ---------------------------------------------

SIGNATURE_FIXTURES = load_json("crypto/signature-fixtures.json")


@pytest.mark.parametrize("case", SIGNATURE_FIXTURES, ids=[c["comment"] for c in SIGNATURE_FIXTURES])
def test_signature_fixture(case: dict) -> None:
    message = b64decode(case["messageBase64"])
    signature = b64decode(case["signatureBase64"])
    from_did = parse_did_key(case["publicKeyDid"])
    from_multibase = parse_legacy_multibase(case["didDocSuite"], case["publicKeyMultibase"])
    assert from_did == from_multibase
    assert from_did.curve == CURVE_BY_ALG[case["algorithm"]]
    assert from_did.did_key() == case["publicKeyDid"]
    vm = {"type": case["didDocSuite"], "publicKeyMultibase": case["publicKeyMultibase"]}
    assert public_key_from_verification_method(vm) == from_did
    assert from_did.verify(message, signature) is case["validSignature"]
    if "high-s" in case["tags"]:
        # Mathematically valid: only the low-S rule rejects it.
        assert from_did.verify(message, signature, allow_high_s=True)
    if "der-encoded" in case["tags"]:
        assert not from_did.verify(message, signature, allow_high_s=True)


def test_signature_fixtures_cover_both_rejections() -> None:
    tags = {t for c in SIGNATURE_FIXTURES for t in c["tags"]}
    assert {"high-s", "der-encoded"} <= tags


# The two vectors crypto.md lists beyond the interop file (P-256 high-S, K-256 DER).
SPEC_EXTRA_VECTORS = [
    (
        "did:key:zDnaembgSGUhZULN2Caob4HLJPaxBh92N7rtH21TErzqf8HQo",
        "2vZNsG3UKvvO/CDlrdvyZRISOFylinBh0Jupc6KcWoKp7O4VS9giSAah8k5IUbXIW00SuOrjfEqQ9HEkN9JGzw",
        "high-s",
    ),
    (
        "did:key:zQ3shnriYMXc8wvkbJqfNWh5GXn2bVAeqTC92YuNbek4npqGF",
        "MEUCIQCWumUqJqOCqInXF7AzhIRg2MhwRz2rWZcOEsOjPmNItgIgXJH7RnqfYY6M0eg33wU0sFYDlprwdOcpRn78Sz5ePgk",
        "der-encoded",
    ),
]


@pytest.mark.parametrize(("did", "sig_b64", "tag"), SPEC_EXTRA_VECTORS)
def test_spec_extra_signature_vectors(did: str, sig_b64: str, tag: str) -> None:
    key = parse_did_key(did)
    signature = b64decode(sig_b64)
    assert not key.verify(HELLO, signature)
    if tag == "high-s":
        assert key.verify(HELLO, signature, allow_high_s=True)
    else:
        # A generic library accepts the DER form; we must not.
        native = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256K1(), key.compressed)
        native.verify(signature, HELLO, ec.ECDSA(hashes.SHA256()))
        assert not key.verify(HELLO, signature, allow_high_s=True)
        r, s = decode_dss_signature(signature)
        assert key.verify(HELLO, join_sig(r, s))


# -- interop: w3c did:key vectors ---------------------------------------------------


@pytest.mark.parametrize("case", load_json("crypto/w3c_didkey_K256.json"))
def test_w3c_didkey_k256(case: dict) -> None:
    priv = PrivateKey.from_hex(case["privateKeyBytesHex"], K256)
    assert priv.public_key.did_key() == case["publicDidKey"]
    parsed = parse_did_key(case["publicDidKey"])
    assert parsed == priv.public_key
    assert parsed.curve == K256
    assert parsed.did_key() == case["publicDidKey"]
    assert priv.to_hex() == case["privateKeyBytesHex"]


@pytest.mark.parametrize("case", load_json("crypto/w3c_didkey_P256.json"))
def test_w3c_didkey_p256(case: dict) -> None:
    raw = b58decode(case["privateKeyBytesBase58"])
    assert len(raw) == 32
    priv = PrivateKey.from_bytes(raw, P256)
    assert priv.public_key.did_key() == case["publicDidKey"]
    parsed = parse_did_key(case["publicDidKey"])
    assert parsed == priv.public_key
    assert parsed.curve == P256
    assert b58encode(priv.to_bytes()) == case["privateKeyBytesBase58"]


# -- worked examples from crypto.md ---------------------------------------------------


@pytest.mark.parametrize(
    ("did", "curve", "point_hex"),
    [
        (
            "did:key:zQ3shqwJEJyMBsBXCWyCBpUBMqxcon9oHB7mCvx4sSpMdLJwc",
            K256,
            "03a7d7fbf04846fa1fcff728ba594f3c5819345e88908e874b537ba5a65d1fc3bb",
        ),
        (
            "did:key:zDnaembgSGUhZULN2Caob4HLJPaxBh92N7rtH21TErzqf8HQo",
            P256,
            "033a8273eece6b0d82e95c3506617db5000e14ff0023325d0bb0274918bc6a6cdc",
        ),
    ],
)
def test_worked_did_key_decode(did: str, curve: str, point_hex: str) -> None:
    key = parse_did_key(did)
    assert key.curve == curve
    assert key.compressed.hex() == point_hex
    prefix = b"\xe7\x01" if curve == K256 else b"\x80\x24"
    assert b58decode(did.removeprefix("did:key:z")) == prefix + key.compressed
    assert PublicKey(curve, bytes.fromhex(point_hex)).did_key() == did


def test_worked_private_to_did_key() -> None:
    k = PrivateKey.from_hex(
        "9085d2bef69286a6cbb51623c8fa258629945cd55ca705cc4e66700396894e0c", K256
    )
    assert k.public_key.compressed.hex() == (
        "03874c15c7fda20e539c6e5ba573c139884c351188799f5458b4b41f7924f235cd"
    )
    assert k.public_key.did_key() == "did:key:zQ3shokFTS3brHcDQrn82RUDfCZESWL1ZdCEJwekUDPQiYBme"
    p = PrivateKey.from_hex(
        "82ebbd63ebbd9ff60141a69bd4c9be282f2415e8eafa9d42c0ed396daccca979", P256
    )
    assert b58encode(p.to_bytes()) == "9p4VRzdmhsnq869vQjVCTrRry7u4TtfRxhvBFJTGU2Cp"
    assert p.public_key.did_key() == "did:key:zDnaeTiq1PdzvZXUaMdezchcMJQpBdH2VN4pgrrEhMCCbmwSb"


LEGACY_K256 = (
    "zQYEBzXeuTM9UR3rfvNag6L3RNAs5pQZyYPsomTsgQhsxLdEgCrPTLgFna8yqCnxPpNT7DBk6Ym3dgPKNu86vt9GR"
)
MULTIKEY_K256 = "zQ3shXjHeiBuRCKmM36cuYnm7YEMzhGnCmCyW92sRJ9pribSF"


def test_worked_legacy_uncompressed_k256() -> None:
    raw = b58decode(LEGACY_K256[1:])
    assert len(raw) == 65 and raw[:2] == b"\x04\x99"
    legacy = parse_legacy_multibase("EcdsaSecp256k1VerificationKey2019", LEGACY_K256)
    modern = parse_multikey(MULTIKEY_K256)
    assert legacy == modern
    assert b58decode(MULTIKEY_K256[1:])[:4] == b"\xe7\x01\x02\x99"
    assert legacy.multikey() == MULTIKEY_K256
    assert modern.legacy_multibase() == LEGACY_K256
    assert modern.uncompressed == raw
    vm_legacy = {
        "id": "#atproto",
        "type": "EcdsaSecp256k1VerificationKey2019",
        "controller": "did:web:example.com",
        "publicKeyMultibase": LEGACY_K256,
    }
    vm_modern = {**vm_legacy, "type": "Multikey", "publicKeyMultibase": MULTIKEY_K256}
    assert public_key_from_verification_method(vm_legacy) == modern
    assert public_key_from_verification_method(vm_modern) == modern


def test_legacy_p256_uncompressed_and_compressed() -> None:
    key = PrivateKey.generate(P256).public_key
    t = "EcdsaSecp256r1VerificationKey2019"
    assert parse_legacy_multibase(t, key.legacy_multibase()) == key
    assert parse_legacy_multibase(t, "z" + b58encode(key.compressed)) == key


# -- sign / verify ---------------------------------------------------------------------


@pytest.mark.parametrize("curve", [K256, P256])
def test_sign_verify_round_trip(curve: str) -> None:
    key = PrivateKey.generate(curve)
    pub = key.public_key
    assert key.curve == curve == pub.curve
    for message in (b"", b"x", HELLO, b"\x00" * 10_000):
        sig = key.sign(message)
        assert len(sig) == 64
        assert pub.verify(message, sig)
        assert pub.verify(message, bytearray(sig))
        assert pub.verify(memoryview(message), memoryview(sig))


@pytest.mark.parametrize("curve", [K256, P256])
def test_signatures_always_low_s(curve: str) -> None:
    key = PrivateKey.generate(curve)
    half = N[curve] // 2
    for i in range(300):
        message = i.to_bytes(4, "big")
        sig = key.sign(message)
        r, s = split_sig(sig)
        assert 0 < r < N[curve]
        assert 0 < s <= half
        assert key.public_key.verify(message, sig)


def test_p256_sign_agrees_with_cryptography() -> None:
    key = PrivateKey.generate(P256)
    native = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), key.public_key.compressed)
    sig = key.sign(HELLO)
    native.verify(encode_dss_signature(*split_sig(sig)), HELLO, ec.ECDSA(hashes.SHA256()))
    with pytest.raises(CryptographyInvalidSignature):
        native.verify(
            encode_dss_signature(*split_sig(sig)), HELLO + b"!", ec.ECDSA(hashes.SHA256())
        )


def test_k256_sign_is_deterministic_rfc6979() -> None:
    key = PrivateKey.generate(K256)
    assert key.sign(HELLO) == key.sign(HELLO)


@pytest.mark.parametrize("curve", [K256, P256])
def test_tampering_fails(curve: str) -> None:
    key = PrivateKey.generate(curve)
    pub = key.public_key
    sig = key.sign(HELLO)
    assert not pub.verify(HELLO + b"\x00", sig)
    assert not pub.verify(HELLO[:-1], sig)
    for i in (0, 31, 32, 63):
        bad = bytearray(sig)
        bad[i] ^= 0x01
        assert not pub.verify(HELLO, bytes(bad))
    assert not PrivateKey.generate(curve).public_key.verify(HELLO, sig)


def test_wrong_curve_key_fails() -> None:
    k = PrivateKey.generate(K256)
    p = PrivateKey.generate(P256)
    assert not p.public_key.verify(HELLO, k.sign(HELLO))
    assert not k.public_key.verify(HELLO, p.sign(HELLO))


@pytest.mark.parametrize("curve", [K256, P256])
def test_high_s_and_der_rejected(curve: str) -> None:
    key = PrivateKey.generate(curve)
    pub = key.public_key
    sig = key.sign(HELLO)
    flipped = high_s(sig, curve)
    assert not pub.verify(HELLO, flipped)
    assert pub.verify(HELLO, flipped, allow_high_s=True)
    assert pub.verify(HELLO, sig, allow_high_s=True)
    assert not pub.verify(HELLO + b"!", flipped, allow_high_s=True)
    der = encode_dss_signature(*split_sig(sig))
    assert not pub.verify(HELLO, der)
    assert not pub.verify(HELLO, der, allow_high_s=True)


@pytest.mark.parametrize("curve", [K256, P256])
@pytest.mark.parametrize("allow_high_s", [False, True])
def test_out_of_range_r_s_rejected(curve: str, allow_high_s: bool) -> None:
    key = PrivateKey.generate(curve)
    pub = key.public_key
    r, s = split_sig(key.sign(HELLO))
    n = N[curve]
    for bad in [
        join_sig(0, s),
        join_sig(r, 0),
        join_sig(n, s),
        join_sig(r + n, s) if r + n < 2**256 else join_sig(n + 1, s),
        join_sig(r, n),
        join_sig(r, n + s) if n + s < 2**256 else join_sig(r, n + 1),
        b"\xff" * 64,
        b"\x00" * 64,
        join_sig(r, n // 2),  # in range but wrong
    ]:
        assert pub.verify(HELLO, bad, allow_high_s=allow_high_s) is False


@pytest.mark.parametrize("curve", [K256, P256])
def test_verify_never_raises_on_junk_signature_types(curve: str) -> None:
    pub = PrivateKey.generate(curve).public_key
    for junk in [None, "a" * 64, 12, [0] * 64, b"", b"\x01" * 63, b"\x01" * 65, b"\x30" * 72]:
        assert pub.verify(HELLO, junk) is False  # type: ignore[arg-type]


@given(sig=st.binary(min_size=0, max_size=80), msg=st.binary(max_size=64))
def test_random_signatures_never_verify_or_raise(sig: bytes, msg: bytes) -> None:
    for pub in (FIXED_K256.public_key, FIXED_P256.public_key):
        for allow in (False, True):
            assert pub.verify(msg, sig, allow_high_s=allow) is False


@given(data=st.binary(min_size=64, max_size=64))
def test_random_64_byte_signatures(data: bytes) -> None:
    assert FIXED_K256.public_key.verify(HELLO, data, allow_high_s=True) is False
    assert FIXED_P256.public_key.verify(HELLO, data, allow_high_s=True) is False


FIXED_K256 = PrivateKey.from_hex(
    "9085d2bef69286a6cbb51623c8fa258629945cd55ca705cc4e66700396894e0c", K256
)
FIXED_P256 = PrivateKey.from_hex(
    "82ebbd63ebbd9ff60141a69bd4c9be282f2415e8eafa9d42c0ed396daccca979", P256
)


# -- key parsing: errors -------------------------------------------------------------


def not_on_curve(curve: str) -> bytes:
    """A 33-byte compressed encoding whose x has no point on the curve."""
    x = 5 if curve == K256 else 1
    return b"\x02" + x.to_bytes(32, "big")


@pytest.mark.parametrize("curve", [K256, P256])
def test_point_validation(curve: str) -> None:
    with pytest.raises(InvalidKey):
        PublicKey(curve, not_on_curve(curve))
    prefix = b"\xe7\x01" if curve == K256 else b"\x80\x24"
    with pytest.raises(InvalidKey):
        parse_multikey("z" + b58encode(prefix + not_on_curve(curve)))
    good = PrivateKey.generate(curve).public_key
    unc = good.uncompressed
    assert PublicKey.from_bytes(unc, curve) == good
    bad_y = unc[:-1] + bytes([unc[-1] ^ 1])
    with pytest.raises(InvalidKey):
        PublicKey.from_bytes(bad_y, curve)
    for hybrid_prefix in (6, 7):
        with pytest.raises(InvalidKey):
            PublicKey.from_bytes(bytes([hybrid_prefix]) + unc[1:], curve)
    with pytest.raises(InvalidKey):
        PublicKey.from_bytes(b"\x00", curve)
    with pytest.raises(InvalidKey):
        PublicKey.from_bytes(b"\x04" + good.compressed[1:], curve)
    with pytest.raises(InvalidKey):
        PublicKey(curve, unc)  # the constructor takes the compressed form only
    # Multikey requires the compressed form even when the point is valid.
    with pytest.raises(InvalidKey):
        parse_multikey("z" + b58encode(prefix + unc))


def test_unsupported_key_types() -> None:
    ed25519 = "z" + b58encode(b"\xed\x01" + bytes(range(32)))
    with pytest.raises(UnsupportedKeyType):
        parse_multikey(ed25519)
    with pytest.raises(UnsupportedKeyType):
        parse_did_key("did:key:" + ed25519)
    with pytest.raises(UnsupportedKeyType):
        parse_did_key("did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK")
    with pytest.raises(UnsupportedKeyType):
        PublicKey("ed25519", bytes(33))
    with pytest.raises(UnsupportedKeyType):
        PrivateKey.generate("secp384r1")
    with pytest.raises(UnsupportedKeyType):
        parse_legacy_multibase("Ed25519VerificationKey2020", LEGACY_K256)
    with pytest.raises(UnsupportedKeyType):
        public_key_from_verification_method(
            {"type": "JsonWebKey2020", "publicKeyJwk": {"kty": "EC"}}
        )


@pytest.mark.parametrize(
    "text",
    [
        "",
        "z",
        "Q3shqwJEJyMBsBXCWyCBpUBMqxcon9oHB7mCvx4sSpMdLJwc",  # no multibase prefix
        "uQ3shqwJEJyMBsBXCWyCBpUBMqxcon9oHB7mCvx4sSpMdLJwc",
        "zQ3shqwJEJyMBsBXCWyCBpUBMqxcon9oHB7mCvx4sSpMdLJw0",  # '0' not base58
        " zQ3shqwJEJyMBsBXCWyCBpUBMqxcon9oHB7mCvx4sSpMdLJwc",
        "z" + "2" * 1000,
        "z" + b58encode(b"\xe7"),  # truncated varint
        "z" + b58encode(b"\xff" * 12),  # unterminated varint
    ],
)
def test_malformed_multikeys(text: str) -> None:
    with pytest.raises(InvalidKey):
        parse_multikey(text)


@pytest.mark.parametrize(
    "text",
    [
        # base58 is positional: a digit more or less changes the leading bytes,
        # so these decode to some other (unsupported) multicodec, or to nothing.
        "zQ3sh",
        "zQ3shqwJEJyMBsBXCWyCBpUBMqxcon9oHB7mCvx4sSpMdLJwcc",
        "zQ3shqwJEJyMBsBXCWyCBpUBMqxcon9oHB7mCvx4sSpMdLJw",
    ],
)
def test_truncated_or_extended_multikeys(text: str) -> None:
    with pytest.raises(KEY_ERRORS):
        parse_multikey(text)


@pytest.mark.parametrize(
    "did",
    [
        "",
        "zQ3shqwJEJyMBsBXCWyCBpUBMqxcon9oHB7mCvx4sSpMdLJwc",
        "did:plc:zQ3shqwJEJyMBsBXCWyCBpUBMqxcon9oHB7mCvx4sSpMdLJwc",
        "DID:KEY:zQ3shqwJEJyMBsBXCWyCBpUBMqxcon9oHB7mCvx4sSpMdLJwc",
        "did:key:zQ3shqwJEJyMBsBXCWyCBpUBMqxcon9oHB7mCvx4sSpMdLJwc#zQ3sh",
        "did:key:",
    ],
)
def test_malformed_did_keys(did: str) -> None:
    with pytest.raises(InvalidKey):
        parse_did_key(did)


def test_non_string_inputs() -> None:
    with pytest.raises(InvalidKey):
        parse_did_key(None)  # type: ignore[arg-type]
    with pytest.raises(InvalidKey):
        parse_multikey(b"zQ3sh")  # type: ignore[arg-type]
    with pytest.raises(InvalidKey):
        public_key_from_verification_method(["Multikey"])  # type: ignore[arg-type]
    with pytest.raises(InvalidKey):
        public_key_from_verification_method({"type": "Multikey"})
    with pytest.raises(InvalidKey):
        public_key_from_verification_method({"publicKeyMultibase": MULTIKEY_K256})
    with pytest.raises(InvalidKey):
        public_key_from_verification_method(
            {"type": "EcdsaSecp256k1VerificationKey2019", "publicKeyMultibase": 7}
        )


def test_legacy_rejects_prefixed_and_wrong_lengths() -> None:
    t = "EcdsaSecp256k1VerificationKey2019"
    with pytest.raises(InvalidKey):
        parse_legacy_multibase(t, MULTIKEY_K256)  # multicodec prefix is not the legacy form
    with pytest.raises(InvalidKey):
        parse_legacy_multibase(t, "z" + b58encode(b"\x04" + bytes(10)))
    with pytest.raises(InvalidKey):
        parse_legacy_multibase(t, "m" + LEGACY_K256[1:])
    # The k256 legacy point is not on P-256.
    with pytest.raises(InvalidKey):
        parse_legacy_multibase("EcdsaSecp256r1VerificationKey2019", LEGACY_K256)


@given(st.text(max_size=120))
def test_random_did_key_strings(text: str) -> None:
    for candidate in (text, "did:key:" + text, "did:key:z" + text):
        try:
            key = parse_did_key(candidate)
        except KEY_ERRORS:
            continue
        assert key.did_key() == candidate


@given(st.text(max_size=120))
def test_random_multikey_strings(text: str) -> None:
    for candidate in (text, "z" + text):
        try:
            key = parse_multikey(candidate)
        except KEY_ERRORS:
            continue
        assert key.multikey() == candidate


@given(st.binary(max_size=70))
def test_random_multikey_bytes(raw: bytes) -> None:
    try:
        key = parse_multikey("z" + b58encode(raw))
    except KEY_ERRORS:
        return
    assert b58decode(key.multikey()[1:]) == raw


@given(
    prefix=st.sampled_from([b"\xe7\x01", b"\x80\x24"]),
    parity=st.sampled_from([b"\x02", b"\x03"]),
    x=st.binary(min_size=32, max_size=32),
)
def test_random_points(prefix: bytes, parity: bytes, x: bytes) -> None:
    try:
        key = parse_multikey("z" + b58encode(prefix + parity + x))
    except InvalidKey:
        return
    assert key.compressed == parity + x
    assert not key.verify(HELLO, FIXED_K256.sign(HELLO))


@given(
    type_name=st.sampled_from(
        ["Multikey", "EcdsaSecp256k1VerificationKey2019", "EcdsaSecp256r1VerificationKey2019", "X"]
    ),
    raw=st.binary(max_size=70),
)
def test_random_verification_methods(type_name: str, raw: bytes) -> None:
    try:
        public_key_from_verification_method(
            {"type": type_name, "publicKeyMultibase": "z" + b58encode(raw)}
        )
    except KEY_ERRORS:
        pass


# -- base58 -------------------------------------------------------------------------------


@given(st.binary(max_size=80))
def test_base58_round_trip(data: bytes) -> None:
    text = b58encode(data)
    assert b58decode(text) == data


def test_base58_known_values() -> None:
    assert b58encode(b"") == ""
    assert b58encode(b"\x00") == "1"
    assert b58encode(b"\x00\x00\x01") == "112"
    assert b58encode(b"hello world") == "StV1DL6CwTryKyV"
    assert b58decode("StV1DL6CwTryKyV") == b"hello world"
    assert b58decode("") == b""
    assert b58decode("111") == b"\x00\x00\x00"


@pytest.mark.parametrize("bad", ["0", "O", "I", "l", "+", "/", "=", " ", "abc!", "é"])
def test_base58_rejects_invalid_characters(bad: str) -> None:
    with pytest.raises(ValueError):
        b58decode("2" + bad)


# -- value semantics --------------------------------------------------------------------


def test_private_key_secret_not_in_repr() -> None:
    for key in (FIXED_K256, FIXED_P256):
        text = repr(key) + str(key) + f"{key}"
        assert key.to_hex() not in text
        assert key.to_bytes().hex().upper() not in text
        assert key.to_multikey() not in text
        assert b58encode(key.to_bytes()) not in text
        assert key.public_key.did_key() in text


def test_private_key_exports_round_trip() -> None:
    for curve in (K256, P256):
        key = PrivateKey.generate(curve)
        assert PrivateKey.from_bytes(key.to_bytes(), curve) == key
        assert PrivateKey.from_hex(key.to_hex(), curve) == key
        mk = key.to_multikey()
        assert mk.startswith("z")
        again = PrivateKey.from_multikey(mk)
        assert again == key and again.curve == curve
        assert again.public_key == key.public_key
        assert hash(again) == hash(key)
    assert PrivateKey.generate(K256) != PrivateKey.generate(K256)
    assert FIXED_K256 != FIXED_P256
    assert FIXED_K256.jwt_alg == "ES256K" and FIXED_P256.jwt_alg == "ES256"


def test_private_key_from_multikey_errors() -> None:
    with pytest.raises(UnsupportedKeyType):
        PrivateKey.from_multikey(MULTIKEY_K256)  # a public key
    with pytest.raises(InvalidKey):
        PrivateKey.from_multikey("z" + b58encode(b"\x81\x26" + bytes(31)))


@pytest.mark.parametrize("curve", [K256, P256])
def test_private_key_range(curve: str) -> None:
    for bad in (bytes(32), N[curve].to_bytes(32, "big"), b"\xff" * 32, bytes(31), bytes(33)):
        with pytest.raises(InvalidKey):
            PrivateKey.from_bytes(bad, curve)
    PrivateKey.from_bytes((N[curve] - 1).to_bytes(32, "big"), curve)
    PrivateKey.from_bytes((1).to_bytes(32, "big"), curve)
    for bad_hex in ("00", "zz" * 32, "0x" + "11" * 31):
        with pytest.raises(InvalidKey):
            PrivateKey.from_hex(bad_hex, curve)
    with pytest.raises(InvalidKey):
        PrivateKey.from_bytes("11" * 32, curve)  # type: ignore[arg-type]


def test_private_key_immutable_and_not_picklable() -> None:
    key = PrivateKey.generate(K256)
    with pytest.raises(AttributeError):
        key._secret = b"x"  # type: ignore[misc]
    with pytest.raises(TypeError):
        pickle.dumps(key)


def test_public_key_value_semantics() -> None:
    a = FIXED_K256.public_key
    b = parse_did_key(a.did_key())
    assert a == b and hash(a) == hash(b)
    assert len({a, b, FIXED_P256.public_key}) == 2
    assert a != PublicKey(P256, FIXED_P256.public_key.compressed)
    assert pickle.loads(pickle.dumps(a)) == a
    assert pickle.loads(pickle.dumps(a)).verify(HELLO, FIXED_K256.sign(HELLO))
    assert a.did_key() in repr(a)
    assert a.jwt_alg == "ES256K" and FIXED_P256.public_key.jwt_alg == "ES256"
    with pytest.raises(AttributeError):
        a.curve = P256  # type: ignore[misc]
    with pytest.raises(InvalidKey):
        PublicKey(K256, "02" * 33)  # type: ignore[arg-type]
    assert PublicKey(K256, bytearray(a.compressed)) == a  # type: ignore[arg-type]


def test_standard_base64_of_fixture_signatures_is_64_bytes() -> None:
    # Sanity on the vector encoding itself: unpadded standard base64.
    for case in SIGNATURE_FIXTURES:
        raw = base64.b64decode(case["signatureBase64"] + "=" * (-len(case["signatureBase64"]) % 4))
        assert (len(raw) == 64) is ("der-encoded" not in case["tags"])


def test_errors_are_crypto_errors() -> None:
    assert issubclass(InvalidKey, CryptoError) and issubclass(UnsupportedKeyType, CryptoError)
