"""CAR v1 reading and writing: round trips, the header vector, every malformed case."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from roost.car import (
    CarReader,
    CarWriter,
    car_bytes,
    encode_car_header,
    read_car,
    read_car_single_root,
    write_car,
)
from roost.cbor import encode
from roost.cid import CID
from roost.errors import (
    BlockHashMismatch,
    CarBlockTooLarge,
    CarError,
    CarHeaderError,
    CarTruncated,
)

EMPTY_NODE = CID.parse("bafyreie5737gdxlw5i64vzichcalba3z2v5n6icifvx5xytvske7mr3hpm")
EMPTY_NODE_BYTES = bytes.fromhex("a2616580616cf6")
OK_ERRORS = (CarError, BlockHashMismatch)


def block(i: int, size: int = 0) -> tuple[CID, bytes]:
    data = encode({"i": i, "pad": b"\x00" * size})
    return CID.for_cbor_bytes(data), data


def varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def raw_header(value: object) -> bytes:
    data = encode(value)
    return varint(len(data)) + data


HEADER = encode_car_header([EMPTY_NODE])


def section(cid_bytes: bytes, data: bytes) -> bytes:
    return varint(len(cid_bytes) + len(data)) + cid_bytes + data


class Trickle(io.RawIOBase):
    """A file whose ``read`` returns at most ``step`` bytes per call."""

    def __init__(self, data: bytes, step: int = 7) -> None:
        self._inner = io.BytesIO(data)
        self._step = step

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        if n < 0:
            n = self._step
        return self._inner.read(min(n, self._step))


def read_all_ways(data: bytes, **kwargs: object) -> list[tuple[list[CID], list[tuple[CID, bytes]]]]:
    """Read ``data`` as bytes, bytearray, memoryview, a file and a trickling file."""
    out = []
    sources: list[Callable[[], object]] = [
        lambda: data,
        lambda: bytearray(data),
        lambda: memoryview(data),
        lambda: io.BytesIO(data),
        lambda: Trickle(data, 7),
        lambda: Trickle(data, 1),
    ]
    for make in sources:
        reader = CarReader(make(), **kwargs)  # type: ignore[arg-type]
        out.append((reader.roots, list(reader)))
    return out


# -- header vector ------------------------------------------------------------


def test_header_vector_from_the_spec() -> None:
    # repository.md §7: 3a | a2 65 "roots" 81 d8 2a 58 25 00 01 71 12 20 <32> 67 "version" 01
    expected = (
        bytes.fromhex("3a a2 65 726f6f7473 81 d8 2a 58 25 00")
        + EMPTY_NODE.bytes
        + bytes.fromhex("67 76657273696f6e 01")
    )
    assert HEADER == expected
    assert HEADER[0] == 58 and len(HEADER) == 1 + 58
    reader = CarReader(HEADER)
    assert reader.roots == [EMPTY_NODE]
    assert list(reader) == []


# -- round trips --------------------------------------------------------------


def test_round_trip_every_source() -> None:
    blocks = [block(i, size=i * 7) for i in range(60)]
    blocks.append(block(1000, size=20_000))  # three-byte section varint
    blocks.append((EMPTY_NODE, EMPTY_NODE_BYTES))
    data = car_bytes([blocks[0][0]], blocks)
    for roots, got in read_all_ways(data):
        assert roots == [blocks[0][0]]
        assert got == blocks
        assert all(type(c) is CID and type(b) is bytes for c, b in got)
    # CIDs built by the fast path behave like any other CID
    cid = CarReader(data).__iter__().__next__()[0]
    assert cid == blocks[0][0] and hash(cid) == hash(blocks[0][0])
    assert str(cid) == str(blocks[0][0]) and cid.is_dag_cbor


def test_read_car_and_single_root() -> None:
    blocks = [block(i) for i in range(5)]
    data = car_bytes([blocks[0][0]], blocks)
    roots, got = read_car(data)
    assert roots == [blocks[0][0]] and got == dict(blocks)
    root, got = read_car_single_root(io.BytesIO(data))
    assert root == blocks[0][0] and got == dict(blocks)


def test_empty_car_without_blocks() -> None:
    data = car_bytes([EMPTY_NODE], [])
    assert data == HEADER
    assert read_car(data) == ([EMPTY_NODE], {})
    assert read_car(io.BytesIO(data)) == ([EMPTY_NODE], {})


def test_no_roots_only_when_allowed() -> None:
    data = car_bytes([], [block(1)])
    with pytest.raises(CarHeaderError):
        CarReader(data)
    roots, got = read_car(data, allow_no_roots=True)
    assert roots == [] and got == dict([block(1)])
    with pytest.raises(CarHeaderError):
        read_car_single_root(data)


def test_multiple_roots() -> None:
    a, b = block(1), block(2)
    data = car_bytes([a[0], b[0]], [a, b])
    for roots, got in read_all_ways(data):
        assert roots == [a[0], b[0]] and got == [a, b]
    with pytest.raises(CarHeaderError, match="2 roots"):
        read_car_single_root(data)


def test_duplicate_blocks_are_yielded() -> None:
    a, b = block(1), block(2)
    data = car_bytes([a[0]], [a, b, a, a])
    for _roots, got in read_all_ways(data):
        assert got == [a, b, a, a]
    assert read_car(data)[1] == {a[0]: a[1], b[0]: b[1]}


def test_large_block_through_a_file() -> None:
    big = block(7, size=1_500_000)
    small = [block(i) for i in range(3)]
    data = car_bytes([big[0]], [small[0], big, *small[1:]])
    assert list(CarReader(io.BytesIO(data))) == [small[0], big, *small[1:]]
    assert list(CarReader(Trickle(data, 65_536))) == [small[0], big, *small[1:]]


def test_many_blocks_through_a_file_in_chunks() -> None:
    blocks = [block(i, size=i % 400) for i in range(6_000)]
    data = car_bytes([blocks[0][0]], blocks)
    assert len(data) > 1 << 20  # more than one read chunk
    assert list(CarReader(io.BytesIO(data))) == blocks
    assert list(CarReader(Trickle(data, 4093))) == blocks


def test_other_cid_forms() -> None:
    data = b"some block"
    digest = hashlib.sha256(data).digest()
    dag_pb = CID.from_bytes(b"\x01\x70\x12\x20" + digest)  # v1, dag-pb, sha2-256
    dag_json = CID.from_bytes(b"\x01\xa9\x02\x12\x20" + digest)  # two-byte codec varint
    car = car_bytes([dag_pb], [(dag_pb, data), (dag_json, data)])
    for roots, got in read_all_ways(car):
        assert roots == [dag_pb] and got == [(dag_pb, data), (dag_json, data)]
    # a wrong digest is caught on the slow path too
    bad = CID.from_bytes(b"\x01\x70\x12\x20" + bytes(32))
    with pytest.raises(BlockHashMismatch):
        read_car(car_bytes([bad], [(bad, data)]))


def test_unsupported_hash_function() -> None:
    ident = CID.from_bytes(b"\x01\x55\x00\x05hello")  # identity multihash
    blake = CID.from_bytes(b"\x01\x71\xa0\xe4\x02\x20" + bytes(32))  # blake2b-256
    for cid in (ident, blake):
        car = car_bytes([cid], [(cid, b"hello")])
        with pytest.raises(CarError, match="unsupported hash") as info:
            read_car(car)
        assert type(info.value) is CarError
        assert read_car(car, verify_hashes=False)[1] == {cid: b"hello"}


def test_iterating_again() -> None:
    blocks = [block(i) for i in range(3)]
    data = car_bytes([blocks[0][0]], blocks)
    reader = CarReader(data)
    assert list(reader) == list(reader) == blocks
    file_reader = CarReader(io.BytesIO(data))
    assert list(file_reader) == blocks
    with pytest.raises(RuntimeError):
        iter(file_reader)


def test_source_type() -> None:
    with pytest.raises(TypeError):
        CarReader("not bytes")  # type: ignore[arg-type]


# -- writing ------------------------------------------------------------------


def test_write_car_chunks() -> None:
    blocks = [block(i, size=500) for i in range(400)]
    chunks = list(write_car([blocks[0][0]], blocks))
    assert chunks[0] == encode_car_header([blocks[0][0]])
    assert len(chunks) > 3  # batched, not one giant piece
    assert all(len(c) < 70_000 for c in chunks)
    assert b"".join(chunks) == car_bytes([blocks[0][0]], blocks)
    assert b"".join(chunks) == car_bytes([blocks[0][0]], dict(blocks))  # a mapping works


def test_car_writer_matches_car_bytes() -> None:
    blocks = [block(i, size=i * 40) for i in range(300)]
    out = io.BytesIO()
    with CarWriter(out, [blocks[0][0]]) as writer:
        for cid, data in blocks[:100]:
            writer.write_block(cid, data)
        writer.write_blocks(blocks[100:])
    assert out.getvalue() == car_bytes([blocks[0][0]], blocks)
    assert writer.blocks_written == 300
    assert writer.bytes_written == len(out.getvalue())


def test_writer_rejects_non_cid_roots() -> None:
    with pytest.raises(TypeError):
        encode_car_header([str(EMPTY_NODE)])  # type: ignore[list-item]


# -- malformed input ----------------------------------------------------------


def raises_exactly(exc_type: type[Exception], data: bytes, **kwargs: object) -> Exception:
    """Reading ``data`` (as bytes and as a trickling file) raises exactly ``exc_type``."""
    caught = []
    for source in (data, Trickle(data, 3)):
        with pytest.raises(exc_type) as info:
            read_car(source, **kwargs)  # type: ignore[arg-type]
        assert type(info.value) is exc_type, info.value
        caught.append(info.value)
    return caught[0]


GOOD = car_bytes([block(1)[0]], [block(1), block(2)])


def test_truncated_input() -> None:
    raises_exactly(CarTruncated, b"")
    raises_exactly(CarTruncated, b"\x80")  # header varint cut off
    raises_exactly(CarTruncated, b"\xba")
    raises_exactly(CarTruncated, HEADER[:30])  # header cut off
    raises_exactly(CarTruncated, HEADER + b"\x80")  # section varint cut off
    raises_exactly(CarTruncated, HEADER + b"\xff\xff")
    raises_exactly(CarTruncated, GOOD[:-1])  # block cut off
    raises_exactly(CarTruncated, HEADER + varint(40) + EMPTY_NODE.bytes[:20])  # CID cut off
    first = len(HEADER) + len(section(block(1)[0].bytes, block(1)[1]))
    for cut in range(len(HEADER) + 1, len(GOOD)):
        if cut != first:  # a cut between sections leaves a valid CAR
            with pytest.raises(CarTruncated):
                read_car(GOOD[:cut])
    assert read_car(GOOD[:first])[1] == dict([block(1)])


def test_zero_length_header() -> None:
    raises_exactly(CarHeaderError, b"\x00")
    raises_exactly(CarHeaderError, b"\x00" + GOOD)


@pytest.mark.parametrize(
    "header",
    [
        [EMPTY_NODE],  # not a map
        "roots",
        {"version": 1},  # no roots
        {"roots": [EMPTY_NODE]},  # no version
        {"roots": [EMPTY_NODE], "version": 2},
        {"roots": [EMPTY_NODE], "version": 0},
        {"roots": [EMPTY_NODE], "version": True},
        {"roots": [EMPTY_NODE], "version": "1"},
        {"roots": [EMPTY_NODE], "version": 1, "extra": 1},
        {"roots": [EMPTY_NODE], "version": 1, "a": None},
        {"roots": [str(EMPTY_NODE)], "version": 1},  # a string, not a link
        {"roots": [EMPTY_NODE.bytes], "version": 1},  # bytes, not a link
        {"roots": EMPTY_NODE, "version": 1},  # not an array
        {"roots": None, "version": 1},
        {"roots": [], "version": 1},  # no roots (allow_no_roots not given)
        {"roots": [EMPTY_NODE, 5], "version": 1},
    ],
)
def test_bad_header_value(header: object) -> None:
    raises_exactly(CarHeaderError, raw_header(header) + GOOD[len(HEADER) :])


def test_header_not_dag_cbor() -> None:
    raises_exactly(CarHeaderError, b"\x01\xff")
    raises_exactly(CarHeaderError, b"\x02\xa1\x61")  # cut inside the CBOR item
    # non-canonical key order
    body = b"\xa2\x67version\x01\x65roots\x81\xd8\x2a\x58\x25\x00" + EMPTY_NODE.bytes
    raises_exactly(CarHeaderError, varint(len(body)) + body)
    # trailing bytes inside the declared header length
    body = encode({"roots": [EMPTY_NODE], "version": 1}) + b"\x00"
    raises_exactly(CarHeaderError, varint(len(body)) + body)
    # a CIDv0 root link
    body = encode({"roots": [EMPTY_NODE], "version": 1}).replace(
        b"\x58\x25\x00\x01\x71\x12\x20", b"\x58\x25\x00\x12\x20\x12\x20"
    )
    raises_exactly(CarHeaderError, varint(len(body)) + body)


def test_carv2_pragma_is_rejected() -> None:
    pragma = bytes.fromhex("0aa16776657273696f6e02")
    err = raises_exactly(CarHeaderError, pragma + bytes(40))
    assert "version 2" in str(err)


def test_section_shorter_than_its_cid() -> None:
    raises_exactly(CarError, HEADER + section(EMPTY_NODE.bytes[:10], b""))
    raises_exactly(CarError, HEADER + section(EMPTY_NODE.bytes[:35], b""))
    raises_exactly(CarError, HEADER + b"\x01\x01")
    raises_exactly(CarError, HEADER + b"\x03\x01\x71\x12")


def test_zero_length_section() -> None:
    raises_exactly(CarError, HEADER + b"\x00")
    raises_exactly(CarError, GOOD + b"\x00")


def test_cid_v0_in_a_section() -> None:
    digest = hashlib.sha256(EMPTY_NODE_BYTES).digest()
    err = raises_exactly(CarError, HEADER + section(b"\x12\x20" + digest, EMPTY_NODE_BYTES))
    assert "CIDv0" in str(err)


def test_bad_cid_in_a_section() -> None:
    digest = hashlib.sha256(EMPTY_NODE_BYTES).digest()
    raises_exactly(CarError, HEADER + section(b"\x02\x71\x12\x20" + digest, EMPTY_NODE_BYTES))
    raises_exactly(CarError, HEADER + section(b"\x00\x71\x12\x20" + digest, EMPTY_NODE_BYTES))
    # non-minimal varint inside the CID
    raises_exactly(CarError, HEADER + section(b"\x01\xf1\x00\x12\x20" + digest, b"x"))
    # digest length larger than any CID may be
    raises_exactly(CarError, HEADER + section(b"\x01\x71\x12\xc8\x01" + bytes(200), b""))


def test_wrong_block_hash() -> None:
    cid, data = block(1)
    bad = HEADER + section(cid.bytes, data[:-1] + b"\x00")
    raises_exactly(BlockHashMismatch, bad)
    assert read_car(bad, verify_hashes=False)[1] == {cid: data[:-1] + b"\x00"}
    # the hash is checked even when the CID is a root
    raises_exactly(BlockHashMismatch, HEADER + section(EMPTY_NODE.bytes, b"\xa0"))


def test_oversized_block() -> None:
    cid, data = block(1, size=100)
    car = HEADER + section(cid.bytes, data)
    raises_exactly(CarBlockTooLarge, car, max_block_size=50)
    assert read_car(car, max_block_size=len(data))[1] == {cid: data}
    raises_exactly(CarBlockTooLarge, car, max_block_size=len(data) - 1)
    # a declared size over the limit fails before any block bytes are read
    raises_exactly(CarBlockTooLarge, HEADER + varint(3_000_000) + EMPTY_NODE.bytes)
    raises_exactly(CarBlockTooLarge, HEADER + varint(2**62))
    # slow path (non-blessed CID)
    pb = CID.from_bytes(b"\x01\x70\x12\x20" + hashlib.sha256(data).digest())
    raises_exactly(CarBlockTooLarge, HEADER + section(pb.bytes, data), max_block_size=50)


def test_oversized_header() -> None:
    raises_exactly(CarBlockTooLarge, GOOD, max_header_size=57)
    assert read_car(GOOD, max_header_size=58)[0] == [block(1)[0]]
    raises_exactly(CarBlockTooLarge, varint(10_000_000) + b"\xa2")
    many = encode_car_header([block(i)[0] for i in range(2_000)])
    raises_exactly(CarBlockTooLarge, many)


def test_non_minimal_varints() -> None:
    cid, data = block(1)
    n = len(cid.bytes) + len(data)
    assert n < 0x80
    raises_exactly(CarError, HEADER + bytes((n | 0x80, 0x00)) + cid.bytes + data)
    raises_exactly(CarError, HEADER + bytes((n | 0x80, 0x80, 0x00)) + cid.bytes + data)
    raises_exactly(CarError, bytes((0xBA, 0x00)) + HEADER[1:])  # header length
    raises_exactly(CarError, b"\x80\x00")


def test_varint_too_long() -> None:
    raises_exactly(CarError, HEADER + b"\xff" * 9 + b"\x01")
    raises_exactly(CarError, HEADER + b"\x80" * 9 + b"\x01")
    raises_exactly(CarError, b"\xff" * 9 + b"\x01")
    raises_exactly(CarError, b"\xff" * 20)
    # 2**63 needs ten bytes: rejected; 2**63 - 1 fits in nine and is merely too large
    raises_exactly(CarError, HEADER + varint(2**63))
    raises_exactly(CarBlockTooLarge, HEADER + varint(2**63 - 1))


# -- fuzzing ------------------------------------------------------------------


def outcome(source: object, verify: bool = True) -> object:
    """The blocks read, or the type of the error (which must be a CAR error)."""
    try:
        roots, blocks = read_car(
            source,  # type: ignore[arg-type]
            allow_no_roots=True,
            verify_hashes=verify,
        )
    except OK_ERRORS as exc:
        return type(exc)
    return roots, blocks


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_only_raise_car_errors(data: bytes) -> None:
    expected = outcome(data)
    assert outcome(Trickle(data, 5)) == expected
    assert outcome(HEADER + data) == outcome(Trickle(HEADER + data, 3))


_MUTATIONS = st.lists(
    st.one_of(
        st.tuples(st.just("flip"), st.integers(0, 10_000), st.integers(1, 255)),
        st.tuples(st.just("insert"), st.integers(0, 10_000), st.binary(min_size=1, max_size=8)),
        st.tuples(st.just("delete"), st.integers(0, 10_000), st.integers(1, 40)),
        st.tuples(st.just("truncate"), st.integers(0, 10_000)),
    ),
    min_size=1,
    max_size=4,
)


def mutate(data: bytes, mutations: list[tuple[Any, ...]]) -> bytes:
    buf = bytearray(data)
    for m in mutations:
        kind, at = m[0], m[1] % (len(buf) + 1)
        if kind == "flip" and at < len(buf):
            buf[at] ^= m[2]
        elif kind == "insert":
            buf[at:at] = m[2]
        elif kind == "delete":
            del buf[at : at + m[2]]
        elif kind == "truncate":
            del buf[at:]
    return bytes(buf)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 300)), min_size=0, max_size=6),
    st.integers(1, 3),
    _MUTATIONS,
    st.booleans(),
)
def test_mutated_cars_only_raise_car_errors(
    specs: list[tuple[int, int]], n_roots: int, mutations: list[tuple[Any, ...]], verify: bool
) -> None:
    blocks = [block(i, size) for i, size in specs]
    roots = [block(i)[0] for i in range(n_roots)]
    data = mutate(car_bytes(roots, blocks), mutations)
    expected = outcome(data, verify)
    assert outcome(Trickle(data, 11), verify) == expected
    if verify and not isinstance(expected, type):  # every block hashes to its CID
        for cid, got in expected[1].items():  # type: ignore[index]
            assert cid.matches(got)
