"""Repositories: records in an MST under a signed commit.

:class:`Repo` is an immutable snapshot (a commit and its tree) over a block
store. :meth:`Repo.apply_writes` turns creates, updates and deletes into a
new signed commit and returns a :class:`CommitData`: the ops with their
``prev`` CIDs and the block slice (commit, new MST nodes, the covering nodes
needed to invert each op, new record blocks) that a ``#commit`` firehose
event carries (sync v1.1).

Verification of untrusted data lives here too:

* :func:`verify_commit_event` checks one firehose commit by inverting its ops
  on the partial tree in its blocks and comparing with ``prevData``;
* :func:`verify_repo` / :func:`verify_car` check a whole repository: every
  block hash, the commit signature and DID, the canonical MST shape, valid
  repo paths and record presence. ``verify_car`` streams: it keeps MST nodes
  in memory but only the CIDs of record blocks.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, Any, Literal

from roost import cbor
from roost.blockstore import BlockStore, MemoryBlockStore
from roost.car import CarReader, car_bytes, write_car
from roost.cid import CID, _cidext
from roost.commit import Commit, sign_commit
from roost.crypto import PrivateKey, PublicKey
from roost.errors import (
    CarHeaderError,
    InvalidCommit,
    InvalidMst,
    InvalidRepoPath,
    InvalidSwap,
    InvertError,
    MissingBlock,
    RecordExists,
    RecordNotFound,
    RepoError,
)
from roost.limits import MAX_CAR_BLOCK_BYTES, MAX_RECORD_BYTES
from roost.mst import MST, Node, NodeStore
from roost.syntax import is_valid_nsid, is_valid_record_key
from roost.tid import TidClock

__all__ = [
    "MAX_COMMIT_OPS",
    "CommitData",
    "Repo",
    "RepoOp",
    "RepoSummary",
    "Write",
    "check_repo_path",
    "import_car",
    "ops_from_firehose",
    "split_repo_path",
    "verify_car",
    "verify_commit_event",
    "verify_repo",
]

#: Ops (record writes) in one commit (sync spec, hard limit).
MAX_COMMIT_OPS = 200

Action = Literal["create", "update", "delete"]
_ACTIONS = ("create", "update", "delete")
_MST_NODE_PREFIX = b"\xa2\x61\x65"  # every MST node starts with map(2), "e"


def split_repo_path(path: str) -> tuple[str, str]:
    """``collection/rkey`` -> (collection, rkey), checking both parts."""
    collection, sep, rkey = path.partition("/")
    if not sep or not is_valid_nsid(collection) or not is_valid_record_key(rkey):
        raise InvalidRepoPath(f"not a valid repo path: {path[:300]!r}")
    return collection, rkey


def check_repo_path(path: str) -> None:
    """Raise ``InvalidRepoPath`` unless ``path`` is ``<NSID>/<record key>``."""
    split_repo_path(path)


@dataclass(frozen=True, slots=True)
class Write:
    """One requested change. ``record`` is a data-model value (not JSON form).

    ``swap`` is the record CID the caller expects at the path now (update
    and delete); ``None`` means no check.
    """

    action: Action
    collection: str
    rkey: str
    record: Any = None
    swap: CID | None = None

    @property
    def path(self) -> str:
        return f"{self.collection}/{self.rkey}"

    @classmethod
    def create(cls, collection: str, rkey: str, record: Any) -> Write:
        return cls("create", collection, rkey, record)

    @classmethod
    def update(cls, collection: str, rkey: str, record: Any, swap: CID | None = None) -> Write:
        return cls("update", collection, rkey, record, swap)

    @classmethod
    def delete(cls, collection: str, rkey: str, swap: CID | None = None) -> Write:
        return cls("delete", collection, rkey, None, swap)


@dataclass(frozen=True, slots=True)
class RepoOp:
    """One op of a commit as the firehose carries it.

    create: ``cid`` set, ``prev`` None; update: both set; delete: ``cid``
    None, ``prev`` set.
    """

    action: Action
    path: str
    cid: CID | None
    prev: CID | None = None

    def check_shape(self) -> None:
        if self.action == "create":
            ok = self.cid is not None and self.prev is None
        elif self.action == "update":
            ok = self.cid is not None and self.prev is not None
        elif self.action == "delete":
            ok = self.cid is None and self.prev is not None
        else:
            raise InvertError(f"unknown op action {self.action!r}")
        if not ok:
            raise InvertError(f"{self.action} op for {self.path} has the wrong cid/prev fields")


@dataclass(slots=True)
class CommitData:
    """The result of a commit: what to store and what to announce."""

    commit: Commit
    since: str | None
    prev_data: CID | None
    ops: list[RepoOp]
    #: Blocks for the ``#commit`` event (commit, new and covering MST nodes, new records).
    blocks: dict[CID, bytes]
    old_tree: MST
    new_tree: MST
    #: MST nodes of the old tree the new one no longer uses (None: not yet known).
    removed: set[CID] | None = None
    #: The commit this one replaces (None for a repo's first commit).
    prev_commit: CID | None = None

    def removed_nodes(self) -> set[CID]:
        """MST nodes of the previous tree that the new one no longer uses (exact).

        Known from the edits themselves for commits made by :class:`Repo`;
        otherwise found by diffing the two trees.
        """
        if self.removed is None:
            self.removed = self.old_tree.diff(self.new_tree).removed_nodes
        return self.removed

    @property
    def cid(self) -> CID:
        return self.commit.cid

    @property
    def rev(self) -> str:
        return self.commit.rev

    def car(self) -> bytes:
        """The CAR slice: root = the commit, then the blocks."""
        return car_bytes([self.commit.cid], self.blocks)


class Repo:
    """An immutable snapshot of a repository: a commit and its tree."""

    __slots__ = ("blocks", "commit", "tree")

    def __init__(self, blocks: BlockStore, commit: Commit, tree: MST) -> None:
        self.blocks = blocks
        self.commit = commit
        self.tree = tree

    # -- construction ------------------------------------------------------

    @classmethod
    def create(
        cls,
        blocks: BlockStore,
        did: str,
        key: PrivateKey,
        writes: Iterable[Write] = (),
        *,
        clock: TidClock | None = None,
    ) -> tuple[Repo, CommitData]:
        """A new repo with its first commit (``since`` and ``prevData`` null)."""
        store = NodeStore(blocks)
        empty = MST.empty(store)
        return _commit(blocks, did, None, empty, list(writes), key, clock or TidClock())

    @classmethod
    def create_from_records(
        cls,
        blocks: BlockStore,
        did: str,
        key: PrivateKey,
        records: Iterable[tuple[str, Any]],
        *,
        clock: TidClock | None = None,
        rev: str | None = None,
    ) -> Repo:
        """Bulk-build a repo from (path, record) pairs sorted by path, one commit.

        Linear in the number of records; meant for imports and fixtures. The
        record blocks and every MST node are written to ``blocks``.
        """
        store = NodeStore(blocks)
        record_blocks: list[tuple[CID, bytes]] = []

        def leaves() -> Iterator[tuple[str, CID]]:
            for path, record in records:
                check_repo_path(path)
                data = _encode_record(record, path)
                cid = CID.for_cbor_bytes(data)
                record_blocks.append((cid, data))
                yield path, cid

        tree = MST.build(store, leaves())
        blocks.put_many(record_blocks)
        tree.persist()
        commit = sign_commit(did, tree.cid, rev or (clock or TidClock()).next_str(), key)
        blocks.put(commit.cid, commit.block)
        return cls(blocks, commit, tree)

    @classmethod
    def load(cls, blocks: BlockStore, commit_cid: CID, *, did: str | None = None) -> Repo:
        """The repo whose head is ``commit_cid`` in ``blocks`` (trusted storage)."""
        data = blocks.get(commit_cid)
        if data is None:
            raise MissingBlock(f"commit block {commit_cid} is missing", commit_cid)
        commit = Commit.decode(data, commit_cid)
        commit.check(did=did)
        return cls(blocks, commit, MST.load(NodeStore(blocks), commit.data))

    # -- reading -----------------------------------------------------------

    @property
    def did(self) -> str:
        return self.commit.did

    @property
    def rev(self) -> str:
        return self.commit.rev

    @property
    def cid(self) -> CID:
        return self.commit.cid

    def get_record_cid(self, collection: str, rkey: str) -> CID | None:
        return self.tree.get(f"{collection}/{rkey}")

    def get_record(self, collection: str, rkey: str) -> tuple[CID, Any] | None:
        """(cid, value) of a record, or None."""
        cid = self.get_record_cid(collection, rkey)
        if cid is None:
            return None
        data = self.blocks.get(cid)
        if data is None:
            raise MissingBlock(f"record block {cid} is missing", cid)
        return cid, cbor.decode(data)

    def list_records(
        self,
        collection: str,
        *,
        limit: int = 50,
        cursor: str | None = None,
        reverse: bool = False,
    ) -> list[tuple[str, CID]]:
        """(rkey, cid) pairs of a collection, ``limit`` at most, after ``cursor`` (an rkey)."""
        prefix = collection + "/"
        start, end = prefix, collection + "0"  # "0" sorts right after "/"
        if cursor is not None:
            if reverse:
                end = prefix + cursor
            else:
                start = prefix + cursor + "\x00"
        out = []
        for path, cid in self.tree.items(start, end, reverse=reverse):
            out.append((path[len(prefix) :], cid))
            if len(out) >= limit:
                break
        return out

    def collections(self) -> list[str]:
        """Collections that hold at least one record, sorted."""
        out = []
        start: str | None = None
        while True:
            item = next(self.tree.items(start), None)
            if item is None:
                return out
            collection = item[0].partition("/")[0]
            out.append(collection)
            start = collection + "0"

    # -- writing -----------------------------------------------------------

    def apply_writes(
        self,
        writes: Iterable[Write],
        key: PrivateKey,
        *,
        swap_commit: CID | None = None,
        clock: TidClock | None = None,
    ) -> tuple[Repo, CommitData]:
        """Apply writes as one new signed commit; blocks are written to the store."""
        if swap_commit is not None and swap_commit != self.commit.cid:
            raise InvalidSwap(f"repo head is {self.commit.cid}, not {swap_commit}")
        return _commit(
            self.blocks, self.did, self.commit, self.tree, list(writes), key, clock or TidClock()
        )

    def resign(self, key: PrivateKey, *, clock: TidClock | None = None) -> tuple[Repo, CommitData]:
        """A new commit over the same data (after a signing-key change)."""
        return self.apply_writes((), key, clock=clock)

    # -- export ------------------------------------------------------------

    def blocks_in_order(self) -> Iterator[tuple[CID, bytes]]:
        """Commit, then MST nodes pre-order with each node's records in key order."""
        yield self.commit.cid, self.commit.block
        yield from _tree_blocks(self.tree, self.blocks)

    def export_car(self) -> Iterator[bytes]:
        """The whole repo as CAR chunks, streamed."""
        return write_car([self.commit.cid], self.blocks_in_order())

    def record_proof(self, collection: str, rkey: str) -> bytes:
        """CAR proving the record's presence (or absence): commit, path nodes, record."""
        path = f"{collection}/{rkey}"
        blocks: dict[CID, bytes] = {self.commit.cid: self.commit.block}
        for node in self.tree.path(path):
            blocks[node.cid] = node.block
        cid = self.tree.get(path)
        if cid is not None:
            data = self.blocks.get(cid)
            if data is None:
                raise MissingBlock(f"record block {cid} is missing", cid)
            blocks[cid] = data
        return car_bytes([self.commit.cid], blocks)


