"""Keys and signatures: k256 (secp256k1) and p256 (NIST P-256), the only two
curves atproto signs with.

- Signatures are ECDSA over SHA-256 of the message, encoded as 64 bytes
  ``r || s`` (big-endian, 32 bytes each), always **low-S** when we sign.
- :meth:`PublicKey.verify` is strict by default: exactly 64 bytes (so DER is
  rejected), ``0 < r < n``, ``0 < s <= n // 2``. ``allow_high_s=True`` relaxes
  only the last rule (service-auth JWTs, see ``spec/crypto.md`` section 7).
- Public keys travel as ``did:key:z...`` / Multikey ``z...`` (multicodec
  prefix + 33-byte compressed point, base58btc) or, in old DID documents, as a
  legacy ``publicKeyMultibase`` whose curve comes from the verification method
  type.

k256 uses libsecp256k1 through coincurve's cffi layer (the relay verifies every
commit, so this is the hot path); p256 uses ``cryptography``. Both keep the
parsed native key on the object, so verifying only parses the signature.

Errors: :class:`~roost.errors.UnsupportedKeyType` for a key that is neither
k256 nor p256, :class:`~roost.errors.InvalidKey` for malformed keys. A bad
signature is never an exception: ``verify`` returns ``False``.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import coincurve
from coincurve import _libsecp256k1  # type: ignore[attr-defined,unused-ignore]
from coincurve.context import GLOBAL_CONTEXT as _K256_CONTEXT
from cryptography.exceptions import InvalidSignature as _CryptographyInvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from roost.errors import InvalidKey, UnsupportedKeyType

__all__ = [
    "CURVES",
    "CURVE_BY_JWT_ALG",
    "JWT_ALG_BY_CURVE",
    "K256",
    "LEGACY_KEY_TYPES",
    "MAX_MULTIBASE_KEY_LENGTH",
    "P256",
    "Curve",
    "PrivateKey",
    "PublicKey",
    "b58decode",
    "b58encode",
    "parse_did_key",
    "parse_legacy_multibase",
    "parse_multikey",
    "public_key_from_verification_method",
]

Curve = Literal["k256", "p256"]

K256: Final = "k256"
P256: Final = "p256"
CURVES: Final = (K256, P256)

#: JWT ``alg`` header for each curve, and back.
JWT_ALG_BY_CURVE: Final[Mapping[str, str]] = {K256: "ES256K", P256: "ES256"}
CURVE_BY_JWT_ALG: Final[Mapping[str, str]] = {"ES256K": K256, "ES256": P256}

#: Legacy DID-document verification method types and the curve each fixes.
LEGACY_KEY_TYPES: Final[Mapping[str, str]] = {
    "EcdsaSecp256k1VerificationKey2019": K256,
    "EcdsaSecp256r1VerificationKey2019": P256,
}

#: Longest multibase key string we try to decode (real ones are 45-90 chars);
#: bounds the quadratic base58 decode on hostile input.
MAX_MULTIBASE_KEY_LENGTH: Final = 256

# -- curve constants ----------------------------------------------------------

_ORDER: Final[Mapping[str, int]] = {
    K256: 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141,
    P256: 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551,
}
# Big-endian 32-byte forms: for equal-length byte strings, ``<`` on bytes is
# ``<`` on the integers, which keeps the range checks off the int machinery.
_ORDER_BYTES: Final[Mapping[str, bytes]] = {c: n.to_bytes(32, "big") for c, n in _ORDER.items()}
_HALF_ORDER_BYTES: Final[Mapping[str, bytes]] = {
    c: (n // 2).to_bytes(32, "big") for c, n in _ORDER.items()
}
_ZERO32: Final = bytes(32)
_K256_N: Final = _ORDER[K256]
_K256_N32: Final = _ORDER_BYTES[K256]
_K256_HALF32: Final = _HALF_ORDER_BYTES[K256]
_P256_N32: Final = _ORDER_BYTES[P256]
_P256_HALF32: Final = _HALF_ORDER_BYTES[P256]

# multicodec varints: secp256k1-pub 0xe7, p256-pub 0x1200,
# secp256k1-priv 0x1301, p256-priv 0x1306.
_PUB_PREFIX: Final[Mapping[str, bytes]] = {K256: b"\xe7\x01", P256: b"\x80\x24"}
_CURVE_BY_PUB_PREFIX: Final[Mapping[bytes, str]] = {v: k for k, v in _PUB_PREFIX.items()}
_PRIV_PREFIX: Final[Mapping[str, bytes]] = {K256: b"\x81\x26", P256: b"\x86\x26"}
_CURVE_BY_PRIV_PREFIX: Final[Mapping[bytes, str]] = {v: k for k, v in _PRIV_PREFIX.items()}

_P256_CURVE: Final = ec.SECP256R1()
_ECDSA_SHA256: Final = ec.ECDSA(hashes.SHA256())
_K256_CTX: Final = _K256_CONTEXT.ctx
_ffi: Final = _libsecp256k1.ffi
_lib: Final = _libsecp256k1.lib
_sha256 = hashlib.sha256


def _check_curve(curve: object) -> str:
    if curve == K256:
        return K256
    if curve == P256:
        return P256
    raise UnsupportedKeyType(f"unsupported curve {curve!r}: expected 'k256' or 'p256'")


# -- base58btc ----------------------------------------------------------------

_B58_ALPHABET: Final = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_B58_INDEX: Final[Mapping[str, int]] = {ch: i for i, ch in enumerate(_B58_ALPHABET)}


def b58encode(data: bytes) -> str:
    """base58btc (Bitcoin alphabet) of ``data``; each leading zero byte becomes ``1``."""
    data = bytes(data)
    body = data.lstrip(b"\x00")
    n = int.from_bytes(body, "big")
    digits = []
    while n:
        n, rem = divmod(n, 58)
        digits.append(_B58_ALPHABET[rem])
    return "1" * (len(data) - len(body)) + "".join(reversed(digits))


def b58decode(text: str) -> bytes:
    """Decode base58btc; raises ``ValueError`` on any character outside the alphabet
    (``TypeError`` if ``text`` is not a str).

    The encoding is bijective (leading ``1`` = leading zero byte), so every
    accepted string is the canonical encoding of its result.
    """
    if not isinstance(text, str):
        raise TypeError("base58 input must be a str")
    n = 0
    index = _B58_INDEX
    for ch in text:
        digit = index.get(ch)
        if digit is None:
            raise ValueError(f"invalid base58 character {ch!r}")
        n = n * 58 + digit
    zeros = len(text) - len(text.lstrip("1"))
    return b"\x00" * zeros + n.to_bytes((n.bit_length() + 7) // 8, "big")


def _decode_multibase_z(value: object, what: str) -> bytes:
    if not isinstance(value, str):
        raise InvalidKey(f"{what} must be a string")
    if len(value) > MAX_MULTIBASE_KEY_LENGTH:
        raise InvalidKey(f"{what} is too long")
    if not value.startswith("z"):
        raise InvalidKey(f"{what} must be multibase base58btc (start with 'z')")
    try:
        return b58decode(value[1:])
    except ValueError as exc:
        raise InvalidKey(f"{what} is not valid base58btc: {exc}") from None


def _read_varint(data: bytes) -> int | None:
    """Unsigned LEB128 at the start of ``data`` (None if truncated or oversized)."""
    value = 0
    for i, byte in enumerate(data[:9]):
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            return value
    return None


def _split_multicodec(raw: bytes, known: Mapping[bytes, str], what: str) -> tuple[str, bytes]:
    curve = known.get(raw[:2])
    if curve is not None:
        return curve, raw[2:]
    codec = _read_varint(raw)
    if codec is None:
        raise InvalidKey(f"{what} has no valid multicodec prefix")
    raise UnsupportedKeyType(f"{what} has unsupported multicodec 0x{codec:x}")


# -- public keys --------------------------------------------------------------


def _load_point(curve: str, data: bytes) -> tuple[bytes, Any]:
    """(compressed bytes, native key) for a SEC1 point; raises InvalidKey."""
    length = len(data)
    if not ((length == 33 and data[0] in (2, 3)) or (length == 65 and data[0] == 4)):
        raise InvalidKey(
            f"{curve} public key must be a 33-byte compressed or 65-byte uncompressed "
            f"SEC1 point, got {length} bytes"
        )
    if curve == K256:
        try:
            cc = coincurve.PublicKey(data)
        except ValueError:
            raise InvalidKey("k256 public key is not a point on the curve") from None
        # Keep only the parsed secp256k1_pubkey cdata (it owns its memory).
        return cc.format(compressed=True), cc.public_key
    try:
        native = ec.EllipticCurvePublicKey.from_encoded_point(_P256_CURVE, data)
    except ValueError:
        raise InvalidKey("p256 public key is not a point on the curve") from None
    compressed = native.public_bytes(Encoding.X962, PublicFormat.CompressedPoint)
    return compressed, native


@dataclass(frozen=True, slots=True)
class PublicKey:
    """A validated k256 or p256 public key; equal and hashed by (curve, compressed point).

    Build one with :meth:`from_bytes`, :func:`parse_did_key`,
    :func:`parse_multikey` or ``PrivateKey.public_key``; the constructor
    itself also validates (``PublicKey("k256", compressed33)``).
    """

    curve: str
    compressed: bytes
    _native: Any = field(default=None, init=False, repr=False, compare=False)
    _multikey: str | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        curve = _check_curve(self.curve)
        data = self.compressed
        if not isinstance(data, bytes):
            if not isinstance(data, (bytearray, memoryview)):
                raise InvalidKey("public key bytes must be bytes")
            data = bytes(data)
        if len(data) != 33:
            raise InvalidKey(f"compressed public key must be 33 bytes, got {len(data)}")
        compressed, native = _load_point(curve, data)
        object.__setattr__(self, "curve", curve)
        object.__setattr__(self, "compressed", compressed)
        # k256: the parsed secp256k1_pubkey cdata; p256: a cryptography public key.
        object.__setattr__(self, "_native", native)

    @classmethod
    def from_bytes(cls, data: bytes, curve: str) -> PublicKey:
        """From a SEC1 point, compressed (33 bytes) or uncompressed (65 bytes)."""
        curve = _check_curve(curve)
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise InvalidKey("public key bytes must be bytes")
        compressed, _ = _load_point(curve, bytes(data))
        return cls(curve, compressed)

    def __reduce__(self) -> tuple[Any, ...]:
        return (PublicKey, (self.curve, self.compressed))

    def __repr__(self) -> str:
        return f"PublicKey({self.did_key()!r})"

    @property
    def jwt_alg(self) -> str:
        """``"ES256K"`` for k256, ``"ES256"`` for p256."""
        return JWT_ALG_BY_CURVE[self.curve]

    @property
    def uncompressed(self) -> bytes:
        """The 65-byte SEC1 uncompressed point ``04 || X || Y``."""
        if self.curve == K256:
            return coincurve.PublicKey(self.compressed).format(compressed=False)
        return bytes(self._native.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint))

    def multikey(self) -> str:
        """Multikey string: ``z`` + base58btc(multicodec prefix + compressed point)."""
        mk = self._multikey
        if mk is None:
            mk = "z" + b58encode(_PUB_PREFIX[self.curve] + self.compressed)
            object.__setattr__(self, "_multikey", mk)
        return mk

    def did_key(self) -> str:
        """``did:key:`` + :meth:`multikey`."""
        return "did:key:" + self.multikey()

    def legacy_multibase(self) -> str:
        """Legacy DID-document form: ``z`` + base58btc(uncompressed point), no prefix."""
        return "z" + b58encode(self.uncompressed)

    def verify(self, message: bytes, signature: bytes, *, allow_high_s: bool = False) -> bool:
        """True if ``signature`` (64-byte ``r || s``) signs SHA-256(``message``).

        Strict unless ``allow_high_s``: high-S signatures are refused. Any
        malformed signature (wrong length, DER, r or s out of range, not bytes)
        gives ``False``, never an exception.
        """
        if type(signature) is not bytes:
            if not isinstance(signature, (bytearray, memoryview)):
                return False
            signature = bytes(signature)
        if len(signature) != 64:
            return False
        r = signature[:32]
        s = signature[32:]
        if self.curve == K256:
            if r == _ZERO32 or s == _ZERO32 or r >= _K256_N32 or s >= _K256_N32:
                return False
            if s > _K256_HALF32:
                if not allow_high_s:
                    return False
                # libsecp256k1 only verifies normalised (low-S) signatures.
                signature = r + (_K256_N - int.from_bytes(s, "big")).to_bytes(32, "big")
            sig = _ffi.new("secp256k1_ecdsa_signature *")
            if not _lib.secp256k1_ecdsa_signature_parse_compact(_K256_CTX, sig, signature):
                return False
            ok: int = _lib.secp256k1_ecdsa_verify(
                _K256_CTX, sig, _sha256(message).digest(), self._native
            )
            return ok == 1
        if r == _ZERO32 or s == _ZERO32 or r >= _P256_N32 or s >= _P256_N32:
            return False
        if s > _P256_HALF32 and not allow_high_s:
            return False
        der = encode_dss_signature(int.from_bytes(r, "big"), int.from_bytes(s, "big"))
        try:
            self._native.verify(der, message, _ECDSA_SHA256)
        except _CryptographyInvalidSignature:
            return False
        return True


# -- private keys -------------------------------------------------------------


class PrivateKey:
    """A k256 or p256 signing key. The secret never appears in ``repr`` or ``str``.

    Equality compares curve and secret in constant time.
    """

    __slots__ = ("_curve", "_native", "_public", "_secret")

    _curve: str
    _secret: bytes
    _native: Any
    _public: PublicKey

    def __init__(self, secret: bytes, curve: str = K256) -> None:
        curve = _check_curve(curve)
        if not isinstance(secret, (bytes, bytearray, memoryview)):
            raise InvalidKey("private key must be bytes")
        secret = bytes(secret)
        if len(secret) != 32:
            raise InvalidKey(f"private key must be 32 bytes, got {len(secret)}")
        if curve == K256:
            try:
                native: Any = coincurve.PrivateKey(secret)
            except ValueError:
                raise InvalidKey("k256 private key out of range") from None
            public = PublicKey(K256, native.public_key.format(compressed=True))
        else:
            try:
                native = ec.derive_private_key(int.from_bytes(secret, "big"), _P256_CURVE)
            except ValueError:
                raise InvalidKey("p256 private key out of range") from None
            public = PublicKey(
                P256, native.public_key().public_bytes(Encoding.X962, PublicFormat.CompressedPoint)
            )
        object.__setattr__(self, "_curve", curve)
        object.__setattr__(self, "_secret", secret)
        object.__setattr__(self, "_native", native)
        object.__setattr__(self, "_public", public)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("PrivateKey is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("PrivateKey is immutable")

    def __reduce__(self) -> tuple[Any, ...]:
        raise TypeError("PrivateKey is not picklable; export it explicitly with to_bytes()")

    # constructors

    @classmethod
    def generate(cls, curve: str = K256) -> PrivateKey:
        """A fresh random key (library RNG: libsecp256k1 via os.urandom / OpenSSL)."""
        curve = _check_curve(curve)
        if curve == K256:
            return cls(coincurve.PrivateKey().secret, K256)
        native = ec.generate_private_key(_P256_CURVE)
        return cls(native.private_numbers().private_value.to_bytes(32, "big"), P256)

    @classmethod
    def from_bytes(cls, raw: bytes, curve: str) -> PrivateKey:
        """From the 32-byte big-endian secret scalar."""
        return cls(raw, curve)

    @classmethod
    def from_hex(cls, text: str, curve: str) -> PrivateKey:
        """From 64 hex characters."""
        if not isinstance(text, str) or len(text) != 64:
            raise InvalidKey("hex private key must be 64 hex characters")
        try:
            raw = bytes.fromhex(text)
        except ValueError:
            raise InvalidKey("hex private key is not valid hex") from None
        return cls(raw, curve)

    @classmethod
    def from_multikey(cls, text: str) -> PrivateKey:
        """From ``z`` + base58btc(multicodec ``secp256k1-priv``/``p256-priv`` + 32 bytes)."""
        raw = _decode_multibase_z(text, "multibase private key")
        curve, secret = _split_multicodec(raw, _CURVE_BY_PRIV_PREFIX, "multibase private key")
        return cls(secret, curve)

    # accessors

    @property
    def curve(self) -> str:
        return self._curve

    @property
    def public_key(self) -> PublicKey:
        return self._public

    @property
    def jwt_alg(self) -> str:
        return JWT_ALG_BY_CURVE[self._curve]

    def to_bytes(self) -> bytes:
        """The 32-byte raw secret. Handle with care."""
        return self._secret

    def to_hex(self) -> str:
        return self._secret.hex()

    def to_multikey(self) -> str:
        """``z`` + base58btc(multicodec private-key prefix + secret). Handle with care."""
        return "z" + b58encode(_PRIV_PREFIX[self._curve] + self._secret)

    def __repr__(self) -> str:
        return f"PrivateKey(curve={self._curve!r}, public={self._public.did_key()!r})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PrivateKey):
            return NotImplemented
        return self._curve == other._curve and hmac.compare_digest(self._secret, other._secret)

    def __hash__(self) -> int:
        return hash((PrivateKey, self._public))

    # signing

    def sign(self, message: bytes) -> bytes:
        """ECDSA over SHA-256(``message``): 64 bytes ``r || s``, always low-S."""
        if self._curve == K256:
            sig = _ffi.new("secp256k1_ecdsa_signature *")
            if not _lib.secp256k1_ecdsa_sign(
                _K256_CTX, sig, _sha256(message).digest(), self._secret, _ffi.NULL, _ffi.NULL
            ):  # pragma: no cover - only fails for an invalid secret, checked at init
                raise InvalidKey("k256 signing failed")
            # libsecp256k1 already signs low-S; normalising is a cheap no-op guard.
            _lib.secp256k1_ecdsa_signature_normalize(_K256_CTX, sig, sig)
            out = _ffi.new("unsigned char[64]")
            _lib.secp256k1_ecdsa_signature_serialize_compact(_K256_CTX, out, sig)
            return bytes(_ffi.buffer(out, 64))
        r, s = decode_dss_signature(self._native.sign(message, _ECDSA_SHA256))
        n = _ORDER[P256]
        if s > n // 2:
            s = n - s
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")


# -- parsing ------------------------------------------------------------------


def parse_multikey(text: str) -> PublicKey:
    """Public key from a Multikey string ``z...`` (k256 or p256, compressed point)."""
    raw = _decode_multibase_z(text, "multikey")
    curve, point = _split_multicodec(raw, _CURVE_BY_PUB_PREFIX, "multikey")
    if len(point) != 33:
        raise InvalidKey(f"multikey must hold a 33-byte compressed point, got {len(point)} bytes")
    return PublicKey(curve, point)


def parse_did_key(did: str) -> PublicKey:
    """Public key from ``did:key:z...``."""
    if not isinstance(did, str) or not did.startswith("did:key:"):
        raise InvalidKey("did:key must start with 'did:key:'")
    return parse_multikey(did[len("did:key:") :])


def parse_legacy_multibase(type_name: str, value: str) -> PublicKey:
    """Public key from a legacy DID-document verification method.

    ``type_name`` (``EcdsaSecp256k1VerificationKey2019`` or
    ``EcdsaSecp256r1VerificationKey2019``) fixes the curve; ``value`` is ``z`` +
    base58btc of the bare SEC1 point, uncompressed (65 bytes, as the DID spec
    writes it) or compressed (33 bytes, as the interop fixtures write it).
    """
    curve = LEGACY_KEY_TYPES.get(type_name) if isinstance(type_name, str) else None
    if curve is None:
        raise UnsupportedKeyType(f"unsupported verification method type {type_name!r}")
    raw = _decode_multibase_z(value, "publicKeyMultibase")
    return PublicKey.from_bytes(raw, curve)


def public_key_from_verification_method(vm: Mapping[str, Any]) -> PublicKey:
    """Public key of one DID-document ``verificationMethod`` entry.

    Handles ``Multikey`` and the two legacy ``Ecdsa...VerificationKey2019``
    types; any other type raises :class:`UnsupportedKeyType`.
    """
    if not isinstance(vm, Mapping):
        raise InvalidKey("verification method must be an object")
    vm_type = vm.get("type")
    if not isinstance(vm_type, str):
        raise InvalidKey("verification method has no string 'type'")
    value = vm.get("publicKeyMultibase")
    if vm_type == "Multikey":
        if not isinstance(value, str):
            raise InvalidKey("Multikey verification method has no publicKeyMultibase")
        return parse_multikey(value)
    if vm_type in LEGACY_KEY_TYPES:
        if not isinstance(value, str):
            raise InvalidKey(f"{vm_type} verification method has no publicKeyMultibase")
        return parse_legacy_multibase(vm_type, value)
    raise UnsupportedKeyType(f"unsupported verification method type {vm_type!r}")
