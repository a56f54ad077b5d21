"""Strict DAG-CBOR (DRISL) as atproto uses it, and the atproto JSON form.

Python values of the data model:

=============  =====================================
data model     Python
=============  =====================================
null           ``None``
boolean        ``bool``
integer        ``int`` (signed 64-bit)
string         ``str``
bytes          ``bytes`` (never turned into a link)
cid-link       :class:`roost.cid.CID`
array          ``list``
object         ``dict`` with ``str`` keys
=============  =====================================

``encode`` emits canonical bytes: length-first key order, shortest heads,
definite lengths, tag 42 only for CIDs. ``decode`` accepts exactly one such
item and nothing else: non-shortest heads, indefinite lengths, unsorted or
duplicate keys, non-string keys, floats, ``undefined``, other tags, a tag-42
payload without the ``0x00`` prefix and trailing bytes all raise
:class:`~roost.errors.CborDecodeError`.

The heavy lifting is done by the C codec ``cbrrr``; this module adds the
atproto rules it does not enforce (no floats) and maps its exceptions to
roost's typed errors.

JSON form (``to_json``/``from_json``): ``{"$link": "<cid>"}`` for links,
``{"$bytes": "<base64>"}`` for bytes, blobs as
``{"$type": "blob", "ref": {"$link": ...}, "mimeType": ..., "size": ...}``.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

import cbrrr

from roost.cid import CID, _cid_from_link
from roost.errors import CborDecodeError, CborEncodeError, CidError, JsonDataError
from roost.limits import MAX_CONTAINER_LEN, MAX_DATA_DEPTH, MAX_MAP_KEY_BYTES

__all__ = [
    "encode",
    "decode",
    "to_json",
    "from_json",
    "record_from_json",
    "validate_data",
    "is_blob",
]

try:
    from cbrrr import _cbrrr

    _encode_c = _cbrrr.encode_dag_cbor
    _decode_c = _cbrrr.decode_dag_cbor
except ImportError:  # pragma: no cover - private API moved
    _encode_c = None
    _decode_c = None

#: Head byte of a float64 item (the only float cbrrr writes or accepts). An int
#: needle makes ``in`` a plain memchr, ten times faster than a bytes needle.
_FLOAT64_HEAD = 0xFB

_DecodeErrors = (ValueError, TypeError, OverflowError, RecursionError, cbrrr.CbrrrDecodeError)


# -- binary -----------------------------------------------------------------


def encode(value: Any, *, check_floats: bool = True) -> bytes:
    """Encode a data-model value as canonical DAG-CBOR bytes.

    ``check_floats=False`` is for values roost builds itself from known
    types (MST nodes, commits), where no float can occur.
    """
    try:
        if _encode_c is not None:
            out: bytes = _encode_c(value, CID, False)
        else:  # pragma: no cover
            out = cbrrr.encode_dag_cbor(value, cid_type=CID)
    except CborEncodeError:
        raise
    except (TypeError, ValueError, OverflowError, RecursionError) as exc:
        raise CborEncodeError(_encode_message(value, exc)) from None
    # cbrrr writes floats as 0xfb + 8 bytes; atproto forbids them. The byte
    # can also occur inside strings, bytes or hashes, so only then walk.
    if check_floats and _FLOAT64_HEAD in out and _find_float(value):
        raise CborEncodeError("floats are not allowed in atproto data")
    return out


def _encode_message(value: Any, exc: BaseException) -> str:
    bad = _find_unencodable(value)
    if bad:
        return bad
    return f"cannot encode value: {exc}"


def _find_unencodable(value: Any) -> str | None:
    """Describe the first value cbrrr could not encode, for a clear message."""
    stack = [value]
    seen = 0
    while stack:
        v = stack.pop()
        seen += 1
        if seen > 1_000_000:
            return None
        t = type(v)
        if t is dict:
            for k, item in v.items():
                if type(k) is not str:
                    return f"map keys must be strings, got {type(k).__name__}"
                stack.append(item)
        elif t is list:
            stack.extend(v)
        elif t is float:
            return "floats are not allowed in atproto data"
        elif t is int:
            if not -(2**64) <= v < 2**64:
                return "integer out of the 64-bit range"
        elif t not in (str, bytes, bool, CID) and v is not None:
            return f"cannot encode a value of type {t.__name__}"
    return None


def _find_float(value: Any) -> bool:
    stack = [value]
    while stack:
        v = stack.pop()
        t = type(v)
        if t is float:
            return True
        if t is dict:
            stack.extend(v.values())
        elif t is list:
            stack.extend(v)
    return False


def decode(data: bytes, *, check_floats: bool = True) -> Any:
    """Decode exactly one strict DAG-CBOR item; raise ``CborDecodeError`` otherwise.

    ``check_floats=False`` skips the float scan, for callers that check the
    type of every value anyway (MST nodes, commits): they reject floats.
    """
    if type(data) is not bytes:
        if isinstance(data, (bytearray, memoryview)):
            data = bytes(data)
        else:
            raise CborDecodeError(f"can only decode bytes, not {type(data).__name__}")
    try:
        if _decode_c is not None:
            value, length = _decode_c(data, _cid_from_link, False)
        else:  # pragma: no cover
            value = cbrrr.decode_dag_cbor(data, cid_ctor=_cid_from_link)
            length = len(data)
    except CidError as exc:
        raise CborDecodeError(f"invalid CID link: {exc.message}") from None
    except _DecodeErrors as exc:
        raise CborDecodeError(_decode_message(data, exc)) from None
    except MemoryError:
        raise CborDecodeError("CBOR declares a length larger than the input") from None
    if length != len(data):
        raise CborDecodeError(f"trailing bytes after the CBOR item ({len(data) - length})")
    if check_floats and _FLOAT64_HEAD in data and _find_float(value):
        raise CborDecodeError("floats are not allowed in atproto data")
    return value


def _decode_message(data: bytes, exc: BaseException) -> str:
    if not data:
        return "empty input"
    text = str(exc) or type(exc).__name__
    return f"invalid DAG-CBOR: {text}"


# -- JSON form --------------------------------------------------------------


def to_json(value: Any, *, max_depth: int = 4 * MAX_DATA_DEPTH) -> Any:
    """Convert a data-model value to its atproto JSON form (for ``json.dumps``)."""
    return _to_json(value, max_depth)


def _to_json(value: Any, depth: int) -> Any:
    t = type(value)
    if t is str or t is int or t is bool or value is None:
        return value
    if depth <= 0:
        raise JsonDataError("value is nested too deeply")
    if t is dict:
        return {k: _to_json(v, depth - 1) for k, v in value.items()}
    if t is list:
        return [_to_json(v, depth - 1) for v in value]
    if t is CID:
        return {"$link": str(value)}
    if t is bytes:
        return {"$bytes": base64.b64encode(value).decode("ascii").rstrip("=")}
    raise JsonDataError(f"not a data-model value: {t.__name__}")


def from_json(value: Any, *, max_depth: int = MAX_DATA_DEPTH) -> Any:
    """Convert atproto JSON (as ``json.loads`` returns it) to a data-model value.

    ``$link`` and ``$bytes`` objects become CIDs and bytes; integral floats
    become ints (JSON numbers like ``123.0``); other floats, malformed special
    objects and malformed blobs raise ``JsonDataError``.
    """
    return _from_json(value, max_depth)


def record_from_json(value: Any, *, max_depth: int = MAX_DATA_DEPTH) -> dict[str, Any]:
    """Like ``from_json`` for a record: the top level must be a plain object."""
    if type(value) is not dict:
        raise JsonDataError("a record must be a JSON object")
    out = _from_json(value, max_depth)
    if type(out) is not dict or is_blob(out):
        raise JsonDataError("a record must be a plain object, not a link, bytes or blob")
    return out  # type: ignore[no-any-return]


def _from_json(value: Any, depth: int) -> Any:
    t = type(value)
    if t is str or t is bool or value is None:
        return value
    if t is int:
        _check_int(value)
        return value
    if t is float:
        if value.is_integer():
            as_int = int(value)
            _check_int(as_int)
            return as_int
        raise JsonDataError(f"floats are not allowed in atproto data: {value!r}")
    if depth <= 0:
        raise JsonDataError(f"data is nested more than {MAX_DATA_DEPTH} levels deep")
    if t is list:
        if len(value) > MAX_CONTAINER_LEN:
            raise JsonDataError(f"array has more than {MAX_CONTAINER_LEN} elements")
        return [_from_json(v, depth - 1) for v in value]
    if t is dict:
        if "$link" in value:
            return _link_from_json(value)
        if "$bytes" in value:
            return _bytes_from_json(value)
        if len(value) > MAX_CONTAINER_LEN:
            raise JsonDataError(f"object has more than {MAX_CONTAINER_LEN} keys")
        out = {}
        for k, v in value.items():
            _check_key(k)
            out[k] = _from_json(v, depth - 1)
        if "$type" in out:
            _check_type_field(out)
        return out
    raise JsonDataError(f"not a JSON value: {t.__name__}")


def _check_int(value: int) -> None:
    if not -(2**63) <= value < 2**63:
        raise JsonDataError("integer outside the signed 64-bit range")


def _check_key(key: Any) -> None:
    if type(key) is not str:
        raise JsonDataError("object keys must be strings")
    if not key:
        raise JsonDataError("object keys must not be empty")
    if len(key) * 4 > MAX_MAP_KEY_BYTES and len(key.encode("utf-8")) > MAX_MAP_KEY_BYTES:
        raise JsonDataError(f"object key longer than {MAX_MAP_KEY_BYTES} bytes")


def _link_from_json(value: dict[str, Any]) -> CID:
    if len(value) != 1:
        raise JsonDataError("a $link object must have no other keys")
    text = value["$link"]
    if type(text) is not str:
        raise JsonDataError("$link must be a string")
    try:
        return CID.from_str(text)
    except CidError as exc:
        raise JsonDataError(f"$link is not a valid CID: {exc.message}") from None


def _bytes_from_json(value: dict[str, Any]) -> bytes:
    if len(value) != 1:
        raise JsonDataError("a $bytes object must have no other keys")
    text = value["$bytes"]
    if type(text) is not str:
        raise JsonDataError("$bytes must be a string")
    return b64decode_lenient(text)


def b64decode_lenient(text: str) -> bytes:
    """Standard base64, padding optional, trailing bits not forced to zero."""
    if not text.isascii():
        raise JsonDataError("$bytes is not valid base64")
    stripped = text.rstrip("=")
    if len(text) - len(stripped) > 2 or len(stripped) % 4 == 1:
        raise JsonDataError("$bytes is not valid base64")
    try:
        return base64.b64decode(stripped + "=" * (-len(stripped) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise JsonDataError("$bytes is not valid base64") from None


def _check_type_field(obj: dict[str, Any]) -> None:
    type_ = obj["$type"]
    if type(type_) is not str or not type_:
        raise JsonDataError("$type must be a non-empty string")
    if type_ == "blob":
        _check_blob(obj)


def _check_blob(obj: dict[str, Any]) -> None:
    ref = obj.get("ref")
    if type(ref) is not CID:
        raise JsonDataError("blob ref must be a $link")
    mime = obj.get("mimeType")
    if type(mime) is not str or not mime:
        raise JsonDataError("blob mimeType must be a non-empty string")
    size = obj.get("size")
    if type(size) is not int or size < 0:
        raise JsonDataError("blob size must be a non-negative integer")


def is_blob(value: Any) -> bool:
    """True for a (current-form) blob reference object."""
    return type(value) is dict and value.get("$type") == "blob"


def validate_data(value: Any, *, max_depth: int = MAX_DATA_DEPTH) -> None:
    """Check a decoded data-model value against the data-model rules.

    Nesting depth, container sizes, key rules, ``$type`` and blob shape.
    Raises ``JsonDataError`` (a ``DataModelError``) naming the problem.
    """
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        v, d = stack.pop()
        t = type(v)
        if t is dict:
            if d >= max_depth:
                raise JsonDataError(f"data is nested more than {max_depth} levels deep")
            if len(v) > MAX_CONTAINER_LEN:
                raise JsonDataError(f"object has more than {MAX_CONTAINER_LEN} keys")
            for k, item in v.items():
                _check_key(k)
                stack.append((item, d + 1))
            if "$type" in v:
                _check_type_field(v)
        elif t is list:
            if d >= max_depth:
                raise JsonDataError(f"data is nested more than {max_depth} levels deep")
            if len(v) > MAX_CONTAINER_LEN:
                raise JsonDataError(f"array has more than {MAX_CONTAINER_LEN} elements")
            stack.extend((item, d + 1) for item in v)
        elif t is int:
            if not -(2**63) <= v < 2**63:
                raise JsonDataError("integer outside the signed 64-bit range")
        elif not (t is str or t is bool or t is bytes or t is CID or v is None):
            raise JsonDataError(f"not a data-model value: {t.__name__}")