def _encode_record(record: Any, path: str) -> bytes:
    if type(record) is not dict:
        raise RepoError(f"record at {path} must be a map")
    data = cbor.encode(record)
    if len(data) > MAX_RECORD_BYTES:
        raise RepoError(f"record at {path} is {len(data)} bytes, over {MAX_RECORD_BYTES}")
    return data


def _commit(
    blocks: BlockStore,
    did: str,
    head: Commit | None,
    tree: MST,
    writes: list[Write],
    key: PrivateKey,
    clock: TidClock,
) -> tuple[Repo, CommitData]:
    if len(writes) > MAX_COMMIT_OPS:
        raise RepoError(f"too many writes in one commit: {len(writes)} > {MAX_COMMIT_OPS}")
    seen: set[str] = set()
    ops: list[RepoOp] = []
    records: dict[CID, bytes] = {}
    new = tree
    for write in writes:
        path = write.path
        if write.action not in _ACTIONS:
            raise RepoError(f"unknown write action {write.action!r}")
        check_repo_path(path)
        if path in seen:
            raise RepoError(f"two writes to {path} in one commit")
        seen.add(path)
        current = new.get(path)
        if write.action == "create":
            if current is not None:
                raise RecordExists(f"a record already exists at {path}")
        elif current is None:
            raise RecordNotFound(f"no record at {path}")
        if write.swap is not None and write.swap != current:
            raise InvalidSwap(f"record at {path} is {current}, not {write.swap}")
        if write.action == "delete":
            new = new.delete(path)
            ops.append(RepoOp("delete", path, None, current))
            continue
        data = _encode_record(write.record, path)
        cid = CID.for_cbor_bytes(data)
        records[cid] = data
        new = new.set(path, cid)
        ops.append(RepoOp(write.action, path, cid, current))

    rev = str(clock.next_after(head.rev if head is not None and head.rev else None))
    commit = sign_commit(did, new.cid, rev, key)
    # Nodes built by this commit's edits: a superset of the new tree's nodes
    # that the old one lacks (an edit may rebuild a node identical to an old one).
    unstored = new.unstored_nodes()
    removed = None if tree.dropped else new.removed_since_settled(unstored)
    to_store = {node.cid: node.block for node in unstored}
    slice_blocks: dict[CID, bytes] = {commit.cid: commit.block, new.cid: new.root.block}
    slice_blocks.update(to_store)
    for op in ops:
        for node in new.covering_nodes(op.path):
            slice_blocks[node.cid] = node.block
    slice_blocks.update(records)

    to_store.update(records)
    to_store[commit.cid] = commit.block
    blocks.put_many(to_store.items())
    for node in unstored:
        new.store.remember(node)
    result = CommitData(
        commit=commit,
        since=head.rev if head is not None else None,
        prev_data=head.data if head is not None else None,
        ops=ops,
        blocks=slice_blocks,
        old_tree=tree,
        new_tree=new,
        removed=removed,
        prev_commit=head.cid if head is not None else None,
    )
    return Repo(blocks, commit, new.settled()), result


