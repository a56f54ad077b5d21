"""The Merkle Search Tree (MST) that maps repo paths to record CIDs.

Facts the code relies on (see the repository spec):

* A key's *height* is the number of leading zero bits of SHA-256(key), halved
  and rounded down (fanout 4). Every entry of a node has the same height: the
  node's *layer*. Subtree links point exactly one layer down.
* A node is ``{"e": [entries], "l": left subtree | null}``; an entry is
  ``{"k": key suffix, "p": shared prefix length, "v": value, "t": right
  subtree | null}``. Prefix compression is against the previous key in the
  same node and always maximal.
* The shape is a pure function of the key/value set: the root is never a
  keyless node pointing down (top pruned); empty ranges are ``null`` (bottom
  pruned); and a non-empty range whose keys are all two or more layers lower
  goes through *keyless intermediate nodes*, so links never skip a layer.
  The empty tree is the single node ``{"e": [], "l": null}``.

Trees are immutable values. Edits return a new :class:`MST` and share every
untouched node with the old one; both stay valid. New nodes live in memory
(children may be :class:`Node` objects or CIDs) and are only encoded and
hashed when a CID is asked for, so a batch of edits encodes each final node
once. :meth:`MST.new_blocks` lists the nodes a store does not have yet.

Each edited tree also remembers the *stored* nodes its edits replaced
(:attr:`MST.dropped`, accumulated over a chain of edits until
:meth:`MST.settled`): with the new nodes, that gives the blocks a commit
removes without diffing the two trees (:meth:`MST.removed_since_settled`).

Keys are ``str`` (repo paths are ASCII; arbitrary UTF-8 keys work too) and
compare as their UTF-8 bytes do.
"""

from __future__ import annotations

import functools
from bisect import bisect_left
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Union

from roost import cbor
from roost.cid import CID, _cidext, sha256
from roost.errors import InvalidMst, MissingBlock, RoostError

if TYPE_CHECKING:
    from roost.blockstore import BlockStore

__all__ = [
    "EMPTY_TREE_CID",
    "MAX_LAYER",
    "MST",
    "MstDiff",
    "Node",
    "NodeStore",
    "common_prefix_len",
    "key_height",
]

#: Highest layer accepted. Reaching layer 32 needs a key whose SHA-256 starts
#: with 64 zero bits; honest trees of millions of keys stay below 16.
MAX_LAYER = 32
#: Nodes kept decoded in a NodeStore before its cache is reset.
NODE_CACHE_SIZE = 200_000
#: Key pairs whose shared prefix length is remembered (for node encoding).
PREFIX_CACHE_SIZE = 8_192

_sha256 = sha256
#: The C extension's node decoder and encoder (None when it is missing or older):
#: same results as the Python code below, which they hand anything unusual.
_fast_decode = getattr(_cidext, "mst_decode", None)
_fast_encode = getattr(_cidext, "mst_encode", None)

Sub = Union["Node", CID, None]


def key_height(key: str | bytes) -> int:
    """MST height of a key: leading zero bits of SHA-256(key) // 2."""
    if type(key) is str:
        key = key.encode()
    digest = _sha256(key)
    first = digest[0]
    if first >= 64:
        return 0
    if first >= 16:
        return 1
    if first >= 4:
        return 2
    if first:
        return 3
    return (256 - int.from_bytes(digest, "big").bit_length()) // 2


def common_prefix_len(a: bytes, b: bytes) -> int:
    """Length in bytes of the longest common prefix of ``a`` and ``b``."""
    n = min(len(a), len(b))
    x = int.from_bytes(a[:n], "big") ^ int.from_bytes(b[:n], "big")
    return n - (x.bit_length() + 7) // 8


