"""Content identifiers (CIDs): the hash links of the atproto data model.

atproto generates exactly one CID form: CIDv1, SHA-256, codec ``dag-cbor``
(0x71, records, MST nodes, commits) or ``raw`` (0x55, blobs). Its binary form
is 36 bytes, its string form ``b`` + lower-case unpadded base32 (59
characters, ``bafyrei...`` / ``bafkrei...``).

On read we accept any well-formed CIDv1 (other codecs or hashes appear in
third-party records) and keep it byte for byte; ``is_blessed`` tells whether a
CID has the generated form, which commits and MST nodes require.

Formatting and parsing are on hot paths (JSON output, firehose decoding,
cursor handling, every link decoded out of an MST node), so ``CID`` is
normally the C type from the optional extension ``roost._cidext`` (built from
``roost/_cidext.c`` at install time). The pure-Python class below is the
reference implementation and the fallback when the extension is not built;
both behave the same (``tests/roost/test_cid.py`` runs every test against
each and checks that they agree on random input). ``str()`` is cached.

Set the environment variable ``ROOST_PURE_PYTHON=1`` (any value but empty or
``0``; read when ``roost.cid`` is first imported) to use the pure-Python class
even when the extension is built. The class actually in use is ``roost.cid.CID``; the Python one is
always available as ``roost.cid.PyCID`` (for tests: do not mix its instances
with ``CID`` ones, they are different types and never compare equal).
"""

from __future__ import annotations

import base64
import builtins
import hashlib
import importlib
import os
from types import ModuleType
from typing import Any, Final

from roost.errors import CidError
from roost.limits import MAX_CID_BYTES

__all__ = ["CID", "DAG_CBOR", "RAW", "SHA2_256"]

#: Multicodec of a DAG-CBOR (DRISL) block.
DAG_CBOR: Final = 0x71
#: Multicodec of raw bytes (blobs).
RAW: Final = 0x55
#: Multihash code of SHA-256.
SHA2_256: Final = 0x12

_PREFIX_DAG_CBOR: Final = b"\x01\x71\x12\x20"
_PREFIX_RAW: Final = b"\x01\x55\x12\x20"
_BLESSED_PREFIXES: Final = (_PREFIX_DAG_CBOR, _PREFIX_RAW)
_sha256 = hashlib.sha256

# The pure-Python class does its base32 in C all the same when it can: cbrrr's
# atproto-JSON mode converts {"$link": "b..."} <-> tag 42.
_c_decode: Any
_c_encode: Any
try:
    from cbrrr import _cbrrr

    _c_decode = _cbrrr.decode_dag_cbor
    _c_encode = _cbrrr.encode_dag_cbor
    _c_decode(b"\xd8\x2a\x41\x00", None, True)  # probe the private API once