def _tree_blocks(tree: MST, blocks: BlockStore) -> Iterator[tuple[CID, bytes]]:
    """MST nodes pre-order, each followed in key order by its records and subtrees.

    Each node's records and not-yet-loaded children are fetched in one batch
    (one query per node on a database-backed store, not one per block).
    """
    store = tree.store
    # stack items: a Node to expand, or a (CID, bytes) record block to emit
    stack: list[Node | tuple[CID, bytes]] = [tree.root]
    while stack:
        item = stack.pop()
        if type(item) is tuple:
            yield item
            continue
        node: Node = item  # type: ignore[assignment]
        yield node.cid, node.block
        layer = node.layer - 1
        subs = node.subs
        wanted = list(node.vals)
        wanted.extend(sub for sub in subs if type(sub) is CID)
        got = blocks.get_many(wanted)
        pending: list[Node | tuple[CID, bytes]] = []
        for i, sub in enumerate(subs):
            if i:
                val = node.vals[i - 1]
                data = got.get(val)
                if data is None:
                    raise MissingBlock(f"record block {val} is missing", val)
                pending.append((val, data))
            if sub is None:
                continue
            if type(sub) is CID:
                data = got.get(sub)
                if data is None:
                    raise MissingBlock(f"MST node {sub} is missing", sub)
                pending.append(store.add(sub, data, layer))
            else:
                pending.append(sub)  # type: ignore[arg-type]
        pending.reverse()
        stack.extend(pending)


