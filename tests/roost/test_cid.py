"""CID parsing, formatting and hashing."""

from __future__ import annotations

import copy
import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from roost.cid import CID, DAG_CBOR, RAW, SHA2_256
from roost.errors import CidError

EMPTY_NODE = "bafyreie5737gdxlw5i64vzichcalba3z2v5n6icifvx5xytvske7mr3hpm"


def test_raw_cid_of_hello_world() -> None:
    cid = CID.for_raw(b"hello world")
    assert str(cid) == "bafkreifzjut3te2nhyekklss27nh3k72ysco7y32koao5eei66wof36n5e"
    assert cid.codec == RAW and cid.hash_code == SHA2_256 and cid.is_raw and cid.is_blessed


def test_empty_mst_node_cid() -> None:
    cid = CID.for_cbor({"e": [], "l": None})
    assert str(cid) == EMPTY_NODE
    assert cid.codec == DAG_CBOR and cid.is_dag_cbor and not cid.is_raw
    assert cid.matches(bytes.fromhex("a2616580616cf6"))
    assert not cid.matches(b"other")


def test_string_round_trip_and_equality() -> None:
    cid = CID.parse(EMPTY_NODE)
    assert str(cid) == EMPTY_NODE and len(cid.bytes) == 36
    assert CID.parse(cid.bytes) == cid
    assert CID.parse(cid) is cid
    assert hash(CID.from_bytes(cid.bytes)) == hash(cid)
    assert {cid: 1}[CID.from_str(EMPTY_NODE)] == 1
    assert cid != EMPTY_NODE and cid != cid.bytes
    assert repr(cid) == f"CID({EMPTY_NODE!r})"
    assert cid.digest == cid.bytes[4:]


def test_ordering_is_bytewise() -> None:
    a, b = CID.for_raw(b"a"), CID.for_raw(b"b")
    assert sorted([a, b]) == sorted([b, a])
    assert (a < b) == (a.bytes < b.bytes)


def test_immutable_and_copyable() -> None:
    cid = CID.parse(EMPTY_NODE)
    with pytest.raises(AttributeError):
        cid._bytes = b""  # type: ignore[misc]
    assert copy.deepcopy(cid) is cid
    assert pickle.loads(pickle.dumps(cid)) == cid


def test_non_blessed_cidv1_is_kept() -> None:
    # CIDv1, dag-pb codec (0x70), sha2-512 (0x13), 64-byte digest
    raw = bytes([1, 0x70, 0x13, 0x40]) + bytes(range(64))
    cid = CID.from_bytes(raw)
    assert not cid.is_blessed and cid.codec == 0x70 and cid.hash_code == 0x13
    assert CID.from_str(str(cid)).bytes == raw
    # a codec needing a two-byte varint
    raw2 = bytes([1, 0x80, 0x01, 0x12, 0x20]) + bytes(32)
    assert CID.from_bytes(raw2).codec == 0x80


@pytest.mark.parametrize(
    "text",
    [
        "",
        "b",
        "bafy",
        EMPTY_NODE.upper(),
        "B" + EMPTY_NODE[1:],
        EMPTY_NODE + "a",
        EMPTY_NODE[:-1],
        EMPTY_NODE + "=",
        "z" + EMPTY_NODE[1:],
        "QmQg1v4o9xdT3Q14wh4S7dxZkDjyZ9ssFzFzyep1YrVJBY",
        " " + EMPTY_NODE,
        EMPTY_NODE[:-1] + "1",
        "bé",
    ],
)
def test_bad_strings(text: str) -> None:
    with pytest.raises(CidError):
        CID.from_str(text)


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\x12\x20" + bytes(32),  # CIDv0
        b"\x02\x71\x12\x20" + bytes(32),  # version 2
        b"\x01\x71\x12\x20" + bytes(31),  # short digest
        b"\x01\x71\x12\x20" + bytes(33),  # long digest
        b"\x01\x71\x12",  # no length
        b"\x01\xf1",  # truncated varint
        b"\x01\x80\x00\x12\x20" + bytes(32),  # non-minimal varint
        b"\x01\x71\x12\x7f" + bytes(200),  # over the size limit
    ],
)
def test_bad_binary(raw: bytes) -> None:
    with pytest.raises(CidError):
        CID.from_bytes(raw)


def test_wrong_types() -> None:
    with pytest.raises(CidError):
        CID.parse(5)  # type: ignore[arg-type]
    with pytest.raises(CidError):
        CID.from_str(b"bafy")  # type: ignore[arg-type]
    with pytest.raises(CidError):
        CID("bafy")  # type: ignore[arg-type]


@given(st.binary(max_size=80))
@settings(max_examples=1000)
def test_random_binary_only_typed_errors(raw: bytes) -> None:
    try:
        cid = CID.from_bytes(raw)
    except CidError:
        return
    assert CID.from_str(str(cid)) == cid


@given(st.text(max_size=80))
@settings(max_examples=1000)
def test_random_text_only_typed_errors(text: str) -> None:
    try:
        cid = CID.from_str(text)
    except CidError:
        return
    assert str(cid) == text


@given(st.binary(min_size=0, max_size=100))
@settings(max_examples=300)
def test_format_parse_round_trip(data: bytes) -> None:
    for cid in (CID.for_raw(data), CID.for_cbor_bytes(data)):
        text = str(CID.from_bytes(cid.bytes))
        assert text.startswith("bafkrei" if cid.is_raw else "bafyrei") and len(text) == 59
        assert CID.from_str(text) == cid


def test_pure_python_base32_fallback_agrees(monkeypatch: pytest.MonkeyPatch) -> None:
    import roost.cid as cid_module

    samples = [CID.for_raw(bytes([i])) for i in range(50)] + [CID.parse(EMPTY_NODE)]
    expected = [str(CID.from_bytes(c.bytes)) for c in samples]
    monkeypatch.setattr(cid_module, "_c_decode", None)
    monkeypatch.setattr(cid_module, "_c_encode", None)
    assert [str(CID.from_bytes(c.bytes)) for c in samples] == expected
    assert [CID.from_str(t) for t in expected] == samples
    for bad in ("", "b", EMPTY_NODE.upper(), EMPTY_NODE[:-1] + "b", EMPTY_NODE + "=", "bé"):
        with pytest.raises(CidError):
            CID.from_str(bad)
