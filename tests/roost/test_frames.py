"""roost.frames: event-stream frames, against the byte examples of spec/event-stream.md."""

from __future__ import annotations

import pytest

from roost import cbor
from roost.cid import CID
from roost.errors import CborDecodeError, CborEncodeError
from roost.frames import decode_frame, encode_error_frame, encode_frame, message_type

COMMIT_HEADER = bytes.fromhex("a2617467236" + "36f6d6d6974626f7001")
INFO_HEADER = bytes.fromhex("a26174652369" + "6e666f626f7001")
ERROR_HEADER = bytes.fromhex("a1626f7020")


def test_spec_bytes() -> None:
    assert encode_frame("#commit", {}).startswith(COMMIT_HEADER)
    info = encode_frame("#info", {"name": "OutdatedCursor"})
    assert info == INFO_HEADER + bytes.fromhex("a1646e616d656e4f75746461746564437572736f72")
    err = encode_error_frame("FutureCursor", "Cursor in the future.")
    assert err == ERROR_HEADER + (
        b"\xa2\x65error\x6cFutureCursor\x67message\x75Cursor in the future."
    )
    assert (
        encode_error_frame("ConsumerTooSlow") == ERROR_HEADER + b"\xa1\x65error\x6fConsumerTooSlow"
    )


def test_round_trip() -> None:
    cid = CID.parse("bafyreie5737gdxlw5i64vzichcalba3z2v5n6icifvx5xytvske7mr3hpm")
    body = {"seq": 5, "repo": "did:plc:x", "commit": cid, "blocks": b"\x00\x01", "ops": []}
    header, decoded = decode_frame(encode_frame("#commit", body))
    assert header == {"op": 1, "t": "#commit"}
    assert decoded == body
    assert decode_frame(encode_error_frame("X")) == ({"op": -1}, {"error": "X"})


def test_unknown_op_and_type_still_decode() -> None:
    # Skipping them is the consumer's choice; framing is fine.
    frame = cbor.encode({"op": 7}) + cbor.encode({})
    assert decode_frame(frame) == ({"op": 7}, {})
    frame = encode_frame("#somethingNew", {"a": 1})
    assert decode_frame(frame)[0]["t"] == "#somethingNew"


@pytest.mark.parametrize(
    "data",
    [
        b"",
        COMMIT_HEADER,  # no body
        COMMIT_HEADER + cbor.encode({}) + cbor.encode({}),  # a third item
        COMMIT_HEADER + b"\xa1",  # truncated body
        b"\xff\xff",
        cbor.encode([1]) + cbor.encode({}),  # header not a map
        COMMIT_HEADER + cbor.encode([1]),  # body not a map
        cbor.encode({"t": "#x"}) + cbor.encode({}),  # no op
        cbor.encode({"op": 1}) + cbor.encode({}),  # message without t
        cbor.encode({"op": True}) + cbor.encode({}),
        bytes.fromhex("a2626f70016174") + b"\x67#commit" + cbor.encode({}),  # keys unsorted
        COMMIT_HEADER + bytes.fromhex("a16161fb3ff0000000000000"),  # a float
    ],
)
def test_malformed_frames(data: bytes) -> None:
    with pytest.raises(CborDecodeError):
        decode_frame(data)


def test_encode_checks() -> None:
    with pytest.raises(ValueError):
        encode_frame("", {})
    with pytest.raises(TypeError):
        encode_frame("#x", [])  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        encode_frame(1, {})  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        encode_error_frame("")
    with pytest.raises(CborEncodeError):
        encode_frame("#x", {"f": 1.5})


def test_decode_accepts_buffers() -> None:
    frame = encode_frame("#x", {"a": 1})
    assert decode_frame(bytearray(frame)) == decode_frame(memoryview(frame))
    with pytest.raises(CborDecodeError):
        decode_frame("text")  # type: ignore[arg-type]


def test_message_type() -> None:
    nsid = "com.atproto.sync.subscribeRepos"
    assert message_type(nsid, "#commit") == nsid + "#commit"
    assert message_type(nsid, "com.example.other#thing") == "com.example.other#thing"