class Node:
    """One MST node: ``layer``, sorted ``keys``, their ``vals`` and ``subs``.

    ``subs`` has one more element than ``keys``: ``subs[0]`` is the left
    subtree (``l``) and ``subs[i + 1]`` the subtree after ``keys[i]`` (``t``).
    A subtree is a ``Node``, a ``CID`` or ``None``. Treat nodes as immutable.
    """

    __slots__ = ("layer", "keys", "vals", "subs", "_cid", "_block", "stored")

    def __init__(
        self,
        layer: int,
        keys: tuple[str, ...],
        vals: tuple[CID, ...],
        subs: tuple[Sub, ...],
    ) -> None:
        self.layer = layer
        self.keys = keys
        self.vals = vals
        self.subs = subs
        self._cid: CID | None = None
        self._block: bytes | None = None
        #: True once the block is known to be in the backing store.
        self.stored = False

    @property
    def is_empty(self) -> bool:
        return not self.keys and self.subs[0] is None

    @property
    def block(self) -> bytes:
        """The node's DAG-CBOR bytes (children's CIDs computed as needed)."""
        if self._block is None:
            self._block = self._encode()
        return self._block

    @property
    def cid(self) -> CID:
        if self._cid is None:
            self._cid = CID.for_cbor_bytes(self.block)
        return self._cid

    def _encode(self) -> bytes:
        if _fast_encode is not None:
            block = _fast_encode(
                self.keys,
                self.vals,
                tuple(s if s is None or type(s) is CID else s.cid for s in self.subs),
            )
            if block is not None:
                return block  # type: ignore[no-any-return]
        entries = []
        prev: str | None = None
        subs = self.subs
        vals = self.vals
        for i, key in enumerate(self.keys):
            p = _shared_prefix(prev, key) if prev is not None else 0
            t = subs[i + 1]
            entries.append(
                {
                    "k": key.encode()[p:],
                    "p": p,
                    "t": t if t is None or type(t) is CID else t.cid,
                    "v": vals[i],
                }
            )
            prev = key
        left = subs[0]
        return cbor.encode(
            {"e": entries, "l": left if left is None or type(left) is CID else left.cid},
            check_floats=False,
        )

    def __repr__(self) -> str:
        return f"Node(layer={self.layer}, keys={len(self.keys)})"


@functools.lru_cache(maxsize=PREFIX_CACHE_SIZE)
def _shared_prefix(prev: str, key: str) -> int:
    """Bytes of UTF-8 prefix two keys share. Memoized: an edit re-encodes the
    nodes on its path, whose neighbouring key pairs are mostly unchanged."""
    return common_prefix_len(prev.encode(), key.encode())


def _empty(layer: int) -> Node:
    return Node(layer, (), (), (None,))


def decode_node(data: bytes, layer: int | None = None, *, verify: bool = True) -> Node:
    """Decode a node block. ``layer`` is the layer the parent expects.

    The shape and types are always checked. With ``verify`` the MST rules are
    checked too: every key's height equals the layer, prefixes are maximal,
    keys strictly increase, subtree links are dag-cbor SHA-256 CIDs.
    Raises ``InvalidMst``.
    """
    if _fast_decode is not None:
        fast = _fast_decode(data)
        if fast is not None:  # canonical and meets every rule checked below
            node_layer, keys, vals, subs = fast
            if node_layer < 0:  # keyless: at the layer its parent expects
                node_layer = MAX_LAYER + 1 if layer is None else layer
                if node_layer == 0 and subs[0] is not None:
                    node_layer = MAX_LAYER + 1
            if node_layer <= MAX_LAYER and (layer is None or node_layer == layer):
                node = Node(node_layer, keys, vals, subs)
                node._block = data
                return node
    return _decode_node(data, layer, verify)