# -- verification -------------------------------------------------------------


@dataclass(slots=True)
class RepoSummary:
    """What a full verification learned about a repo."""

    did: str
    rev: str
    commit_cid: CID
    data_cid: CID
    records: int = 0
    collections: Counter[str] = field(default_factory=Counter)
    nodes: int = 0
    missing_records: list[tuple[str, CID]] = field(default_factory=list)
    signature_checked: bool = False


def verify_repo(
    blocks: BlockStore,
    commit_cid: CID,
    *,
    did: str | None = None,
    key: PublicKey | None = None,
    require_records: bool = True,
    record_cids: set[CID] | None = None,
    verify_mst: bool = True,
) -> RepoSummary:
    """Check a whole repo held in ``blocks`` (hashes of MST nodes and commit too).

    ``record_cids``, when given, is the set of record CIDs known to be present
    (their blocks already hash-checked elsewhere); otherwise ``blocks`` is asked.
    Raises a ``RepoError`` subclass naming the first problem.
    """
    data = blocks.get(commit_cid)
    if data is None:
        raise MissingBlock(f"commit block {commit_cid} is missing", commit_cid)
    commit = Commit.decode(data, commit_cid)
    commit.check(key, did=did)
    summary = RepoSummary(commit.did, commit.rev, commit_cid, commit.data)
    summary.signature_checked = key is not None
    tree = MST.load(NodeStore(blocks, verify=verify_mst), commit.data)
    root = tree.root
    if not root.keys and root.subs[0] is not None:
        raise InvalidMst("MST root is a keyless node")
    resolve = tree.store.resolve
    collections = summary.collections
    valid_collections: set[str] = set()
    present = record_cids.__contains__ if record_cids is not None else blocks.has
    # Depth-first with the key range each subtree must fall in: a node's keys
    # are sorted (checked on decode), so bounds give the global order.
    stack: list[tuple[Node, str | None, str | None]] = [(root, None, None)]
    nodes = 0
    while stack:
        node, low, high = stack.pop()
        nodes += 1
        keys = node.keys
        if keys:
            if (low is not None and keys[0] <= low) or (high is not None and keys[-1] >= high):
                raise InvalidMst("MST keys out of order across nodes")
        elif node is not root and node.subs[0] is None:
            raise InvalidMst("MST has an empty non-root node (bottom not pruned)")
        for key_, val in zip(keys, node.vals):
            collection, sep, rkey = key_.partition("/")
            if collection not in valid_collections:
                if not is_valid_nsid(collection):
                    raise InvalidRepoPath(f"not a valid repo path: {key_[:300]!r}")
                valid_collections.add(collection)
            if not sep or not is_valid_record_key(rkey):
                raise InvalidRepoPath(f"not a valid repo path: {key_[:300]!r}")
            collections[collection] += 1
            if not present(val):
                if require_records:
                    raise MissingBlock(f"record block {val} for {key_} is missing", val)
                summary.missing_records.append((key_, val))
        layer = node.layer - 1
        subs = node.subs
        for i, sub in enumerate(subs):
            if sub is not None:
                stack.append(
                    (resolve(sub, layer), keys[i - 1] if i else low, keys[i] if i < len(keys) else high)
                )
    summary.nodes = nodes
    summary.records = sum(collections.values())
    return summary


