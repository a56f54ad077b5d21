"""Strict DAG-CBOR and the atproto JSON form, against the interop vectors."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from roost import cbor
from roost.cid import CID
from roost.errors import CborDecodeError, CborEncodeError, DataModelError, JsonDataError
from tests.interop import b64decode, load_json

FIXTURES = load_json("data-model/data-model-fixtures.json")
VALID = load_json("data-model/data-model-valid.json")
INVALID = load_json("data-model/data-model-invalid.json")


@pytest.mark.parametrize("fixture", FIXTURES, ids=lambda f: f["cid"][-8:])
def test_fixture_encodes_to_exact_bytes_and_cid(fixture: dict) -> None:
    value = cbor.from_json(fixture["json"])
    data = cbor.encode(value)
    assert data == b64decode(fixture["cbor_base64"])
    assert str(CID.for_cbor_bytes(data)) == fixture["cid"]
    assert str(CID.for_cbor(value)) == fixture["cid"]


@pytest.mark.parametrize("fixture", FIXTURES, ids=lambda f: f["cid"][-8:])
def test_fixture_decodes_back_to_json(fixture: dict) -> None:
    decoded = cbor.decode(b64decode(fixture["cbor_base64"]))
    assert cbor.to_json(decoded) == fixture["json"]
    assert cbor.encode(decoded) == b64decode(fixture["cbor_base64"])


@pytest.mark.parametrize("case", VALID, ids=lambda c: c["note"])
def test_valid_data_model_json(case: dict) -> None:
    value = cbor.record_from_json(case["json"])
    cbor.validate_data(value)
    assert cbor.decode(cbor.encode(value)) == value


@pytest.mark.parametrize("case", INVALID, ids=lambda c: c["note"])
def test_invalid_data_model_json(case: dict) -> None:
    with pytest.raises(JsonDataError):
        cbor.record_from_json(case["json"])


# Each of these is rejected by a strict atproto decoder.
NOT_STRICT = {
    "empty": "",
    "unsorted keys": "a2616202616101",
    "length-first order broken": "a262616101616202",
    "duplicate keys": "a2616101616102",
    "integer key": "a10101",
    "non-minimal uint": "1801",
    "non-minimal uint16": "190001",
    "non-minimal length": "7801" + "61",
    "float64": "fb3ff8000000000000",
    "float32": "fa3fc00000",
    "float16": "f93e00",
    "undefined": "f7",
    "simple value": "f0",
    "indefinite array": "9f01ff",
    "indefinite map": "bf616101ff",
    "indefinite string": "7f6161ff",
    "break": "ff",
    "tag 1": "c101",
    "tag 42 over text": "d82a6161",
    "tag 42 without 00 prefix": "d82a582501711220" + "00" * 32 + "00",
    "tag 42 CIDv0": "d82a582300" + "1220" + "00" * 32 + "",
    "trailing bytes": "0101",
    "truncated map": "a26161",
    "truncated string": "6568656c",
    "length beyond input": "5bffffffffffffffff",
    "invalid utf-8": "62c328",
    "nested float": "a1616181fb3ff8000000000000",
}


@pytest.mark.parametrize("hexdata", NOT_STRICT.values(), ids=NOT_STRICT.keys())
def test_decoder_rejects_non_strict_input(hexdata: str) -> None:
    with pytest.raises(CborDecodeError):
        cbor.decode(bytes.fromhex(hexdata))


def test_decode_rejects_non_bytes() -> None:
    with pytest.raises(CborDecodeError):
        cbor.decode("a0")  # type: ignore[arg-type]


def test_canonical_key_order() -> None:
    value = {"bool": True, "null": None, "array": [], "object": {}, "string": "", "integer": 1}
    data = cbor.encode(value)
    order = [k for k in cbor.decode(data)]
    assert order == ["bool", "null", "array", "object", "string", "integer"]


def test_commit_key_order() -> None:
    commit = {"did": "d", "version": 3, "data": None, "rev": "r", "prev": None, "sig": b""}
    assert list(cbor.decode(cbor.encode(commit))) == ["did", "rev", "sig", "data", "prev", "version"]


def test_bytes_are_never_links() -> None:
    cid = CID.for_raw(b"hello world")
    for raw in (cid.bytes, b"\x00" + cid.bytes, CID.for_cbor({}).bytes):
        value = {"b": raw, "l": cid}
        back = cbor.decode(cbor.encode(value))
        assert type(back["b"]) is bytes and back["b"] == raw
        assert type(back["l"]) is CID and back["l"] == cid


def test_link_encoding_is_41_bytes() -> None:
    cid = CID.for_cbor({})
    assert cbor.encode(cid) == bytes.fromhex("d82a582500") + cid.bytes


def test_floats_rejected_on_encode() -> None:
    for value in (1.5, {"a": [1, 2.0]}, [{"x": float("nan")}]):
        with pytest.raises(CborEncodeError):
            cbor.encode(value)


def test_float_marker_byte_inside_strings_is_fine() -> None:
    value = {"b": b"\xfb\xfb\xfb", "h": CID.for_raw(b"\xfb"), "i": -5}
    assert cbor.decode(cbor.encode(value)) == value


@pytest.mark.parametrize(
    "value",
    [{1: "a"}, {"a": object()}, (1, 2), {"a": {1.5}}, 2**64, -(2**64) - 1],
    ids=["int key", "object", "tuple", "set", "too big", "too small"],
)
def test_unencodable_values_raise_typed_error(value: object) -> None:
    with pytest.raises(CborEncodeError):
        cbor.encode(value)


def test_integer_limits() -> None:
    for n in (0, 23, 24, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**63 - 1, -1, -24, -25, -(2**63)):
        assert cbor.decode(cbor.encode(n)) == n


def test_blob_json_round_trip() -> None:
    blob = {
        "$type": "blob",
        "ref": {"$link": str(CID.for_raw(b"x"))},
        "mimeType": "image/png",
        "size": 1,
    }
    value = cbor.from_json({"b": blob})
    assert cbor.is_blob(value["b"]) and type(value["b"]["ref"]) is CID
    assert cbor.to_json(value) == {"b": blob}


@pytest.mark.parametrize(
    "value",
    [
        {"$type": "blob", "ref": {"$link": str(CID.for_raw(b"x"))}, "mimeType": "a/b", "size": "1"},
        {"$type": "blob", "ref": {"$link": str(CID.for_raw(b"x"))}, "size": 1},
        {"$type": "blob", "ref": {"$link": str(CID.for_raw(b"x"))}, "mimeType": "a/b", "size": -1},
        {"$link": str(CID.for_raw(b"x")), "extra": 1},
        {"$bytes": "AAAA", "extra": 1},
        {"$bytes": "A"},
        {"$bytes": "AA=A"},
        {"": 1},
        {"a": 2**63},
    ],
)
def test_bad_json_forms(value: dict) -> None:
    with pytest.raises(JsonDataError):
        cbor.from_json({"x": value})


def test_lenient_bytes_like_reference() -> None:
    assert cbor.from_json({"$bytes": "123"}) == b"\xd7m"
    assert cbor.from_json({"$bytes": "AQI="}) == b"\x01\x02"
    assert cbor.from_json({"$bytes": "AQI"}) == b"\x01\x02"


def test_depth_limit() -> None:
    deep: object = "leaf"
    for _ in range(40):
        deep = {"a": deep}
    with pytest.raises(JsonDataError):
        cbor.from_json(deep)
    with pytest.raises(JsonDataError):
        cbor.validate_data(cbor.decode(cbor.encode(deep)))


def test_deeply_nested_binary_does_not_crash() -> None:
    data = b"\x81" * 100_000 + b"\x00"
    value = cbor.decode(data)
    with pytest.raises(DataModelError):
        cbor.validate_data(value)
    with pytest.raises(DataModelError):
        cbor.to_json(value)


# -- properties -------------------------------------------------------------

cids = st.one_of(
    st.binary(max_size=64).map(CID.for_raw),
    st.binary(max_size=64).map(CID.for_cbor_bytes),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.text(max_size=40),
    st.binary(max_size=40),
    cids,
)
# "$"-keys are reserved: $link/$bytes/$type values have no other JSON form
keys = st.text(min_size=1, max_size=12).filter(lambda k: not k.startswith("$"))
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=6),
        st.dictionaries(keys, inner, max_size=6),
    ),
    max_leaves=30,
)


@given(values)
@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
def test_round_trip(value: object) -> None:
    data = cbor.encode(value)
    back = cbor.decode(data)
    assert back == value
    assert cbor.encode(back) == data
    assert cbor.from_json(cbor.to_json(value), max_depth=10_000) == value


@given(st.binary(max_size=300))
@settings(max_examples=1000)
def test_random_bytes_only_raise_typed_error(data: bytes) -> None:
    try:
        value = cbor.decode(data)
    except CborDecodeError:
        return
    assert cbor.encode(value) == data  # anything accepted is canonical


@given(values, st.data())
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
def test_mutated_encodings_only_raise_typed_error(value: object, data: st.DataObject) -> None:
    encoded = bytearray(cbor.encode(value))
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        pos = data.draw(st.integers(0, max(len(encoded) - 1, 0)))
        if op == "flip" and encoded:
            encoded[pos] ^= 1 << data.draw(st.integers(0, 7))
        elif op == "insert":
            encoded.insert(pos, data.draw(st.integers(0, 255)))
        elif op == "delete" and encoded:
            del encoded[pos]
        elif op == "truncate":
            del encoded[pos:]
    try:
        decoded = cbor.decode(bytes(encoded))
    except CborDecodeError:
        return
    assert cbor.encode(decoded) == bytes(encoded)


def test_hash_of_hello_world_block() -> None:
    data = cbor.encode({"hello": "world"})
    assert data.hex() == "a16568656c6c6f65776f726c64"
    assert CID.for_cbor_bytes(data).bytes[4:] == hashlib.sha256(data).digest()
    assert str(CID.for_cbor_bytes(data)) == "bafyreidykglsfhoixmivffc5uwhcgshx4j465xwqntbmu43nb2dzqwfvae"