def _decode_node(data: bytes, layer: int | None, verify: bool) -> Node:
    try:
        obj = cbor.decode(data, check_floats=False)  # every field's type is checked below
    except RoostError as exc:
        raise InvalidMst(f"MST node is not valid DAG-CBOR: {exc.message}") from None
    if type(obj) is not dict or len(obj) != 2 or "e" not in obj or "l" not in obj:
        raise InvalidMst("MST node must be a map with exactly the keys 'e' and 'l'")
    entries = obj["e"]
    left = obj["l"]
    if type(entries) is not list:
        raise InvalidMst("MST node 'e' must be an array")
    if left is not None and type(left) is not CID:
        raise InvalidMst("MST node 'l' must be a link or null")
    keys: list[str] = []
    vals: list[CID] = []
    subs: list[Sub] = [left]
    prev = b""
    for entry in entries:
        if type(entry) is not dict or len(entry) != 4:
            raise InvalidMst("MST entry must be a map with exactly k, p, t, v")
        try:
            suffix = entry["k"]
            p = entry["p"]
            t = entry["t"]
            v = entry["v"]
        except KeyError:
            raise InvalidMst("MST entry must be a map with exactly k, p, t, v") from None
        if type(suffix) is not bytes or type(p) is not int or type(v) is not CID:
            raise InvalidMst("MST entry has a field of the wrong type")
        if t is not None and type(t) is not CID:
            raise InvalidMst("MST entry 't' must be a link or null")
        if not 0 <= p <= len(prev):
            raise InvalidMst(f"MST entry prefix length {p} exceeds the previous key")
        full = prev[:p] + suffix
        if verify:
            if keys:
                # p is maximal unless the suffix starts with the byte of prev after p
                if p < len(prev) and suffix and suffix[0] == prev[p]:
                    raise InvalidMst("MST entry prefix length is not maximal")
                if full <= prev:
                    raise InvalidMst("MST keys are not strictly increasing")
            elif p:
                raise InvalidMst("first MST entry must have prefix length 0")
        try:
            keys.append(full.decode())
        except UnicodeDecodeError:
            raise InvalidMst("MST key is not valid UTF-8") from None
        vals.append(v)
        subs.append(t)
        prev = full
    if keys:
        node_layer = key_height(keys[0])
        if verify:
            for key in keys[1:]:
                if key_height(key) != node_layer:
                    raise InvalidMst("MST node holds keys of different heights")
        if layer is not None and node_layer != layer:
            raise InvalidMst(f"MST node at layer {node_layer} where layer {layer} was expected")
    elif layer is not None:
        node_layer = layer
    elif left is None:
        node_layer = 0
    else:
        raise InvalidMst("MST root is a keyless node (the tree is not top-pruned)")
    if node_layer > MAX_LAYER:
        raise InvalidMst(f"MST layer {node_layer} is above the limit {MAX_LAYER}")
    if verify:
        for sub in subs:
            if sub is not None and not sub.is_dag_cbor:
                raise InvalidMst("MST subtree link is not a dag-cbor SHA-256 CID")
        if node_layer == 0 and any(s is not None for s in subs):
            raise InvalidMst("MST node at layer 0 has a subtree")
    node = Node(node_layer, tuple(keys), tuple(vals), tuple(subs))
    node._block = data
    return node


class NodeStore:
    """Loads MST nodes by CID from a block store, with a decoded-node cache.

    With ``verify`` (for untrusted blocks) every node is checked against the
    MST rules as it is loaded and its bytes are checked against its CID.
    """

    def __init__(self, blocks: BlockStore, *, verify: bool = False) -> None:
        self.blocks = blocks
        self.verify = verify
        self._cache: dict[CID, Node] = {}

    def load(self, cid: CID, layer: int | None = None) -> Node:
        node = self._cache.get(cid)
        if node is not None:
            if layer is not None and node.layer != layer:
                raise InvalidMst(f"MST node {cid} is at layer {node.layer}, expected {layer}")
            return node
        data = self.blocks.get(cid)
        if data is None:
            raise MissingBlock(f"MST node {cid} is missing", cid)
        return self.add(cid, data, layer)

    def add(self, cid: CID, data: bytes, layer: int | None = None) -> Node:
        """Decode a node block fetched elsewhere (e.g. in a batch) into the cache."""
        node = self._cache.get(cid)
        if node is not None:
            if layer is not None and node.layer != layer:
                raise InvalidMst(f"MST node {cid} is at layer {node.layer}, expected {layer}")
            return node
        if self.verify and not cid.matches(data):
            raise InvalidMst(f"MST node block does not hash to {cid}")
        node = decode_node(data, layer, verify=self.verify)
        if not node.keys and node.subs[0] is not None and layer is None:
            raise InvalidMst("MST root is a keyless node (the tree is not top-pruned)")
        node._cid = cid
        node.stored = True
        if len(self._cache) >= NODE_CACHE_SIZE:
            self._cache.clear()
        self._cache[cid] = node
        return node

    def resolve(self, sub: Node | CID, layer: int) -> Node:
        if type(sub) is CID:
            return self.load(sub, layer)
        return sub  # type: ignore[return-value]

    def remember(self, node: Node) -> None:
        """Record that ``node``'s block is now in the store."""
        node.stored = True
        if len(self._cache) >= NODE_CACHE_SIZE:
            self._cache.clear()
        self._cache[node.cid] = node


