"""The C extension's MST-node and CAR fast paths against the Python code.

``roost._cidext.mst_decode``, ``mst_encode`` and ``car_blocks`` take the
common well-formed input and hand everything else back (``None``) to the
Python decoder or reader, which gives the result or the exact error. So for
any input a fast path accepts, its answer must equal the Python one; on
mutated blocks it must never accept what the Python code refuses.
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from roost import cbor, mst
from roost.blockstore import MemoryBlockStore
from roost.car import CarReader, car_bytes
from roost.cid import CID, _cidext
from roost.errors import RoostError
from roost.limits import MAX_CAR_BLOCK_BYTES
from roost.mst import MST, NodeStore
from tests.interop import read_cases

pytestmark = pytest.mark.skipif(
    getattr(_cidext, "mst_decode", None) is None, reason="the C extension is not built"
)

EXAMPLE_KEYS = [key for _, key in read_cases("mst/example_keys.txt")]


def _tree(count: int, seed: int) -> MST:
    rng = random.Random(seed)
    tree = MST.empty(NodeStore(MemoryBlockStore()))
    for i in range(count):
        key = f"app.bsky.feed.{rng.choice(['post', 'like'])}/{rng.getrandbits(60):015x}"
        if i % 41 == 0:
            key += "\u00e9\u4e2d"  # multi-byte UTF-8 keys
        value = CID.for_cbor(cbor.encode({"i": i})) if i % 5 else CID.for_raw(bytes([i % 256]))
        tree = tree.set(key, value)
    for key in EXAMPLE_KEYS:
        tree = tree.set(key, CID.for_cbor(cbor.encode({"k": key})))
    return tree


TREE = _tree(1500, 7)
NODES = list(TREE.nodes())
BLOCKS = [node.block for node in NODES]


def _python(data: bytes, layer: int | None, verify: bool) -> Any:
    try:
        node = mst._decode_node(data, layer, verify)
    except RoostError as exc:
        return ("error", type(exc).__name__, exc.message)
    return (node.layer, node.keys, node.vals, node.subs)


def _decoded(data: bytes, layer: int | None, verify: bool) -> Any:
    try:
        node = mst.decode_node(data, layer, verify=verify)
    except RoostError as exc:
        return ("error", type(exc).__name__, exc.message)
    assert node._block == data
    return (node.layer, node.keys, node.vals, node.subs)


def _subs(node: mst.Node) -> tuple[CID | None, ...]:
    return tuple(s if s is None or type(s) is CID else s.cid for s in node.subs)


def test_the_tree_has_what_the_fast_paths_must_cover() -> None:
    assert len({node.layer for node in NODES}) >= 4
    assert any(not node.keys for node in NODES), "a keyless intermediate node"
    assert any(any(ord(c) > 127 for c in key) for node in NODES for key in node.keys)


def test_decode_matches_the_python_decoder() -> None:
    for node, block in zip(NODES, BLOCKS):
        fast = _cidext.mst_decode(block)
        assert fast is not None
        if node.keys:
            assert fast == (node.layer, node.keys, node.vals, _subs(node))
        else:  # keyless: the parent gives the layer
            assert fast == (-1, (), (), _subs(node))
        for layer in (None, node.layer, node.layer + 1):
            for verify in (True, False):
                assert _decoded(block, layer, verify) == _python(block, layer, verify)


def test_encode_gives_the_python_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    fast = [_cidext.mst_encode(node.keys, node.vals, _subs(node)) for node in NODES]
    monkeypatch.setattr(mst, "_fast_encode", None)
    slow = [mst.Node(node.layer, node.keys, node.vals, _subs(node)).block for node in NODES]
    assert fast == slow == BLOCKS
    assert _cidext.mst_encode(("a",), ("not a CID",), (None, None)) is None
    assert _cidext.mst_encode(("a",), (), (None,)) is None


def _mutate(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        i = rng.randrange(len(out))
        roll = rng.random()
        if roll < 0.6:
            out[i] = rng.randrange(256)
        elif roll < 0.75:
            del out[i]
        elif roll < 0.9:
            out.insert(i, rng.randrange(256))
        else:
            del out[i:]
        if not out:
            out.append(0)
    return bytes(out)


def test_mutated_nodes_are_never_accepted_differently() -> None:
    rng = random.Random(1)
    accepted = 0
    for _ in range(4000):
        block = _mutate(rng, rng.choice(BLOCKS))
        layer = rng.choice((None, 0, 1, 2))
        if _cidext.mst_decode(block) is not None:
            accepted += 1
        assert _decoded(block, layer, True) == _python(block, layer, True)
        assert _decoded(block, layer, False) == _python(block, layer, False)
    assert accepted  # some mutations (a value CID's digest) stay valid nodes


@pytest.mark.parametrize(
    "block",
    [
        # {"e": [], "l": null} with the map keys in the wrong order
        bytes.fromhex("a2616cf66165 80"),
        # a non-minimal array length
        bytes.fromhex("a261659800616cf6"),
        # trailing bytes
        bytes.fromhex("a2616580616cf600"),
    ],
    ids=["key-order", "non-minimal", "trailing"],
)
def test_non_canonical_nodes_go_to_python(block: bytes) -> None:
    assert _cidext.mst_decode(block) is None
    with pytest.raises(RoostError):
        mst.decode_node(block)


def _car(roots: list[CID], blocks: list[tuple[CID, bytes]]) -> bytes:
    return car_bytes(roots, blocks)


def _reader(data: bytes, max_block: int = MAX_CAR_BLOCK_BYTES) -> Any:
    try:
        reader = CarReader(data, max_block_size=max_block)
        return reader.roots, dict(reader)
    except RoostError as exc:
        return ("error", type(exc).__name__)


def test_car_blocks_match_the_reader() -> None:
    pairs = [(node.cid, node.block) for node in NODES[:40]]
    pairs.append(pairs[3])  # a repeated section
    data = _car([NODES[0].cid], pairs)
    root, found = _cidext.car_blocks(data, MAX_CAR_BLOCK_BYTES)
    assert ([root], found) == _reader(data)
    # too large a block, two roots, no sections: the reader decides
    assert _cidext.car_blocks(data, 10) is None
    assert _reader(data, 10)[0] == "error"
    assert _cidext.car_blocks(_car([NODES[0].cid, NODES[1].cid], pairs), MAX_CAR_BLOCK_BYTES) is None
    empty = _car([NODES[0].cid], [])
    assert _cidext.car_blocks(empty, MAX_CAR_BLOCK_BYTES) == (NODES[0].cid, {})
    rng = random.Random(3)
    small = _car([NODES[0].cid], pairs[:4])
    for _ in range(3000):
        mutated = _mutate(rng, small)
        fast = _cidext.car_blocks(mutated, MAX_CAR_BLOCK_BYTES)
        if fast is not None:
            assert ([fast[0]], fast[1]) == _reader(mutated)
