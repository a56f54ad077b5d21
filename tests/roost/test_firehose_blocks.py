"""Finding a commit's record blocks in its CAR without reading every block."""

from __future__ import annotations

import pytest

from roost import cbor
from roost.car import car_bytes
from roost.cid import CID
from roost.errors import CarError
from roost.firehose import _blocks_of


def block(text: str) -> tuple[CID, bytes]:
    data = cbor.encode({"text": text})
    return CID.for_cbor_bytes(data), data


@pytest.mark.parametrize("size", [10, 100, 5_000, 20_000])
def test_records_of_any_size_are_found_among_blocks_that_name_them(size: int) -> None:
    record_cid, record = block("x" * size)
    other_cid, other = block("other")
    # a node that links to the record (as MST nodes do) comes first
    node = cbor.encode({"e": [{"v": record_cid}], "l": other_cid})
    node_cid = CID.for_cbor_bytes(node)
    car = car_bytes([node_cid], {node_cid: node, other_cid: other, record_cid: record})
    assert _blocks_of(car, [record_cid, other_cid]) == {record_cid: record, other_cid: other}
    assert _blocks_of(car, [block("absent")[0]]) == {}


def test_a_block_under_the_wrong_cid_is_still_returned_for_the_hash_check() -> None:
    cid, _ = block("claimed")
    _, forged = block("forged")
    car = car_bytes([cid], {cid: forged})
    assert _blocks_of(car, [cid]) == {cid: forged}  # the caller's hash check refuses it


def test_malformed_cars_raise() -> None:
    cid, data = block("a")
    car = car_bytes([cid], {cid: data})
    with pytest.raises(CarError):
        _blocks_of(b"not a CAR", [cid])
    with pytest.raises(CarError):
        _blocks_of(car[:-3], [block("b")[0]])


def test_unusual_headers_get_the_full_check() -> None:
    cid, data = block("a")
    other, _ = block("b")
    two_roots = car_bytes([cid, other], {cid: data})
    assert _blocks_of(two_roots, [cid]) == {cid: data}
    usual = car_bytes([cid], {cid: data})
    version_two = usual.replace(b"\x67version\x01", b"\x67version\x02", 1)
    with pytest.raises(CarError):
        _blocks_of(version_two, [cid])