@dataclass(slots=True)
class MstDiff:
    """What changed between two trees.

    ``created`` (key, cid), ``updated`` (key, old cid, new cid) and ``deleted``
    (key, old cid) are in key order. ``new_nodes`` maps the CID of every node
    of the new tree that is not in the old one to its bytes; ``removed_nodes``
    holds the CIDs of old nodes no longer in the new tree.
    """

    created: list[tuple[str, CID]] = field(default_factory=list)
    updated: list[tuple[str, CID, CID]] = field(default_factory=list)
    deleted: list[tuple[str, CID]] = field(default_factory=list)
    new_nodes: dict[CID, bytes] = field(default_factory=dict)
    removed_nodes: set[CID] = field(default_factory=set)

    @property
    def is_empty(self) -> bool:
        return not (self.created or self.updated or self.deleted)


class MST:
    """An immutable MST value over a :class:`NodeStore`.

    ``dropped``: the stored nodes that the edits leading to this tree (since
    the last settled tree) replaced or cut off; see :meth:`removed_since_settled`.
    """

    __slots__ = ("store", "root", "dropped")

    def __init__(self, store: NodeStore, root: Node, dropped: tuple[Node, ...] = ()) -> None:
        self.store = store
        self.root = root
        self.dropped = dropped

    def _edited(self, root: Node, dropped: list[Node]) -> MST:
        kept = tuple(node for node in dropped if node.stored)
        return MST(self.store, root, self.dropped + kept if self.dropped else kept)

    def settled(self) -> MST:
        """The same tree with an empty edit history (after its blocks are stored)."""
        return self if not self.dropped else MST(self.store, self.root)

    def removed_since_settled(self, new_nodes: Iterable[Node] | None = None) -> set[CID]:
        """CIDs of stored nodes the edits since the last settled tree took out.

        Exactly the nodes of that earlier tree which this one no longer uses
        (what :func:`diff` reports as ``removed_nodes``), found without
        walking either tree: an edit copies the path it changes, so every
        node it replaces is recorded as it goes. ``new_nodes``: this tree's
        unstored nodes, if already listed (a rebuilt node may equal a replaced one).
        """
        if not self.dropped:
            return set()
        removed = {node.cid for node in self.dropped}
        for node in self.unstored_nodes() if new_nodes is None else new_nodes:
            removed.discard(node.cid)
        return removed

    # -- construction ------------------------------------------------------

    @classmethod
    def empty(cls, store: NodeStore) -> MST:
        return cls(store, _empty(0))

    @classmethod
    def load(cls, store: NodeStore, root_cid: CID) -> MST:
        """The tree whose root node has ``root_cid`` (loaded lazily)."""
        return cls(store, store.load(root_cid))

    @classmethod
    def build(cls, store: NodeStore, items: Iterable[tuple[str, CID]]) -> MST:
        """Build a tree from (key, value) pairs sorted by key, in one pass.

        Raises ``InvalidMst`` if keys are not strictly increasing.
        """
        # open_[L] = [keys, vals, subs] of the layer-L node being filled; its
        # last sub is the pending subtree, replaced when the layer below closes.
        open_: list[list[list]] = [[[], [], [None]]]  # type: ignore[type-arg]
        prev: str | None = None
        height = key_height
        for key, val in items:
            if prev is not None and key <= prev:
                raise InvalidMst(f"keys must be sorted and unique: {key!r} after {prev!r}")
            prev = key
            h = height(key)
            if h > MAX_LAYER:
                raise InvalidMst(f"key {key!r} has height {h}, above {MAX_LAYER}")
            while len(open_) <= h:
                open_.append([[], [], [None]])
            if h:
                child: Sub = None
                for layer in range(h):
                    keys, vals, subs = open_[layer]
                    subs[-1] = child
                    child = (
                        Node(layer, tuple(keys), tuple(vals), tuple(subs))
                        if keys or child is not None
                        else None
                    )
                    open_[layer] = [[], [], [None]]
                open_[h][2][-1] = child
            keys, vals, subs = open_[h]
            keys.append(key)
            vals.append(val)
            subs.append(None)
        child = None
        top = len(open_) - 1
        for layer in range(top + 1):
            keys, vals, subs = open_[layer]
            subs[-1] = child
            if keys or child is not None:
                child = Node(layer, tuple(keys), tuple(vals), tuple(subs))
            else:
                child = None
        if child is None:
            return cls.empty(store)
        root: Node = child  # type: ignore[assignment]
        while not root.keys and root.subs[0] is not None:
            root = store.resolve(root.subs[0], root.layer - 1)  # type: ignore[arg-type]
        return cls(store, root)

    # -- reading -----------------------------------------------------------

    @property
    def cid(self) -> CID:
        """The root CID (computes pending node encodings)."""
        return self.root.cid

    @property
    def layer(self) -> int:
        return self.root.layer

    def get(self, key: str) -> CID | None:
        node = self.root
        resolve = self.store.resolve
        while True:
            keys = node.keys
            i = bisect_left(keys, key)
            if i < len(keys) and keys[i] == key:
                return node.vals[i]
            sub = node.subs[i]
            if sub is None:
                return None
            node = resolve(sub, node.layer - 1)

    def __contains__(self, key: str) -> bool:
        return self.get(key) is not None

    def items(
        self, start: str | None = None, end: str | None = None, *, reverse: bool = False
    ) -> Iterator[tuple[str, CID]]:
        """(key, value) pairs with ``start <= key < end``, in key order or reversed.

        Subtrees entirely outside the range are not loaded.
        """
        resolve = self.store.resolve
        # Stack of (node, position); a position walks subs and keys in order.
        if not reverse:
            yield from self._items_forward(self.root, start, end, resolve)
        else:
            yield from self._items_reverse(self.root, start, end, resolve)

    @staticmethod
    def _items_forward(root: Node, start: str | None, end: str | None, resolve) -> Iterator[tuple[str, CID]]:  # type: ignore[no-untyped-def]
        stack: list[tuple[Node, int]] = []
        node = root
        i = bisect_left(node.keys, start) if start is not None else 0
        # descend into subs[i] first
        stack.append((node, i))
        descend: Sub = node.subs[i]
        while True:
            while descend is not None:
                child = resolve(descend, stack[-1][0].layer - 1)
                j = bisect_left(child.keys, start) if start is not None else 0
                stack.append((child, j))
                descend = child.subs[j]
            if not stack:
                return
            node, j = stack.pop()
            if j < len(node.keys):
                key = node.keys[j]
                if end is not None and key >= end:
                    return
                yield key, node.vals[j]
                stack.append((node, j + 1))
                descend = node.subs[j + 1]
            # else: node exhausted; continue popping

    @staticmethod
    def _items_reverse(root: Node, start: str | None, end: str | None, resolve) -> Iterator[tuple[str, CID]]:  # type: ignore[no-untyped-def]
        # positions count keys from the right: visit subs[j], then keys[j-1]
        stack: list[tuple[Node, int]] = []
        node = root
        j = bisect_left(node.keys, end) if end is not None else len(node.keys)
        stack.append((node, j))
        descend: Sub = node.subs[j]
        while True:
            while descend is not None:
                child = resolve(descend, stack[-1][0].layer - 1)
                k = bisect_left(child.keys, end) if end is not None else len(child.keys)
                stack.append((child, k))
                descend = child.subs[k]
            if not stack:
                return
            node, j = stack.pop()
            if j > 0:
                key = node.keys[j - 1]
                if start is not None and key < start:
                    return
                yield key, node.vals[j - 1]
                stack.append((node, j - 1))
                descend = node.subs[j - 1]

    def __iter__(self) -> Iterator[tuple[str, CID]]:
        return self.items()

    def count(self) -> int:
        return sum(1 for _ in self.items())

    def nodes(self) -> Iterator[Node]:
        """Every node, pre-order (a node before its subtrees, left to right)."""
        resolve = self.store.resolve
        stack = [self.root]
        while stack:
            node = stack.pop()
            yield node
            layer = node.layer - 1
            for sub in reversed(node.subs):
                if sub is not None:
                    stack.append(resolve(sub, layer))

    def path(self, key: str) -> list[Node]:
        """The nodes on the search path for ``key``, root first.

        Ends at the node holding the key, or where the search meets a null
        link: the MST part of an inclusion or non-inclusion proof.
        """
        out = []
        node = self.root
        resolve = self.store.resolve
        while True:
            out.append(node)
            keys = node.keys
            i = bisect_left(keys, key)
            if i < len(keys) and keys[i] == key:
                return out
            sub = node.subs[i]
            if sub is None:
                return out
            node = resolve(sub, node.layer - 1)

    def neighbours(self, key: str) -> tuple[str | None, str | None]:
        """The nearest keys before and after ``key`` (whether or not it is present)."""
        before = next(self.items(end=key, reverse=True), None)
        after = next(self.items(start=key + "\x00"), None)
        return (before[0] if before else None, after[0] if after else None)

    def covering_nodes(self, key: str) -> list[Node]:
        """Nodes needed to insert or remove ``key`` using this tree alone.

        The search paths to the key and to its two neighbours: enough to
        invert a commit's op on this key (sync v1.1).
        """
        # The neighbours' paths share the key's path down to the node holding
        # the key. Below it, the one before the key is the maximum of the
        # subtree on its left (the right spine of that subtree), the one after
        # it the minimum of the subtree on its right (the left spine). An
        # absent key's neighbours are keys on its own path.
        out: list[Node] = []
        resolve = self.store.resolve
        node = self.root
        while True:
            out.append(node)
            keys = node.keys
            i = bisect_left(keys, key)
            if i < len(keys) and keys[i] == key:
                break
            sub = node.subs[i]
            if sub is None:
                return out
            node = resolve(sub, node.layer - 1)
        for sub, last in ((node.subs[i], -1), (node.subs[i + 1], 0)):
            layer = node.layer - 1
            while sub is not None:
                child = resolve(sub, layer)
                out.append(child)
                sub = child.subs[last]
                layer -= 1
        return out

    # -- editing -----------------------------------------------------------

    def set(self, key: str, val: CID) -> MST:
        """A tree with ``key`` mapped to ``val`` (inserted or replaced)."""
        return self.set_with_old(key, val)[0]

    def set_with_old(self, key: str, val: CID) -> tuple[MST, CID | None]:
        """Like ``set``, also returning the previous value (None if new)."""
        h = key_height(key)
        if h > MAX_LAYER:
            raise InvalidMst(f"key {key!r} has height {h}, above {MAX_LAYER}")
        root = self.root
        dropped: list[Node] = []
        if root.is_empty:
            dropped.append(root)
            root = _empty(h)
        while root.layer < h:
            root = Node(root.layer + 1, (), (), (root,))
        new_root, old = self._insert(root, key, val, h, dropped)
        if new_root is self.root:
            return self, old
        return self._edited(new_root, dropped), old

    def delete(self, key: str) -> MST:
        """A tree without ``key`` (the same tree if it was absent)."""
        return self.delete_with_old(key)[0]

    def delete_with_old(self, key: str) -> tuple[MST, CID | None]:
        """Like ``delete``, also returning the removed value (None if absent)."""
        h = key_height(key)
        root = self.root
        if h > root.layer:
            return self, None
        dropped: list[Node] = []
        new_root, old = self._delete(root, key, h, dropped)
        if old is None:
            return self, None
        while not new_root.keys:  # top-prune: keyless roots go
            dropped.append(new_root)
            sub = new_root.subs[0]
            if sub is None:
                new_root = _empty(0)
                break
            new_root = self.store.resolve(sub, new_root.layer - 1)
        return self._edited(new_root, dropped), old

    # The edit helpers below append to ``dropped`` every node they replace
    # (a node returned unchanged is kept, not dropped).

    def _insert(
        self, node: Node, key: str, val: CID, h: int, dropped: list[Node]
    ) -> tuple[Node, CID | None]:
        keys = node.keys
        i = bisect_left(keys, key)
        layer = node.layer
        if h == layer:
            if i < len(keys) and keys[i] == key:
                old = node.vals[i]
                if old == val:
                    return node, old
                dropped.append(node)
                return Node(layer, keys, node.vals[:i] + (val,) + node.vals[i + 1 :], node.subs), old
            left, right = self._split(node.subs[i], key, layer - 1, dropped)
            dropped.append(node)
            subs = node.subs
            return (
                Node(
                    layer,
                    keys[:i] + (key,) + keys[i:],
                    node.vals[:i] + (val,) + node.vals[i:],
                    subs[:i] + (left, right) + subs[i + 1 :],
                ),
                None,
            )
        sub = node.subs[i]
        child = _empty(layer - 1) if sub is None else self.store.resolve(sub, layer - 1)
        new_child, old = self._insert(child, key, val, h, dropped)
        if new_child is child:
            return node, old
        dropped.append(node)
        subs = node.subs
        return Node(layer, keys, node.vals, subs[:i] + (new_child,) + subs[i + 1 :]), old

    def _split(self, sub: Sub, key: str, layer: int, dropped: list[Node]) -> tuple[Sub, Sub]:
        """Split a subtree into the parts below and above ``key`` (absent)."""
        if sub is None:
            return None, None
        node = self.store.resolve(sub, layer)
        keys = node.keys
        i = bisect_left(keys, key)
        inner = node.subs[i]
        low, high = self._split(inner, key, layer - 1, dropped)
        n = len(keys)
        if i == n and low is inner:
            return sub, None
        if i == 0 and high is inner:
            return None, sub
        dropped.append(node)
        subs = node.subs
        left = Node(layer, keys[:i], node.vals[:i], subs[:i] + (low,)) if i or low is not None else None
        right = (
            Node(layer, keys[i:], node.vals[i:], (high,) + subs[i + 1 :])
            if i < n or high is not None
            else None
        )
        return left, right

    def _delete(
        self, node: Node, key: str, h: int, dropped: list[Node]
    ) -> tuple[Node, CID | None]:
        keys = node.keys
        i = bisect_left(keys, key)
        layer = node.layer
        subs = node.subs
        if h == layer:
            if i == len(keys) or keys[i] != key:
                return node, None
            merged = self._merge(subs[i], subs[i + 1], layer - 1, dropped)
            dropped.append(node)
            return (
                Node(
                    layer,
                    keys[:i] + keys[i + 1 :],
                    node.vals[:i] + node.vals[i + 1 :],
                    subs[:i] + (merged,) + subs[i + 2 :],
                ),
                node.vals[i],
            )
        sub = subs[i]
        if sub is None:
            return node, None
        child = self.store.resolve(sub, layer - 1)
        new_child, old = self._delete(child, key, h, dropped)
        if old is None:
            return node, None
        dropped.append(node)
        replacement: Sub = None if new_child.is_empty else new_child
        return Node(layer, keys, node.vals, subs[:i] + (replacement,) + subs[i + 1 :]), old

    def _merge(self, a: Sub, b: Sub, layer: int, dropped: list[Node]) -> Sub:
        """Join two adjacent subtrees of the same layer."""
        if a is None:
            return b
        if b is None:
            return a
        left = self.store.resolve(a, layer)
        right = self.store.resolve(b, layer)
        mid = self._merge(left.subs[-1], right.subs[0], layer - 1, dropped)
        dropped.append(left)
        dropped.append(right)
        return Node(
            layer,
            left.keys + right.keys,
            left.vals + right.vals,
            left.subs[:-1] + (mid,) + right.subs[1:],
        )

    # -- blocks ------------------------------------------------------------

    def unstored_nodes(self) -> list[Node]:
        """Nodes reachable from the root that the store does not hold yet."""
        out = []
        if self.root.stored:
            return out
        stack = [self.root]
        while stack:
            node = stack.pop()
            out.append(node)
            for sub in node.subs:
                if sub is not None and type(sub) is not CID and not sub.stored:  # type: ignore[union-attr]
                    stack.append(sub)  # type: ignore[arg-type]
        return out

    def new_blocks(self) -> dict[CID, bytes]:
        """CID -> bytes of every node not yet in the store."""
        return {node.cid: node.block for node in self.unstored_nodes()}

    def persist(self) -> dict[CID, bytes]:
        """Write the unstored nodes to the block store; returns what was written."""
        nodes = self.unstored_nodes()
        blocks = {node.cid: node.block for node in nodes}
        if blocks:
            self.store.blocks.put_many(blocks.items())
            for node in nodes:
                self.store.remember(node)
        return blocks

    # -- diff --------------------------------------------------------------

    def diff(self, other: MST) -> MstDiff:
        """Changes that turn ``self`` into ``other``."""
        return diff(self, other)


