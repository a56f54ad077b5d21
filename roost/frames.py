"""Event-stream frames: the binary WebSocket messages of XRPC subscriptions.

A frame is two DAG-CBOR items back to back (``spec/event-stream.md`` section 2)::

    header                      body
    {"op": 1, "t": "#commit"}   {...message without $type...}
    {"op": -1}                  {"error": "FutureCursor", "message": "..."}

``encode_frame`` and ``encode_error_frame`` build them (canonical DAG-CBOR);
``decode_frame`` splits one into ``(header, body)`` and checks the framing
(exactly two items, both maps, ``op`` an int, ``t`` a string when ``op`` is
1). Whether an ``op`` or ``t`` is *known* is the consumer's business: unknown
ones are skipped, not fatal. Bad CBOR or bad framing raises
:class:`~roost.errors.CborDecodeError` (fatal: drop the connection).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

import cbrrr

from roost import cbor
from roost.errors import CborDecodeError
from roost.limits import MAX_BLOCK_BYTES

__all__ = [
    "MAX_FRAME_BYTES",
    "OP_ERROR",
    "OP_MESSAGE",
    "decode_frame",
    "encode_error_frame",
    "encode_frame",
    "message_type",
]

#: ``op`` of a regular message frame.
OP_MESSAGE: Final = 1
#: ``op`` of an error frame (the server closes the stream after it).
OP_ERROR: Final = -1
#: Hard cap on one WebSocket message of the repo firehose (sync spec).
MAX_FRAME_BYTES: Final = 5_000_000

_scan: Callable[[bytes, Any, bool], tuple[Any, int]] | None
try:
    from cbrrr import _cbrrr

    _scan = _cbrrr.decode_dag_cbor
except ImportError:  # pragma: no cover - private API moved
    _scan = None

# A header is a tiny map; anything larger is not a frame we want to parse.
_MAX_HEADER_BYTES: Final = 1024
assert _MAX_HEADER_BYTES < MAX_BLOCK_BYTES


def encode_frame(t: str, body: dict[str, Any]) -> bytes:
    """A message frame: header ``{op: 1, t}`` then ``body`` (which must be a map).

    ``t`` is the short fragment form, e.g. ``"#commit"``; the body carries
    no ``$type`` (the header names it). Raises ``TypeError`` for a non-string
    ``t`` or a non-dict body, ``ValueError`` for an empty ``t``,
    :class:`~roost.errors.CborEncodeError` for a body outside the data model.
    """
    if not isinstance(t, str):
        raise TypeError("frame type t must be a string")
    if not t:
        raise ValueError("frame type t must not be empty")
    if not isinstance(body, dict):
        raise TypeError("frame body must be a map")
    return cbor.encode({"t": t, "op": OP_MESSAGE}, check_floats=False) + cbor.encode(body)


def encode_error_frame(error: str, message: str | None = None) -> bytes:
    """An error frame: header ``{op: -1}`` then ``{error, message?}``."""
    if not isinstance(error, str):
        raise TypeError("error name must be a string")
    if not error:
        raise ValueError("error name must not be empty")
    body: dict[str, Any] = {"error": error}
    if message:
        body["message"] = message
    return _ERROR_HEADER + cbor.encode(body, check_floats=False)


_ERROR_HEADER: Final = cbor.encode({"op": OP_ERROR}, check_floats=False)


def decode_frame(
    data: bytes | bytearray | memoryview, *, check_floats: bool = True
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split one frame into ``(header, body)``; raise ``CborDecodeError`` if malformed.

    Both items must be strict DAG-CBOR maps with nothing after the body;
    ``op`` must be an int and, for ``op == 1``, ``t`` a string.
    ``check_floats=False`` skips the float scan of the body, for consumers
    that type-check every field they use (a float there fails that check).
    """
    if isinstance(data, (bytearray, memoryview)):
        data = bytes(data)
    if not isinstance(data, bytes):
        raise CborDecodeError(f"a frame must be bytes, not {type(data).__name__}")
    if not data:
        raise CborDecodeError("empty frame")
    if len(data) > MAX_FRAME_BYTES:
        raise CborDecodeError(f"frame is larger than {MAX_FRAME_BYTES} bytes")
    length = _header_length(data)
    header = cbor.decode(data[:length])
    if length == len(data):
        raise CborDecodeError("frame has a header but no body")
    # exactly one item: a third one is rejected
    body = cbor.decode(data[length:], check_floats=check_floats)
    if not isinstance(header, dict):
        raise CborDecodeError("frame header is not a map")
    if not isinstance(body, dict):
        raise CborDecodeError("frame body is not a map")
    op = header.get("op")
    if not isinstance(op, int) or isinstance(op, bool):
        raise CborDecodeError("frame header has no integer op")
    if op == OP_MESSAGE and not isinstance(header.get("t"), str):
        raise CborDecodeError("message frame header has no string t")
    return header, body


def _header_length(data: bytes) -> int:
    """Byte length of the first CBOR item of ``data``."""
    view = data[:_MAX_HEADER_BYTES]
    try:
        if _scan is not None:
            _, length = _scan(view, cbrrr.CID, False)
        else:  # pragma: no cover
            items = cbrrr.decode_multi_dag_cbor_in_violation_of_the_spec(view)
            first = next(iter(items))
            length = len(cbor.encode(first))
    except (
        ValueError,
        TypeError,
        OverflowError,
        RecursionError,
        MemoryError,
        cbrrr.CbrrrDecodeError,
    ):
        raise CborDecodeError("frame header is not a DAG-CBOR item") from None
    return int(length)


def message_type(nsid: str, t: str) -> str:
    """The full type of a message: ``#commit`` on ``nsid`` -> ``nsid#commit``.

    A ``t`` without a leading ``#`` is already a full type and is returned as is.
    """
    return nsid + t if t.startswith("#") else t
