"""The MST against the interop vectors and the spec's worked trees, plus properties."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from roost import cbor
from roost.blockstore import MemoryBlockStore
from roost.cid import CID
from roost.errors import InvalidMst, MissingBlock
from roost.mst import EMPTY_TREE_CID, MST, NodeStore, common_prefix_len, decode_node, key_height
from tests.interop import load_json, read_cases

LEAF = CID.parse("bafyreie5cvv4h45feadgeuwhbcutmh6t2ceseocckahdoe6uat64zmz454")
EXAMPLE_KEYS = [key for _, key in read_cases("mst/example_keys.txt")]


def new_store() -> NodeStore:
    return NodeStore(MemoryBlockStore())


def tree_of(keys: list[str], value: CID = LEAF) -> MST:
    tree = MST.empty(new_store())
    for key in keys:
        tree = tree.set(key, value)
    return tree


@pytest.mark.parametrize("case", load_json("mst/key_heights.json"), ids=lambda c: repr(c["key"]))
def test_key_heights(case: dict) -> None:
    assert key_height(case["key"]) == case["height"]


@pytest.mark.parametrize("case", load_json("mst/common_prefix.json"), ids=lambda c: f"{c['left']!r}-{c['right']!r}")
def test_common_prefix(case: dict) -> None:
    assert common_prefix_len(case["left"].encode(), case["right"].encode()) == case["len"]


def test_example_keys_heights_match_their_names() -> None:
    for key in EXAMPLE_KEYS:
        assert key_height(key) == int(key[1]), key


def test_spec_key_heights() -> None:
    assert key_height("app.bsky.feed.post/454397e440ec") == 4
    assert key_height("app.bsky.feed.post/9adeb165882c") == 8


def test_empty_tree() -> None:
    tree = MST.empty(new_store())
    assert str(tree.cid) == "bafyreie5737gdxlw5i64vzichcalba3z2v5n6icifvx5xytvske7mr3hpm"
    assert tree.root.block == bytes.fromhex("a2616580616cf6")
    assert tree.cid == EMPTY_TREE_CID
    assert list(tree) == [] and tree.get("a/b") is None


def rk(*suffixes: str) -> list[str]:
    return [f"com.example.record/3jqfcqzm{s}" for s in suffixes]


SPEC_TREES = [
    (rk("3fo2j"), "bafyreibj4lsc3aqnrvphp5xmrnfoorvru4wynt6lwidqbm2623a6tatzdu"),
    (rk("3fx2j"), "bafyreih7wfei65pxzhauoibu3ls7jgmkju4bspy4t2ha2qdjnzqvoy33ai"),
    (rk("3fp2j", "3fr2j", "3fs2j", "3ft2j", "4fc2j"), "bafyreicmahysq4n6wfuxo522m6dpiy7z7qzym3dzs756t5n7nfdgccwq7m"),
    (rk("3ft2j", "3fz2j"), "bafyreidfcktqnfmykz2ps3dbul35pepleq7kvv526g47xahuz3rqtptmky"),
    (rk("3ft2j", "3fz2j", "3fx2j"), "bafyreiavxaxdz7o7rbvr3zg2liox2yww46t7g6hkehx4i4h3lwudly7dhy"),
    (rk("3fn2j", "3fo2j", "3fp2j", "3fs2j", "3ft2j", "3fu2j"), "bafyreifnqrwbk6ffmyaz5qtujqrzf5qmxf7cbxvgzktl4e3gabuxbtatv4"),
    (rk("3fn2j", "3fo2j", "3fp2j", "3ft2j", "3fu2j"), "bafyreie4kjuxbwkhzg2i5dljaswcroeih4dgiqq6pazcmunwt2byd725vi"),
]


@pytest.mark.parametrize("keys,root", SPEC_TREES, ids=[str(i) for i in range(len(SPEC_TREES))])
def test_spec_worked_trees(keys: list[str], root: str) -> None:
    assert str(tree_of(keys).cid) == root
    assert str(tree_of(list(reversed(keys))).cid) == root
    assert str(MST.build(new_store(), sorted((k, LEAF) for k in keys)).cid) == root


def test_single_entry_node_bytes() -> None:
    tree = tree_of(rk("3fo2j"))
    expected = (
        "a2616581a4616b5820" + b"com.example.record/3jqfcqzm3fo2j".hex()
        + "61700061 74f6 6176d82a582500".replace(" ", "") + LEAF.bytes.hex() + "616cf6"
    )
    assert tree.root.block.hex() == expected


def test_delete_restores_shapes() -> None:
    # deleting the layer-2 key gives back the plain two-key layer-0 root
    with_high = tree_of(rk("3ft2j", "3fz2j", "3fx2j"))
    assert with_high.layer == 2
    back = with_high.delete(rk("3fx2j")[0])
    assert str(back.cid) == "bafyreidfcktqnfmykz2ps3dbul35pepleq7kvv526g47xahuz3rqtptmky"
    assert back.layer == 0
    trimmed = tree_of(rk("3fn2j", "3fo2j", "3fp2j", "3fs2j", "3ft2j", "3fu2j")).delete(rk("3fs2j")[0])
    assert str(trimmed.cid) == "bafyreie4kjuxbwkhzg2i5dljaswcroeih4dgiqq6pazcmunwt2byd725vi"


def test_two_deep_split_and_inversion_from_proof_blocks() -> None:
    keys = ["A0/374913", "B1/986427", "C0/451630", "E0/670489", "F1/085263", "G0/765327"]
    before = tree_of(keys)
    assert str(before.cid) == "bafyreicraprx2xwnico4tuqir3ozsxpz46qkcpox3obf5bagicqwurghpy"
    after = before.set("D2/269196", LEAF)
    assert str(after.cid) == "bafyreihvay6pazw3dfa47u5d2tn3rd6pa57sr37bo5bqyvjuqc73ib65my"
    # only the covering proof of the new tree: enough to undo the insert
    proof = MemoryBlockStore()
    for node in after.covering_nodes("D2/269196"):
        proof.put(node.cid, node.block)
    partial = MST.load(NodeStore(proof, verify=True), after.cid)
    assert partial.delete("D2/269196").cid == before.cid


def test_empty_intermediate_nodes_shape() -> None:
    tree = tree_of(rk("3ft2j", "3fz2j", "3fx2j"))
    root = tree.root
    assert root.layer == 2 and len(root.keys) == 1
    for sub in root.subs:
        node = tree.store.resolve(sub, 1)
        assert node.layer == 1 and node.keys == () and node.subs[0] is not None


def test_get_items_and_ranges() -> None:
    keys = sorted(EXAMPLE_KEYS)
    tree = tree_of(keys)
    assert [k for k, _ in tree] == keys
    assert [k for k, _ in tree.items(reverse=True)] == keys[::-1]
    for key in keys:
        assert tree.get(key) == LEAF
    assert tree.get("A0/000000") is None and tree.get("Z9/999999") is None
    lo, hi = keys[10], keys[50]
    assert [k for k, _ in tree.items(lo, hi)] == keys[10:50]
    assert [k for k, _ in tree.items(lo, hi, reverse=True)] == keys[10:50][::-1]
    assert [k for k, _ in tree.items("C")] == [k for k in keys if k >= "C"]
    assert [k for k, _ in tree.items(end="C", reverse=True)] == [k for k in keys if k < "C"][::-1]
    assert tree.neighbours(keys[5]) == (keys[4], keys[6])
    assert tree.neighbours("A") == (None, keys[0])
    assert tree.count() == len(keys)


def test_update_value_and_old_values() -> None:
    tree = tree_of(EXAMPLE_KEYS[:20])
    other = CID.for_cbor({"x": 1})
    updated, old = tree.set_with_old(EXAMPLE_KEYS[3], other)
    assert old == LEAF and updated.get(EXAMPLE_KEYS[3]) == other
    same, old = updated.set_with_old(EXAMPLE_KEYS[3], other)
    assert same is updated and old == other
    gone, old = updated.delete_with_old(EXAMPLE_KEYS[3])
    assert old == other and gone.get(EXAMPLE_KEYS[3]) is None
    unchanged, old = gone.delete_with_old(EXAMPLE_KEYS[3])
    assert unchanged is gone and old is None
    # the old trees stay valid
    assert tree.get(EXAMPLE_KEYS[3]) == LEAF and updated.get(EXAMPLE_KEYS[3]) == other


def test_persist_and_reload() -> None:
    blocks = MemoryBlockStore()
    store = NodeStore(blocks)
    tree = MST.build(store, sorted((k, LEAF) for k in EXAMPLE_KEYS))
    written = tree.persist()
    assert written and all(blocks.get(cid) == data for cid, data in written.items())
    assert tree.persist() == {}
    reloaded = MST.load(NodeStore(blocks, verify=True), tree.cid)
    assert list(reloaded) == list(tree)
    edited = reloaded.set("A0/000001", LEAF)
    assert set(edited.new_blocks()) <= {n.cid for n in edited.nodes()}
    assert all(n.cid not in written for n in edited.unstored_nodes())


def test_missing_node_raises() -> None:
    tree = MST.build(new_store(), sorted((k, LEAF) for k in EXAMPLE_KEYS))
    blocks = MemoryBlockStore()
    blocks.put(tree.cid, tree.root.block)
    partial = MST.load(NodeStore(blocks), tree.cid)
    with pytest.raises(MissingBlock):
        list(partial)


def test_build_rejects_unsorted() -> None:
    with pytest.raises(InvalidMst):
        MST.build(new_store(), [("b/1", LEAF), ("a/1", LEAF)])
    with pytest.raises(InvalidMst):
        MST.build(new_store(), [("a/1", LEAF), ("a/1", LEAF)])


def _node_bytes(entries: list[dict], left: object = None) -> bytes:
    return cbor.encode({"e": entries, "l": left})


def _entry(k: bytes, p: int = 0, v: CID = LEAF, t: object = None) -> dict:
    return {"k": k, "p": p, "t": t, "v": v}


BAD_NODES = {
    "not a map": cbor.encode([1]),
    "extra key": cbor.encode({"e": [], "l": None, "x": 1}),
    "e not array": cbor.encode({"e": 1, "l": None}),
    "l not link": cbor.encode({"e": [], "l": "x"}),
    "entry not map": _node_bytes([1]),  # type: ignore[list-item]
    "entry missing key": cbor.encode({"e": [{"k": b"a", "p": 0, "v": LEAF}], "l": None}),
    "k not bytes": _node_bytes([_entry("a")]),  # type: ignore[arg-type]
    "v not link": cbor.encode({"e": [{"k": b"a", "p": 0, "t": None, "v": "x"}], "l": None}),
    "prefix too long": _node_bytes([_entry(b"A0/374913"), _entry(b"x", p=20)]),
    "prefix not maximal": _node_bytes([_entry(b"A0/374913"), _entry(b"14", p=7)]),
    "first prefix nonzero": _node_bytes([_entry(b"0/374913", p=1)]),
    "keys not increasing": _node_bytes([_entry(b"C0/451630"), _entry(b"A0/374913")]),
    "mixed heights": _node_bytes([_entry(b"A0/374913"), _entry(b"B1/986427")]),
    "layer 0 with subtree": _node_bytes([_entry(b"A0/374913")], left=LEAF),
    "bad utf-8": _node_bytes([_entry(b"\xff\xfe")]),
    "not cbor": b"\xff",
}


@pytest.mark.parametrize("data", BAD_NODES.values(), ids=BAD_NODES.keys())
def test_bad_nodes_rejected(data: bytes) -> None:
    with pytest.raises(InvalidMst):
        decode_node(data)


def test_keyless_root_rejected() -> None:
    with pytest.raises(InvalidMst):
        decode_node(_node_bytes([], left=LEAF))


def test_wrong_layer_rejected_on_load() -> None:
    blocks = MemoryBlockStore()
    bad_child = _node_bytes([_entry(b"A0/374913")])
    child_cid = CID.for_cbor_bytes(bad_child)
    blocks.put(child_cid, bad_child)
    # a layer-2 root whose left subtree is a layer-0 node (skips layer 1)
    root = _node_bytes([_entry(b"A2/827942")], left=child_cid)
    root_cid = CID.for_cbor_bytes(root)
    blocks.put(root_cid, root)
    with pytest.raises(InvalidMst):
        list(MST.load(NodeStore(blocks, verify=True), root_cid))


# -- properties -------------------------------------------------------------

keys_strategy = st.lists(st.sampled_from(EXAMPLE_KEYS), unique=True, max_size=40)


@given(keys_strategy, st.randoms(use_true_random=False))
@settings(max_examples=150, deadline=None)
def test_any_insert_order_gives_same_root(keys: list[str], rnd: random.Random) -> None:
    shuffled = keys[:]
    rnd.shuffle(shuffled)
    reference = MST.build(new_store(), sorted((k, LEAF) for k in keys))
    assert tree_of(shuffled).cid == reference.cid


@given(keys_strategy, keys_strategy, st.randoms(use_true_random=False))
@settings(max_examples=150, deadline=None)
def test_inserts_and_deletes_in_any_order(keep: list[str], extra: list[str], rnd: random.Random) -> None:
    extra = [k for k in extra if k not in keep]
    ops = [("set", k) for k in keep + extra] + [("del", k) for k in extra]
    rnd.shuffle(ops)
    # a delete before its insert is a no-op, so re-delete the extras at the end
    tree = MST.empty(new_store())
    for op, key in ops:
        tree = tree.set(key, LEAF) if op == "set" else tree.delete(key)
    for key in extra:
        tree = tree.delete(key)
    assert tree.cid == MST.build(new_store(), sorted((k, LEAF) for k in keep)).cid


def naive_diff(a: MST, b: MST) -> tuple[list, list, list]:
    da, db = dict(a), dict(b)
    created = sorted((k, v) for k, v in db.items() if k not in da)
    deleted = sorted((k, v) for k, v in da.items() if k not in db)
    updated = sorted((k, da[k], db[k]) for k in da.keys() & db.keys() if da[k] != db[k])
    return created, updated, deleted


values = st.sampled_from([LEAF, CID.for_cbor({"v": 1}), CID.for_cbor({"v": 2})])


@given(st.dictionaries(st.sampled_from(EXAMPLE_KEYS), values, max_size=30),
       st.dictionaries(st.sampled_from(EXAMPLE_KEYS), values, max_size=30))
@settings(max_examples=300, deadline=None)
def test_diff_matches_naive_and_applies(a_items: dict, b_items: dict) -> None:
    store = new_store()
    a = MST.build(store, sorted(a_items.items()))
    b = MST.build(store, sorted(b_items.items()))
    d = a.diff(b)
    assert (d.created, d.updated, d.deleted) == naive_diff(a, b)
    # applying the diff to a gives b
    tree = a
    for key, _ in d.deleted:
        tree = tree.delete(key)
    for key, _, new in d.updated:
        tree = tree.set(key, new)
    for key, new in d.created:
        tree = tree.set(key, new)
    assert tree.cid == b.cid
    # new_nodes are exactly b's nodes that a does not have
    a_nodes = {n.cid for n in a.nodes()}
    assert set(d.new_nodes) == {n.cid for n in b.nodes()} - a_nodes
    assert d.removed_nodes == a_nodes - {n.cid for n in b.nodes()}