def diff(old: MST, new: MST) -> MstDiff:
    """Walk both trees together, skipping identical subtrees without loading them."""
    out = MstDiff()
    if old.root.cid == new.root.cid:
        return out
    # Each side is a stack, in reverse order, of subtrees (Node or CID, with
    # their layer) and leaves (key, value). Leaves are tuples of length 2,
    # subtrees length 3: ("t", sub, layer).
    a: list[tuple] = [("t", old.root, old.root.layer)]  # type: ignore[type-arg]
    b: list[tuple] = [("t", new.root, new.root.layer)]  # type: ignore[type-arg]
    old_seen: dict[CID, bytes] = {}
    new_seen: dict[CID, bytes] = {}

    def expand(stack: list[tuple], store: NodeStore, seen: dict[CID, bytes]) -> None:  # type: ignore[type-arg]
        _, sub, layer = stack.pop()
        node = store.resolve(sub, layer)
        seen[node.cid] = node.block
        below = layer - 1
        subs = node.subs
        keys = node.keys
        vals = node.vals
        i = len(keys)
        if subs[i] is not None:
            stack.append(("t", subs[i], below))
        while i:
            i -= 1
            stack.append((keys[i], vals[i]))
            if subs[i] is not None:
                stack.append(("t", subs[i], below))

    def sub_cid(sub: Node | CID) -> CID:
        return sub if type(sub) is CID else sub.cid  # type: ignore[union-attr, return-value]

    while a or b:
        if not a:
            if len(b[-1]) == 3:
                expand(b, new.store, new_seen)
            else:
                out.created.append(b.pop())
            continue
        if not b:
            if len(a[-1]) == 3:
                expand(a, old.store, old_seen)
            else:
                out.deleted.append(a.pop())
            continue
        ta, tb = a[-1], b[-1]
        a_tree, b_tree = len(ta) == 3, len(tb) == 3
        if a_tree and b_tree:
            if sub_cid(ta[1]) == sub_cid(tb[1]):
                a.pop()
                b.pop()
            elif ta[2] > tb[2]:
                expand(a, old.store, old_seen)
            elif tb[2] > ta[2]:
                expand(b, new.store, new_seen)
            else:
                expand(a, old.store, old_seen)
                expand(b, new.store, new_seen)
        elif a_tree:
            expand(a, old.store, old_seen)
        elif b_tree:
            expand(b, new.store, new_seen)
        else:
            ka, kb = ta[0], tb[0]
            if ka == kb:
                a.pop()
                b.pop()
                if ta[1] != tb[1]:
                    out.updated.append((ka, ta[1], tb[1]))
            elif ka < kb:
                out.deleted.append(a.pop())
            else:
                out.created.append(b.pop())
    out.new_nodes = {cid: data for cid, data in new_seen.items() if cid not in old_seen}
    out.removed_nodes = {cid for cid in old_seen if cid not in new_seen}
    return out


EMPTY_TREE_CID = CID.for_cbor_bytes(_empty(0).block)