except Exception:  # pragma: no cover - only without a compatible cbrrr
    _c_decode = _c_encode = None


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    """Unsigned LEB128 at ``pos``: (value, next position). Minimal form only."""
    value = 0
    shift = 0
    while True:
        if pos >= len(data):
            raise CidError("CID ends inside a varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            if byte == 0 and shift:
                raise CidError("CID varint is not minimally encoded")
            return value, pos
        shift += 7
        if shift > 56:
            raise CidError("CID varint is too long")


def _check_binary(data: bytes) -> None:
    """Raise unless ``data`` is a well-formed binary CIDv1."""
    if len(data) == 36 and data.startswith(_BLESSED_PREFIXES):
        return
    if len(data) > MAX_CID_BYTES:
        raise CidError(f"CID is {len(data)} bytes, more than {MAX_CID_BYTES}")
    if len(data) >= 2 and data[0] == 0x12 and data[1] == 0x20:
        raise CidError("CIDv0 is not allowed")
    version, pos = _read_varint(data, 0)
    if version != 1:
        raise CidError(f"CID version {version} is not supported (only CIDv1)")
    _codec, pos = _read_varint(data, pos)
    _hash_code, pos = _read_varint(data, pos)
    digest_len, pos = _read_varint(data, pos)
    if len(data) - pos != digest_len:
        raise CidError(
            f"CID multihash declares {digest_len} digest bytes but has {len(data) - pos}"
        )


def _b32_format(data: bytes) -> str:
    if _c_decode is not None:
        head = b"\xd8\x2a" + _bytes_head(len(data) + 1) + b"\x00"
        return _c_decode(head + data, None, True)[0]["$link"]  # type: ignore[no-any-return]
    return "b" + base64.b32encode(data).decode("ascii").lower().rstrip("=")


def _b32_parse(text: str) -> bytes:
    # cbrrr's base32 is strict but case-insensitive: give it lower-case text
    # only, and let the Python code below name the problem on any error.
    if _c_encode is not None and text.islower():
        try:
            out: bytes = _c_encode({"$link": text}, None, True)
        except ValueError:
            pass
        else:
            # tag 42 head (2 bytes) + byte-string head (1, 2, 3, 5 or 9) + 0x00 prefix
            head = out[2]
            return out[4 if head < 0x58 else 4 + (1 << (head - 0x58)) :]
    if not text.startswith("b"):
        raise CidError("bad CID string: only base32 ('b') multibase is supported")
    body = text[1:]
    if not body.isascii() or body != body.lower() or "=" in body:
        raise CidError("bad CID string: invalid base32 character")
    try:
        raw = base64.b32decode(body.upper() + "=" * (-len(body) % 8))
    except ValueError:
        raise CidError("bad CID string: invalid base32") from None
    if _b32_format_py(raw) != text:
        raise CidError("bad CID string: non-canonical base32")
    return raw


def _b32_format_py(data: bytes) -> str:
    return "b" + base64.b32encode(data).decode("ascii").lower().rstrip("=")


def _bytes_head(n: int) -> bytes:
    if n < 24:
        return bytes((0x40 | n,))
    if n < 256:
        return bytes((0x58, n))
    return bytes((0x59, n >> 8, n & 0xFF))


class CID:
    """An immutable CID. Build with ``parse``, ``from_bytes``, ``for_cbor`` or ``for_raw``.

    Equality and hashing use the binary form; ordering is bytewise over it.
    (This is the pure-Python reference implementation, ``PyCID``; ``roost._cidext``
    implements the same behaviour in C.)
    """

    __slots__ = ("_bytes", "_str")

    _bytes: bytes
    _str: str | None

    def __init__(self, data: bytes) -> None:
        """Wrap a binary CID (no multibase prefix), checking that it is well-formed."""
        if type(data) is not bytes:
            if isinstance(data, (bytearray, memoryview)):
                data = bytes(data)
            else:
                raise CidError(f"CID bytes must be bytes, not {type(data).__name__}")
        _check_binary(data)
        _set_bytes(self, data)
        _set_str(self, None)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("CID is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("CID is immutable")

    # -- construction ------------------------------------------------------

    @classmethod
    def from_bytes(cls, data: bytes) -> CID:
        """A CID from its binary form (36 bytes for the blessed form)."""
        return cls(data)

    @classmethod
    def from_str(cls, text: str) -> CID:
        """A CID from its multibase string; only base32 (``b...``) is accepted."""
        if type(text) is not str:
            raise CidError(f"CID string must be str, not {type(text).__name__}")
        cid = cls(_b32_parse(text))
        _set_str(cid, text)
        return cid

    @classmethod
    def parse(cls, value: str | bytes | CID) -> CID:
        """A CID from a string, binary bytes, or a CID (returned as is)."""
        if isinstance(value, PyCID):
            return value
        if isinstance(value, str):
            return cls.from_str(value)
        if isinstance(value, (bytes, bytearray, memoryview)):
            return cls(bytes(value))
        raise CidError(f"cannot make a CID from {type(value).__name__}")

    @classmethod
    def for_cbor_bytes(cls, block: bytes) -> CID:
        """The dag-cbor CID of already encoded bytes."""
        cid = _new(cls)
        _set_bytes(cid, _PREFIX_DAG_CBOR + _sha256(block).digest())
        _set_str(cid, None)
        return cid

    @classmethod
    def for_cbor(cls, value: Any) -> CID:
        """The dag-cbor CID of a data-model value (encoded strictly first)."""
        from roost.cbor import encode

        return cls.for_cbor_bytes(encode(value))

    @classmethod
    def for_raw(cls, data: bytes) -> CID:
        """The raw-codec CID of blob bytes."""
        cid = _new(cls)
        _set_bytes(cid, _PREFIX_RAW + _sha256(data).digest())
        _set_str(cid, None)
        return cid

    # -- properties --------------------------------------------------------

    @property
    def bytes(self) -> bytes:
        """The binary CID."""
        return self._bytes

    @property
    def version(self) -> int:
        return 1

    @property
    def codec(self) -> int:
        """Multicodec of the content (0x71 dag-cbor, 0x55 raw, ...)."""
        b = self._bytes
        if len(b) == 36 and b[0] == 1 and b[1] < 0x80:
            return b[1]
        return _read_varint(b, 1)[0]

    @property
    def hash_code(self) -> int:
        """Multihash function code (0x12 for SHA-256)."""
        pos = _read_varint(self._bytes, 1)[1]
        return _read_varint(self._bytes, pos)[0]

    @property
    def digest(self) -> builtins.bytes:
        """The hash digest bytes."""
        b = self._bytes
        pos = _read_varint(b, 1)[1]
        pos = _read_varint(b, pos)[1]
        length, pos = _read_varint(b, pos)
        return b[pos : pos + length]

    @property
    def is_blessed(self) -> bool:
        """True for the two forms atproto generates (v1, sha-256, dag-cbor or raw)."""
        b = self._bytes
        return len(b) == 36 and b.startswith(_BLESSED_PREFIXES)

    @property
    def is_dag_cbor(self) -> bool:
        """True for a blessed dag-cbor CID (records, MST nodes, commits)."""
        return len(self._bytes) == 36 and self._bytes[:4] == _PREFIX_DAG_CBOR

    @property
    def is_raw(self) -> bool:
        """True for a blessed raw CID (blobs)."""
        return len(self._bytes) == 36 and self._bytes[:4] == _PREFIX_RAW

    def matches(self, block: builtins.bytes) -> bool:
        """True if ``block`` hashes to this CID (SHA-256 CIDs only)."""
        b = self._bytes
        if len(b) == 36 and b[2:4] == b"\x12\x20":
            return _sha256(block).digest() == b[4:]
        return False

    # -- protocol ----------------------------------------------------------

    def __bytes__(self) -> builtins.bytes:
        return self._bytes

    def __str__(self) -> str:
        s = self._str
        if s is None:
            s = _b32_format(self._bytes)
            _set_str(self, s)
        return s

    def encode(self) -> str:
        """The base32 string form (same as ``str()``)."""
        return self.__str__()

    def __repr__(self) -> str:
        return f"CID({self.__str__()!r})"

    def __hash__(self) -> int:
        return hash(self._bytes)

    def __eq__(self, other: object) -> bool:
        if type(other) is PyCID:
            return self._bytes == other._bytes
        return NotImplemented

    def __ne__(self, other: object) -> bool:
        if type(other) is PyCID:
            return self._bytes != other._bytes
        return NotImplemented

    def __lt__(self, other: CID) -> bool:
        if isinstance(other, PyCID):
            return self._bytes < other._bytes
        return NotImplemented

    def __le__(self, other: CID) -> bool:
        if isinstance(other, PyCID):
            return self._bytes <= other._bytes
        return NotImplemented

    def __gt__(self, other: CID) -> bool:
        if isinstance(other, PyCID):
            return self._bytes > other._bytes
        return NotImplemented

    def __ge__(self, other: CID) -> bool:
        if isinstance(other, PyCID):
            return self._bytes >= other._bytes
        return NotImplemented

    def __reduce__(self) -> tuple[Any, ...]:
        return (PyCID, (self._bytes,))

    def __copy__(self) -> CID:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> CID:
        return self


#: The pure-Python implementation, whichever one ``CID`` names.
PyCID = CID

# Slot setters: construction bypasses the immutability guard in __setattr__.
_new = object.__new__
_set_bytes = vars(CID)["_bytes"].__set__
_set_str = vars(CID)["_str"].__set__


def _py_cid_from_link(data: bytes) -> CID:
    """CID constructor used by the DAG-CBOR decoder for tag-42 payloads."""
    if len(data) != 36 or not data.startswith(_BLESSED_PREFIXES):
        _check_binary(data)
    cid = _new(PyCID)
    _set_bytes(cid, data)
    _set_str(cid, None)
    return cid


def _load_extension() -> ModuleType | None:
    """``roost._cidext`` unless it is missing or ``ROOST_PURE_PYTHON`` is set."""
    if os.environ.get("ROOST_PURE_PYTHON", "") not in ("", "0"):
        return None
    try:
        return importlib.import_module("roost._cidext")
    except ImportError:  # not built (no compiler at install time): pure Python
        return None


#: The C extension module in use, or None when ``CID`` is the Python class.
_cidext = _load_extension()

if _cidext is not None:
    # PyCID keeps working under its own name (pickle finds it as roost.cid.PyCID);
    # roost.cid.CID, as pickled by the C type, names whichever type is in use.
    PyCID.__name__ = PyCID.__qualname__ = "PyCID"
    CID = _cidext.CID  # type: ignore[misc]  # same interface as the class above
    _cid_from_link = _cidext.cid_from_link
else:
    _cid_from_link = _py_cid_from_link


def sha256(data: bytes) -> bytes:
    """SHA-256 digest of ``data``, through the C extension's hasher when present.

    For the small blocks of repos (MST nodes, records, keys) the extension is
    about twice as fast as ``hashlib``; both give the same digest.
    """
    return _for_cbor_bytes(data).bytes[4:]


_for_cbor_bytes = CID.for_cbor_bytes
