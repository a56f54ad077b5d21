"""The MST's shortcuts against their definitions.

A commit deletes the blocks its edits took out of the tree; getting that set
wrong either loses live nodes (a broken repo) or leaks dead ones (exports
carry garbage), so the record kept during edits is checked against
:func:`roost.mst.diff` over many edit chains, and a store pruned by it must
hold exactly the live tree. ``covering_nodes`` (the blocks a ``#commit``
event carries so relays can invert it) walks spines instead of searching
for the neighbours: it must give the neighbours' search paths exactly.
"""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from roost.blockstore import MemoryBlockStore
from roost.cid import CID
from roost.mst import MST, Node, NodeStore
from tests.interop import read_cases

EXAMPLE_KEYS = [key for _, key in read_cases("mst/example_keys.txt")]
VALUES = [CID.for_cbor_bytes(bytes([0xA1, 0x61, 0x76, i])) for i in range(24)]


def _persisted(items: dict[str, CID]) -> tuple[MemoryBlockStore, MST]:
    blocks = MemoryBlockStore()
    tree = MST.build(NodeStore(blocks), sorted(items.items()))
    tree.persist()
    return blocks, tree


def _live(tree: MST) -> set[CID]:
    return {node.cid for node in tree.nodes()}


def _apply(tree: MST, ops: list[tuple[str, CID | None]]) -> MST:
    for key, value in ops:
        tree = tree.delete(key) if value is None else tree.set(key, value)
    return tree


@given(
    st.dictionaries(st.sampled_from(EXAMPLE_KEYS), st.sampled_from(VALUES), max_size=40),
    st.lists(
        st.tuples(st.sampled_from(EXAMPLE_KEYS), st.none() | st.sampled_from(VALUES)),
        max_size=12,
    ),
)
@settings(max_examples=400, deadline=None)
def test_removed_matches_diff(start: dict[str, CID], ops: list[tuple[str, CID | None]]) -> None:
    _, old = _persisted(start)
    new = _apply(old, ops)
    assert new.removed_since_settled() == old.diff(new).removed_nodes
    assert new.removed_since_settled() == _live(old) - _live(new)


def test_commit_chain_keeps_exactly_the_live_nodes() -> None:
    """Store each step's new nodes, delete its removed ones: the store is the tree."""
    rng = random.Random(7)
    keys = [f"app.bsky.feed.post/{rng.getrandbits(40):010x}" for _ in range(1500)]
    blocks, tree = _persisted({k: VALUES[0] for k in keys[:600]})
    present = set(keys[:600])
    for step in range(250):
        ops: list[tuple[str, CID | None]] = []
        for _ in range(rng.choice((1, 1, 2, 5, 20))):
            key = rng.choice(keys)
            if any(k == key for k, _ in ops):
                continue
            if key in present and rng.random() < 0.5:
                ops.append((key, None))
                present.discard(key)
            else:
                ops.append((key, rng.choice(VALUES)))
                present.add(key)
        new = _apply(tree, ops)
        removed = new.removed_since_settled()
        assert removed == tree.diff(new).removed_nodes, step
        new.persist()
        blocks.delete_many(removed)
        tree = new.settled()
        assert tree.dropped == ()
        assert set(blocks) == _live(tree), step
    assert {key for key, _ in tree.items()} == present


def test_emptying_and_refilling_the_tree() -> None:
    blocks, tree = _persisted({k: VALUES[1] for k in EXAMPLE_KEYS[:30]})
    for key in EXAMPLE_KEYS[:30]:
        new = tree.delete(key)
        blocks.delete_many(new.removed_since_settled())
        new.persist()
        tree = new.settled()
        assert set(blocks) == _live(tree)
    assert list(tree.items()) == []
    new = tree.set(EXAMPLE_KEYS[0], VALUES[2])
    assert new.removed_since_settled() == {tree.cid}  # the stored empty root


def test_unchanged_edit_drops_nothing() -> None:
    _, tree = _persisted({k: VALUES[3] for k in EXAMPLE_KEYS[:20]})
    assert tree.set(EXAMPLE_KEYS[0], VALUES[3]) is tree
    assert tree.delete("com.example.absent/key") is tree
    assert tree.removed_since_settled() == set()


def test_top_pruning_drops_stored_keyless_nodes() -> None:
    """Deleting the only key of a high root leaves keyless nodes above the rest: they go."""
    by_height: dict[int, list[str]] = {}
    for key in EXAMPLE_KEYS:
        by_height.setdefault(int(key[1]), []).append(key)
    top = max(by_height[3])
    low = sorted(k for k in by_height[0] if k < top)[:3]
    blocks, tree = _persisted({k: VALUES[4] for k in [*low, top]})
    assert tree.layer == 3
    # layers 2 and 1 are stored keyless nodes between the root and the keys
    assert sum(1 for node in tree.nodes() if not node.keys) == 2
    new = tree.delete(top)
    assert new.layer == 0
    removed = new.removed_since_settled()
    assert removed == tree.diff(new).removed_nodes == _live(tree) - _live(new)
    assert len(removed) == 3


def _covering_by_paths(tree: MST, key: str) -> list[Node]:
    """The definition: the search paths to the key and to its two neighbours."""
    seen: dict[int, Node] = {}
    for node in tree.path(key):
        seen[id(node)] = node
    for other in tree.neighbours(key):
        if other is not None:
            for node in tree.path(other):
                seen[id(node)] = node
    return list(seen.values())


@given(
    st.dictionaries(st.sampled_from(EXAMPLE_KEYS), st.sampled_from(VALUES), max_size=60),
    st.sampled_from(EXAMPLE_KEYS),
)
@settings(max_examples=400, deadline=None)
def test_covering_nodes_are_the_neighbours_paths(items: dict[str, CID], key: str) -> None:
    _, tree = _persisted(items)
    assert [n.cid for n in tree.covering_nodes(key)] == [
        n.cid for n in _covering_by_paths(tree, key)
    ]
    edited = tree.set(key, VALUES[5])  # in-memory nodes too
    assert [n.cid for n in edited.covering_nodes(key)] == [
        n.cid for n in _covering_by_paths(edited, key)
    ]