def verify_car(
    source: bytes | IO[bytes],
    *,
    did: str | None = None,
    key: PublicKey | None = None,
    require_records: bool = True,
    verify_mst: bool = True,
) -> RepoSummary:
    """Verify a repo CAR, streaming: MST nodes are kept, record blocks only counted.

    Checks every block hash, exactly one root (the commit), the commit's DID
    and signature (when given), the canonical MST and record presence.
    """
    reader = CarReader(source)
    if len(reader.roots) != 1:
        raise CarHeaderError(f"repo CAR must have exactly one root, has {len(reader.roots)}")
    root = reader.roots[0]
    kept = MemoryBlockStore()
    others: set[CID] = set()
    for cid, data in reader:
        if cid == root or data[:3] == _MST_NODE_PREFIX:
            kept.put(cid, data)
        else:
            others.add(cid)
    others.update(kept)
    return verify_repo(
        kept,
        root,
        did=did,
        key=key,
        require_records=require_records,
        record_cids=others,
        verify_mst=verify_mst,
    )


#: Blocks written to the store per batch while importing a CAR.
IMPORT_BATCH_BLOCKS = 2_000


def import_car(
    blocks: BlockStore,
    source: bytes | IO[bytes],
    *,
    did: str | None = None,
    key: PublicKey | None = None,
    require_records: bool = True,
) -> tuple[Repo, RepoSummary]:
    """Stream a repo CAR into ``blocks`` and verify it there; return the repo.

    Blocks are hash-checked as they stream in and written in batches, so
    memory stays bounded by the batch size, not the repo size. On failure
    the blocks already written stay in the store (write into an overlay or a
    transaction to discard them).
    """
    reader = CarReader(source)
    if len(reader.roots) != 1:
        raise CarHeaderError(f"repo CAR must have exactly one root, has {len(reader.roots)}")
    batch: list[tuple[CID, bytes]] = []
    for item in reader:
        batch.append(item)
        if len(batch) >= IMPORT_BATCH_BLOCKS:
            blocks.put_many(batch)
            batch = []
    if batch:
        blocks.put_many(batch)
    root = reader.roots[0]
    summary = verify_repo(blocks, root, did=did, key=key, require_records=require_records)
    return Repo.load(blocks, root), summary


#: The C extension's reader for CARs of the usual shape (None without it): the
#: same blocks as :class:`CarReader`, which it leaves anything unusual to.
_car_blocks = getattr(_cidext, "car_blocks", None)


def verify_commit_event(
    *,
    repo: str,
    commit_cid: CID,
    rev: str,
    blocks: bytes,
    ops: Sequence[RepoOp],
    prev_data: CID | None,
    key: PublicKey | None,
) -> Commit:
    """Sync v1.1: check a ``#commit`` event on its own and return its commit.

    Structure, DID, rev and signature; every create/update op present in the
    new tree with its record block; then the ops inverted on the partial tree
    must give ``prev_data`` (skipped when ``prev_data`` is None: first commit).
    Raises ``InvalidCommit``/``BadCommitSignature``/``WrongDid``,
    ``MissingBlock``, ``InvalidMst`` or ``InvertError`` naming the failed check.
    """
    fast = _car_blocks(blocks, MAX_CAR_BLOCK_BYTES) if _car_blocks is not None else None
    if fast is not None:  # the common, well-formed slice, read and hash-checked in C
        root, found = fast
        if root != commit_cid:
            raise InvalidCommit("CAR root is not the event's commit CID")
        store = MemoryBlockStore(found)
    else:
        reader = CarReader(blocks)
        if not reader.roots or reader.roots[0] != commit_cid:
            raise InvalidCommit("CAR root is not the event's commit CID")
        store = MemoryBlockStore(reader)
    data = store.get(commit_cid)
    if data is None:
        raise MissingBlock("commit block missing from the event", commit_cid)
    commit = Commit.decode(data, commit_cid)
    commit.check(key, did=repo)
    if commit.rev != rev:
        raise InvalidCommit(f"event rev {rev} does not match commit rev {commit.rev}")
    if not ops:
        if prev_data is not None and commit.data != prev_data:
            raise InvertError("commit without ops changes the data CID")
        return commit
    tree = MST.load(NodeStore(store, verify=True), commit.data)
    paths: set[str] = set()
    for op in ops:
        op.check_shape()
        check_repo_path(op.path)
        if op.path in paths:
            raise InvertError(f"two ops for {op.path}")
        paths.add(op.path)
        if op.cid is not None:
            if tree.get(op.path) != op.cid:
                raise InvertError(f"{op.action} op for {op.path}: tree does not hold {op.cid}")
            if not store.has(op.cid):
                raise MissingBlock(f"record block {op.cid} for {op.path} is missing", op.cid)
        elif tree.get(op.path) is not None:
            raise InvertError(f"delete op for {op.path}: the new tree still holds it")
    if prev_data is None:
        return commit
    inverted = tree
    for op in sorted(ops, key=lambda o: (o.action != "delete", o.path)):
        if op.action == "create":
            inverted, old = inverted.delete_with_old(op.path)
            if old != op.cid:
                raise InvertError(f"inverting create of {op.path} found {old}")
        else:
            inverted, old = inverted.set_with_old(op.path, op.prev)  # type: ignore[arg-type]
            expected = op.cid if op.action == "update" else None
            if old != expected:
                raise InvertError(f"inverting {op.action} of {op.path} found {old}")
    if inverted.cid != prev_data:
        raise InvertError(
            f"ops do not invert to prevData: got {inverted.cid}, expected {prev_data}"
        )
    return commit


def ops_from_firehose(ops: Iterable[Mapping[str, Any]]) -> list[RepoOp]:
    """RepoOps from the ``ops`` array of a decoded ``#commit`` event."""
    out = []
    for op in ops:
        if type(op) is not dict:
            raise InvertError("op must be a map")
        action = op.get("action")
        path = op.get("path")
        cid = op.get("cid")
        prev = op.get("prev")
        if action not in _ACTIONS or type(path) is not str:
            raise InvertError("op needs an action and a path")
        if (cid is not None and type(cid) is not CID) or (prev is not None and type(prev) is not CID):
            raise InvertError(f"op for {path}: cid and prev must be links")
        out.append(RepoOp(action, path, cid, prev))
    return out

