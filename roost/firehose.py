"""Firehose client: typed events from any ``subscribeRepos`` endpoint, without losing any.

``subscribe(url, ...)`` returns a :class:`Subscription`, an async iterator
of typed events (and an async context manager)::

    async with subscribe("https://relay.example", cursor_store=FileCursorStore("cursor"),
                         collections=["app.bsky.feed.*"]) as sub:
        async for event in sub:
            if isinstance(event, Commit):
                for op in event.ops:
                    ...                # op.record is the decoded record
            if event.seq is not None:  # every event but Info has one
                sub.ack(event.seq)     # done with it: the cursor may move past it

Cursors (``spec/event-stream.md`` section 4). The stored cursor only ever
moves to a seq the caller has acknowledged with :meth:`Subscription.ack`
(acks are cumulative: everything up to that seq is done). Events the filters
drop are acknowledged internally, but the cursor passes them only once every
delivered event before them is acknowledged. The store is written at most
every ``save_interval`` seconds (0: before each new event is handed out) and
on :meth:`~Subscription.close`. Delivery is at-least-once: after a crash the
stream resumes after the stored cursor, so only events that were not yet
acknowledged *and saved* come again; ``seq`` makes processing idempotent.

Reconnects. A dropped connection is re-opened after an exponential backoff
with full jitter (:class:`Backoff`), reset once a connection has stayed up
for ``healthy_after`` seconds. Within one subscription the stream resumes
after the last event *received* (those are already in the caller's hands),
and any seq at or below it is dropped, so a reconnect neither loses nor
repeats an event (one started live that drops before its first event has
no seq to resume from: it resumes live). Server errors: ``ConsumerTooSlow``
reconnects from the cursor (counted in :attr:`~Subscription.too_slow`);
``FutureCursor`` is raised (the server's numbering was reset: an operator
must decide);
``#info OutdatedCursor`` is yielded as :class:`Info`; any other error frame
raises :class:`StreamError`. HTTP 429 and 5xx on connect are retried
(honouring ``Retry-After``), other refusals raise :class:`ConnectFailed`.
Bad frames (bad CBOR, text frames, oversized) drop the connection, as the
spec requires, and are retried with backoff.

Filters (``collections``: NSIDs or prefix wildcards such as
``app.bsky.feed.*``; ``dids``) are applied to the op paths and DIDs in the
frame before any record block is read; a commit is delivered with only its
matching ops, and not at all when none match. ``#identity``, ``#account``
and ``#sync`` events are filtered by DID only.

Verification (``verify=True``): each delivered ``#commit`` is checked by
:func:`roost.repo.verify_commit_event` (signature against the DID's current
``#atproto`` key, re-resolved once when the signature fails, then the sync
v1.1 inversion of *all* its ops to ``prevData``); each ``#sync`` by its
commit's signature; an ``#identity`` event drops the cached key. A failed
check, like a malformed event, is never passed on as the event: it is
yielded as :class:`Invalid` (or raised as :class:`InvalidEvent` with
``on_invalid="raise"``).

Lag: :attr:`~Subscription.lag_seconds` is the age of the last received
event (its ``time`` against the local clock). How many seqs the server's
head is ahead is not observable from the stream; :attr:`~Subscription.lag_seq`
is the local backlog, events received but not yet acknowledged. Both go to
the log every ``status_interval`` seconds.

The decoding path is :class:`FirehoseDecoder`, usable without a socket
(benchmarks, recorded streams): :meth:`~FirehoseDecoder.read` parses a frame
and applies the filters, :meth:`~FirehoseDecoder.build` decodes the records
of what is left, :meth:`~FirehoseDecoder.decode` does both. A
:class:`Subscription` is iterated by one task at a time; :meth:`~Subscription.ack`
and :meth:`~Subscription.close` may come from anywhere on its event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import time
import urllib.parse
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from typing import Any, Final, Literal, Protocol, Self, TypeVar

import websockets
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from roost import cbor
from roost.car import CarReader, read_car
from roost.cid import CID
from roost.commit import Commit as SignedCommit
from roost.crypto import PublicKey
from roost.cursors import (
    CursorStore,
    FileCursorStore,
    MemoryCursorStore,
    SqliteCursorStore,
)
from roost.errors import (
    BadCommitSignature,
    BlockHashMismatch,
    CarError,
    CarTruncated,
    CborDecodeError,
    InvalidCommit,
    MissingBlock,
    RoostError,
    UnsafeUrl,
)
from roost.frames import MAX_FRAME_BYTES, OP_ERROR, OP_MESSAGE, decode_frame
from roost.identity import PLC_DIRECTORY_URL, IdentityDirectory, IdentityResolver
from roost.limits import MAX_NSID_LENGTH
from roost.netguard import (
    USER_AGENT,
    OutboundPolicy,
    address_problem,
    check_url,
    system_resolve_host,
)
from roost.repo import RepoOp as ProtocolOp
from roost.repo import ops_from_firehose, verify_commit_event
from roost.sequencer import SUBSCRIBE_REPOS, ConsumerTooSlow, FutureCursor
from roost.syntax import is_valid_did, is_valid_nsid

__all__ = [
    "BACKOFF_BASE_S",
    "BACKOFF_CAP_S",
    "HEALTHY_AFTER_S",
    "MAX_FILTER_COLLECTIONS",
    "MAX_FILTER_DIDS",
    "MAX_FRAME_BYTES",
    "SAVE_INTERVAL_S",
    "STATUS_INTERVAL_S",
    "Account",
    "Backoff",
    "CollectionFilter",
    "Commit",
    "ConnectFailed",
    "ConsumerTooSlow",
    "CursorStore",
    "Event",
    "FileCursorStore",
    "FirehoseDecoder",
    "FirehoseError",
    "FutureCursor",
    "Identity",
    "Info",
    "Invalid",
    "InvalidEvent",
    "KeyResolver",
    "MemoryCursorStore",
    "RawEvent",
    "RepoOp",
    "SqliteCursorStore",
    "StreamError",
    "Subscription",
    "Sync",
    "Verifier",
    "did_filter",
    "endpoint_url",
    "event_time_us",
    "subscribe",
]

logger = logging.getLogger(__name__)

#: First reconnect delay bound, seconds (each failure doubles it, up to the cap).
BACKOFF_BASE_S: Final = 0.5
#: Largest reconnect delay bound, seconds.
BACKOFF_CAP_S: Final = 60.0
#: A connection that stayed up this long resets the backoff.
HEALTHY_AFTER_S: Final = 30.0
#: The cursor store is written at most this often (plus on close).
SAVE_INTERVAL_S: Final = 1.0
#: A status line goes to the log this often.
STATUS_INTERVAL_S: Final = 60.0
#: Deadline for the WebSocket handshake.
OPEN_TIMEOUT_S: Final = 10.0
#: Keepalive: ping after this much silence; drop the connection when no pong
#: comes within the timeout (indigo pings every 30 s).
PING_INTERVAL_S: Final = 30.0
PING_TIMEOUT_S: Final = 30.0
#: How long closing a connection may take.
CLOSE_TIMEOUT_S: Final = 5.0
#: Largest ``Retry-After`` we honour on a 429, seconds.
MAX_RETRY_AFTER_S: Final = 300.0
#: Filter sizes (Jetstream's limits: 100 collections, 10,000 DIDs).
MAX_FILTER_COLLECTIONS: Final = 100
MAX_FILTER_DIDS: Final = 10_000

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MICROSECOND: Final = datetime.resolution
#: Collection names whose filter verdict is remembered (a stream uses a few hundred).
_MATCH_CACHE_ENTRIES: Final = 10_000


# -- events ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RepoOp:
    """One record operation of a commit.

    ``cid``: the new record (create/update); ``prev``: the record it
    replaces (update/delete; absent on creates). ``record``: the decoded
    record for creates and updates when record decoding is on.
    """

    action: str
    collection: str
    rkey: str
    cid: CID | None
    prev: CID | None
    record: dict[str, Any] | None

    @property
    def path(self) -> str:
        return f"{self.collection}/{self.rkey}"


@dataclass(frozen=True, slots=True)
class Commit:
    """``#commit``: a new signed revision of ``did``'s repo (``ops``: those passing the filters)."""

    seq: int
    did: str
    rev: str
    since: str | None
    commit: CID
    prev_data: CID | None
    time: str
    ops: tuple[RepoOp, ...]
    blocks: bytes = field(repr=False)
    too_big: bool = False


@dataclass(frozen=True, slots=True)
class Identity:
    """``#identity``: refresh cached identity data for ``did``."""

    seq: int
    did: str
    time: str
    handle: str | None


@dataclass(frozen=True, slots=True)
class Account:
    """``#account``: hosting status of ``did`` at the emitting service."""

    seq: int
    did: str
    time: str
    active: bool
    status: str | None


@dataclass(frozen=True, slots=True)
class Sync:
    """``#sync``: ``did``'s current commit (``blocks``: a CAR holding just that commit)."""

    seq: int
    did: str
    rev: str
    time: str
    blocks: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class Info:
    """``#info``: an out-of-band notice, e.g. ``OutdatedCursor`` (no seq)."""

    name: str
    message: str | None

    seq = None  # Info is the one event without a seq


@dataclass(frozen=True, slots=True)
class Invalid:
    """An event that failed a check: malformed, unverifiable or forged.

    ``type`` is its frame type (``"#commit"``...); ``error`` says what failed.
    It still occupies ``seq``: acknowledge it like any other event.
    """

    seq: int
    did: str | None
    type: str
    error: RoostError

    @property
    def reason(self) -> str:
        return f"{type(self.error).__name__}: {self.error.message}"


Event = Commit | Identity | Account | Sync | Info | Invalid

_T = TypeVar("_T")


def _maker(cls: type[_T]) -> Callable[..., _T]:
    """A positional constructor for a frozen slots dataclass, for the decode hot path.

    The generated ``__init__`` sets each field through ``object.__setattr__``
    (about 0.3 us a field); this sets the slots directly, about three times
    faster, with the same result as ``cls(*values)``.
    """
    names = [f.name for f in fields(cls)]  # type: ignore[arg-type]
    namespace: dict[str, Any] = {"new": object.__new__, "cls": cls}
    lines = [f"def make({', '.join(names)}):", "    obj = new(cls)"]
    for i, name in enumerate(names):
        namespace[f"set{i}"] = getattr(cls, name).__set__
        lines.append(f"    set{i}(obj, {name})")
    lines.append("    return obj")
    exec("\n".join(lines), namespace)  # noqa: S102 - code built from field names only
    return namespace["make"]  # type: ignore[no-any-return]


_new_op = _maker(RepoOp)
_new_commit = _maker(Commit)


# -- errors ---------------------------------------------------------------------------------


class FirehoseError(RoostError):
    """A firehose subscription cannot go on."""


class StreamError(FirehoseError):
    """The server sent an error frame we cannot recover from; ``error`` is its name."""

    def __init__(self, error: str, message: str = "") -> None:
        super().__init__(message or error)
        self.error = error


class ConnectFailed(FirehoseError):
    """The endpoint refused the subscription in a way retrying will not fix."""


class InvalidEvent(FirehoseError):
    """Raised instead of yielding :class:`Invalid` when ``on_invalid="raise"``."""

    def __init__(self, event: Invalid) -> None:
        super().__init__(f"invalid {event.type} seq={event.seq} did={event.did}: {event.reason}")
        self.event = event


# -- helpers ----------------------------------------------------------------------------------


def endpoint_url(url: str, cursor: int | None = None) -> str:
    """The ``subscribeRepos`` WebSocket URL for ``url``, with ``cursor`` set (or removed).

    ``url`` is a base URL (``https://host``, ``ws://host:port``) or a full
    ``.../xrpc/com.atproto.sync.subscribeRepos`` URL in any of the four schemes.
    """
    parts = urllib.parse.urlsplit(url)
    scheme = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}.get(parts.scheme.lower())
    if scheme is None or not parts.hostname:
        raise ValueError(f"not a firehose URL (http, https, ws or wss with a host): {url!r}")
    path = parts.path.rstrip("/")
    if not path.endswith("/xrpc/" + SUBSCRIBE_REPOS):
        path = path + "/xrpc/" + SUBSCRIBE_REPOS
    query = [(k, v) for k, v in urllib.parse.parse_qsl(parts.query) if k != "cursor"]
    if cursor is not None:
        query.append(("cursor", str(cursor)))
    return urllib.parse.urlunsplit(
        (scheme, parts.netloc, path, urllib.parse.urlencode(query), "")
    )


def event_time_us(text: object) -> int | None:
    """Microseconds since the epoch of an event ``time`` string (UTC if no zone); None if bad."""
    if type(text) is not str:
        return None
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return (when - _EPOCH) // _MICROSECOND


_NSID_STEM: Final = re.compile(r"[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*")


class CollectionFilter:
    """Which collections are wanted: exact NSIDs and ``prefix.*`` wildcards.

    ``app.bsky.feed.*`` matches every NSID under ``app.bsky.feed.``.
    Raises ``ValueError`` for a pattern that is neither.
    """

    __slots__ = ("exact", "prefixes", "_seen")

    def __init__(self, patterns: Iterable[str]) -> None:
        exact: set[str] = set()
        prefixes: set[str] = set()
        for pattern in patterns:
            if type(pattern) is not str:
                raise ValueError(f"a collection pattern must be a string, not {pattern!r}")
            if pattern.endswith(".*"):
                stem = pattern[:-2]
                # the stem must look like the start of an NSID: dot-separated labels
                if len(stem) > MAX_NSID_LENGTH or not _NSID_STEM.fullmatch(stem):
                    raise ValueError(f"not a collection prefix: {pattern!r}")
                prefixes.add(stem + ".")
            elif is_valid_nsid(pattern):
                exact.add(pattern)
            else:
                raise ValueError(f"not an NSID or NSID prefix wildcard: {pattern!r}")
        if len(exact) + len(prefixes) > MAX_FILTER_COLLECTIONS:
            raise ValueError(f"at most {MAX_FILTER_COLLECTIONS} collection patterns")
        self.exact = frozenset(exact)
        self.prefixes = tuple(sorted(prefixes))
        self._seen: dict[str, bool] = {}

    def __call__(self, collection: str) -> bool:
        hit = self._seen.get(collection)
        if hit is None:
            hit = collection in self.exact or collection.startswith(self.prefixes)
            if len(self._seen) < _MATCH_CACHE_ENTRIES:
                self._seen[collection] = hit
        return hit

    def __repr__(self) -> str:
        patterns = sorted(self.exact) + [p + "*" for p in self.prefixes]
        return f"CollectionFilter({patterns!r})"


def did_filter(dids: Iterable[str]) -> frozenset[str]:
    """The wanted DIDs as a set; ``ValueError`` for a malformed one or too many."""
    wanted = frozenset(dids)
    for did in wanted:
        if not is_valid_did(did):
            raise ValueError(f"not a DID: {did!r}")
    if len(wanted) > MAX_FILTER_DIDS:
        raise ValueError(f"at most {MAX_FILTER_DIDS} DIDs")
    return wanted


# -- decoding -----------------------------------------------------------------------------------


class RawEvent:
    """A parsed frame before its records are decoded (see :meth:`FirehoseDecoder.read`).

    ``wanted``: whether it passes the filters; ``ops``: for a commit, the
    matching ops as ``(action, collection, rkey, cid, prev)``; ``problem``:
    why the message is malformed (then it is delivered as :class:`Invalid`).
    """

    __slots__ = ("body", "did", "ops", "problem", "seq", "time", "type", "wanted")

    def __init__(
        self,
        type: str,
        seq: int,
        did: str | None,
        time: str | None,
        body: dict[str, Any],
        wanted: bool,
        ops: list[tuple[str, str, str, CID | None, CID | None]] | None = None,
        problem: RoostError | None = None,
    ) -> None:
        self.type = type
        self.seq = seq
        self.did = did
        self.time = time
        self.body = body
        self.wanted = wanted
        self.ops = ops
        self.problem = problem


_KNOWN: Final = frozenset(("#commit", "#identity", "#account", "#sync"))
_ACTIONS: Final = frozenset(("create", "update", "delete"))


def _malformed(message: str) -> RoostError:
    return RoostError(f"malformed event: {message}")


class FirehoseDecoder:
    """Frames to typed events, filters first (no socket: usable on recorded streams).

    ``collections`` / ``dids``: the filters (None: everything).
    ``decode_records``: decode the record blocks of matching creates and
    updates (off: ``RepoOp.record`` stays None and the CAR is not read).
    """

    def __init__(
        self,
        *,
        collections: Iterable[str] | None = None,
        dids: Iterable[str] | None = None,
        decode_records: bool = True,
    ) -> None:
        self.collections = CollectionFilter(collections) if collections is not None else None
        self.dids = did_filter(dids) if dids is not None else None
        self.decode_records = decode_records

    def decode(self, frame: bytes) -> Event | None:
        """One frame to an event; None for frames to skip (filtered or unknown).

        Error frames raise (:class:`FutureCursor`, :class:`ConsumerTooSlow`,
        :class:`StreamError`); bad framing raises ``CborDecodeError``.
        """
        raw = self.read(frame)
        if raw is None or isinstance(raw, Info):
            return raw
        if not raw.wanted:
            return None
        return self.build(raw)

    def read(self, frame: bytes) -> RawEvent | Info | None:
        """Parse ``frame`` and apply the filters; records are not touched.

        Returns None for unknown ``op``s and for unknown types without a seq.
        """
        # every body field used below is type-checked, so no separate float scan
        header, body = decode_frame(frame, check_floats=False)
        op = header["op"]
        if op == OP_ERROR:
            raise _error_from_frame(body)
        if op != OP_MESSAGE:
            return None
        t = header["t"]
        if t == "#info":
            name = body.get("name")
            message = body.get("message")
            return Info(
                name if type(name) is str else "",
                message if type(message) is str else None,
            )
        seq = body.get("seq")
        if type(seq) is not int or seq < 0:
            if t in _KNOWN:
                raise CborDecodeError(f"{t} event without an integer seq")
            return None
        if t not in _KNOWN:
            # deprecated (#handle, #migrate, #tombstone) or future types: skip, but
            # the cursor may move past their seq
            return RawEvent(t, seq, None, None, body, False)
        did = body.get("repo" if t == "#commit" else "did")
        time_ = body.get("time")
        if type(did) is not str or type(time_) is not str:
            return RawEvent(t, seq, None, None, body, True, problem=_malformed("no did or time"))
        dids = self.dids
        if dids is not None and did not in dids:
            return RawEvent(t, seq, did, time_, body, False)
        if t != "#commit":
            return RawEvent(t, seq, did, time_, body, True)
        ops = body.get("ops")
        if type(ops) is not list:
            return RawEvent(t, seq, did, time_, body, True, problem=_malformed("ops is not a list"))
        wanted = self.collections
        matching: list[tuple[str, str, str, CID | None, CID | None]] = []
        for item in ops:
            if type(item) is not dict:
                return RawEvent(t, seq, did, time_, body, True, problem=_malformed("op is not a map"))
            path = item.get("path")
            action = item.get("action")
            if type(path) is not str or action not in _ACTIONS:
                problem = _malformed("op without a path or a known action")
                return RawEvent(t, seq, did, time_, body, True, problem=problem)
            collection, _, rkey = path.partition("/")
            if not collection or not rkey:
                problem = _malformed(f"op path {path[:100]!r} is not collection/rkey")
                return RawEvent(t, seq, did, time_, body, True, problem=problem)
            if wanted is not None and not wanted(collection):
                continue
            cid = item.get("cid")
            prev = item.get("prev")
            # creates and updates name the new record, deletes do not (prev is
            # optional: commits from before sync v1.1 lack it)
            if (
                (cid is None) != (action == "delete")
                or (cid is not None and type(cid) is not CID)
                or (prev is not None and type(prev) is not CID)
            ):
                problem = _malformed(f"{action} op {path[:100]!r} has the wrong cid/prev")
                return RawEvent(t, seq, did, time_, body, True, problem=problem)
            matching.append((action, collection, rkey, cid, prev))
        if wanted is not None and not matching:
            return RawEvent(t, seq, did, time_, body, False)
        return RawEvent(t, seq, did, time_, body, True, matching)

    def build(self, raw: RawEvent) -> Commit | Identity | Account | Sync | Invalid:
        """The typed event of a wanted :class:`RawEvent`, records decoded.

        Anything malformed (field types, a missing or corrupt record block)
        comes back as :class:`Invalid`.
        """
        if raw.problem is None:
            try:
                return self._build(raw)
            except RoostError as exc:
                raw.problem = exc
        assert raw.problem is not None
        return Invalid(raw.seq, raw.did, raw.type, raw.problem)

    def _build(self, raw: RawEvent) -> Commit | Identity | Account | Sync:
        body = raw.body
        did = raw.did
        time_ = raw.time
        assert did is not None and time_ is not None
        t = raw.type
        if t == "#commit":
            return self._commit(raw, body, did, time_)
        if t == "#identity":
            handle = body.get("handle")
            if handle is not None and type(handle) is not str:
                raise _malformed("handle is not a string")
            return Identity(raw.seq, did, time_, handle)
        if t == "#account":
            active = body.get("active")
            status = body.get("status")
            if type(active) is not bool or (status is not None and type(status) is not str):
                raise _malformed("account needs a boolean active and a string status")
            return Account(raw.seq, did, time_, active, status)
        rev = body.get("rev")
        blocks = body.get("blocks")
        if type(rev) is not str or type(blocks) is not bytes:
            raise _malformed("sync needs a rev and blocks")
        return Sync(raw.seq, did, rev, time_, blocks)

    def _commit(self, raw: RawEvent, body: dict[str, Any], did: str, time_: str) -> Commit:
        rev = body.get("rev")
        since = body.get("since")
        commit = body.get("commit")
        prev_data = body.get("prevData")
        blocks = body.get("blocks")
        too_big = body.get("tooBig", False)
        if (
            type(rev) is not str
            or type(commit) is not CID
            or type(blocks) is not bytes
            or (since is not None and type(since) is not str)
            or (prev_data is not None and type(prev_data) is not CID)
            or type(too_big) is not bool
        ):
            raise _malformed("commit fields have the wrong types")
        matching = raw.ops or ()
        ops: list[RepoOp] = []
        store: dict[CID, bytes] | None = None
        decode = self.decode_records and not too_big
        for action, collection, rkey, cid, prev in matching:
            record = None
            if decode and cid is not None:
                if store is None:
                    # hashes are checked below, only for the blocks we use
                    store = _blocks_of(blocks, [m[3] for m in matching if m[3] is not None])
                data = store.get(cid)
                if data is None:
                    raise MissingBlock(f"record block {cid} for {collection}/{rkey} is missing", cid)
                if not cid.matches(data):
                    raise BlockHashMismatch(f"record block for {collection}/{rkey} is not {cid}")
                record = cbor.decode(data)
                if type(record) is not dict:
                    raise _malformed(f"record {collection}/{rkey} is not a map")
            ops.append(_new_op(action, collection, rkey, cid, prev, record))
        return _new_commit(
            raw.seq, did, rev, since, commit, prev_data, time_, tuple(ops), blocks, too_big
        )


def _blocks_of(car: bytes, wanted: list[CID]) -> dict[CID, bytes]:
    """The blocks of the ``wanted`` CIDs in ``car``; missing ones are left out.

    A commit's CAR holds its commit block and MST nodes besides the records,
    and a consumer wants only the records of the ops it kept. Each wanted
    CID's bytes are looked for directly: where they start a section (behind
    its one- or two-byte length) and the block hashes to that CID, that is
    the block, whatever else the CAR holds (a record is trusted for its hash
    alone). CIDs not found so are looked for by walking the sections. The
    header is checked as :class:`~roost.car.CarReader` checks it (at a glance
    when it is the usual one: one dag-cbor root, version 1).
    """
    if not (car.startswith(_USUAL_CAR_HEADER) and car.startswith(_USUAL_CAR_HEADER_END, 50)):
        CarReader(car, verify_hashes=False)  # the header: raises if it is malformed
    found: dict[CID, bytes] = {}
    rest: list[CID] = []
    for cid in wanted:
        block = _find_block(car, cid)
        if block is None:
            rest.append(cid)
        else:
            found[cid] = block
    if rest:
        found.update(_walk_blocks(car, rest))
    return found


# A CAR header in canonical DAG-CBOR: {"roots": [<dag-cbor sha2-256 CID link>], "version": 1}
# (58 bytes after its length), the 32 digest bytes between the two parts.
_USUAL_CAR_HEADER: Final = b"\x3a\xa2\x65roots\x81\xd8\x2a\x58\x25\x00\x01\x71\x12\x20"
_USUAL_CAR_HEADER_END: Final = b"\x67version\x01"


def _find_block(car: bytes, cid: CID) -> bytes | None:
    """The block of ``cid`` located by a search for its bytes (see :func:`_blocks_of`)."""
    key = cid.bytes
    size = len(key)
    at = car.find(key)
    while at > 0:
        # a section is <length varint><cid><block>: try a one- and a two-byte length
        last = car[at - 1]
        if last < 0x80:
            if last >= size and at + last <= len(car):
                block = car[at + size : at - 1 + last + 1]
                if cid.matches(block):
                    return block
            if at > 1 and car[at - 2] >= 0x80 and last:
                length = (car[at - 2] & 0x7F) | (last << 7)
                if length >= size and at + length <= len(car):
                    block = car[at + size : at + length]
                    if cid.matches(block):
                        return block
        at = car.find(key, at + 1)
    return None


def _walk_blocks(car: bytes, wanted: list[CID]) -> dict[CID, bytes]:
    """The blocks of ``wanted`` by walking the sections (hashes not checked). CIDs are
    self-delimiting, so a section whose CID starts with a wanted CID's bytes is its."""
    header, pos = _uvarint(car, 0)
    pos += header
    targets = {cid.bytes: cid for cid in wanted}
    found: dict[CID, bytes] = {}
    end = len(car)
    while pos < end and len(found) < len(targets):
        size, start = _uvarint(car, pos)
        stop = start + size
        if size == 0 or stop > end:
            raise CarTruncated(f"block section at offset {pos} is empty or cut short")
        for key, cid in targets.items():
            if cid not in found and car.startswith(key, start):
                found[cid] = car[start + len(key) : stop]
                break
        pos = stop
    return found


def _uvarint(buf: bytes, pos: int) -> tuple[int, int]:
    """The minimal unsigned varint at ``buf[pos:]`` and the position after it."""
    value = shift = 0
    end = len(buf)
    while pos < end and shift <= 56:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            if byte == 0 and shift:
                break
            return value, pos
        shift += 7
    raise CarError(f"bad varint in CAR at offset {pos}")


def _error_from_frame(body: dict[str, Any]) -> RoostError:
    name = body.get("error")
    message = body.get("message")
    name = name if type(name) is str else "Unknown"
    message = message if type(message) is str else ""
    if name == "FutureCursor":
        return FutureCursor(message or "Cursor in the future.")
    if name == "ConsumerTooSlow":
        return ConsumerTooSlow(message or "Stream consumer too slow")
    return StreamError(name, message)


# -- verification --------------------------------------------------------------------------------


class KeyResolver(Protocol):
    """What verification needs from identity: the DID's current signing key.

    :class:`roost.identity.IdentityDirectory` is one.
    """

    async def resolve_key(self, did: str, *, force_refresh: bool = False) -> PublicKey: ...


class Verifier:
    """Checks ``#commit`` and ``#sync`` events against the DID's key (see the module doc)."""

    def __init__(self, keys: KeyResolver) -> None:
        self.keys = keys
        self.checked = 0
        self.failed = 0

    async def check(self, raw: RawEvent) -> RoostError | None:
        """None if ``raw`` verifies (or is not a commit or sync), else what failed."""
        t = raw.type
        if t == "#identity" and raw.did is not None:
            purge = getattr(self.keys, "purge", None)
            if purge is not None:
                purge(raw.did)
            return None
        if t not in ("#commit", "#sync") or raw.problem is not None:
            return None
        assert raw.did is not None
        self.checked += 1
        try:
            await self._check(raw, raw.did)
        except RoostError as exc:
            self.failed += 1
            return exc
        return None

    async def _check(self, raw: RawEvent, did: str) -> None:
        check = _check_commit if raw.type == "#commit" else _check_sync
        key = await self.keys.resolve_key(did)
        try:
            check(raw.body, did, key)
        except BadCommitSignature:
            # the key may have rotated since we cached it: look again, once
            fresh = await self.keys.resolve_key(did, force_refresh=True)
            if fresh == key:
                raise
            check(raw.body, did, fresh)


def _check_commit(body: dict[str, Any], did: str, key: PublicKey) -> None:
    if body.get("tooBig") is True:
        raise InvalidCommit("a tooBig commit carries no blocks to verify")
    commit, rev, blocks = body.get("commit"), body.get("rev"), body.get("blocks")
    prev_data = body.get("prevData")
    if (
        type(commit) is not CID
        or type(rev) is not str
        or type(blocks) is not bytes
        or (prev_data is not None and type(prev_data) is not CID)
    ):
        raise InvalidCommit("commit fields have the wrong types")
    ops: list[ProtocolOp] = ops_from_firehose(body.get("ops") or [])
    verify_commit_event(
        repo=did, commit_cid=commit, rev=rev, blocks=blocks, ops=ops, prev_data=prev_data, key=key
    )


def _check_sync(body: dict[str, Any], did: str, key: PublicKey) -> None:
    blocks, rev = body.get("blocks"), body.get("rev")
    if type(blocks) is not bytes or type(rev) is not str:
        raise InvalidCommit("sync fields have the wrong types")
    roots, store = read_car(blocks)
    data = store.get(roots[0])
    if data is None:
        raise MissingBlock("the sync event's commit block is missing", roots[0])
    commit = SignedCommit.decode(data, roots[0])
    commit.check(key, did=did)
    if commit.rev != rev:
        raise InvalidCommit(f"event rev {rev} does not match commit rev {commit.rev}")


# -- the subscription --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Backoff:
    """Reconnect delays: full jitter over an exponentially growing bound, capped.

    The n-th consecutive failure waits ``uniform(0, min(cap, base * 2**n))``;
    a connection that lasts ``healthy_after`` seconds resets n.
    """

    base: float = BACKOFF_BASE_S
    cap: float = BACKOFF_CAP_S
    healthy_after: float = HEALTHY_AFTER_S

    def bound(self, failures: int) -> float:
        return min(self.cap, self.base * 2.0 ** min(failures, 64))

    def delay(self, failures: int, rng: random.Random | None = None) -> float:
        return (rng or _rng).uniform(0.0, self.bound(failures))


_rng = random.Random()


class _Closed(Exception):
    """Internal: the subscription was closed while connecting."""


class Subscription:
    """An open firehose subscription; see the module docstring. Built by :func:`subscribe`."""

    def __init__(
        self,
        url: str,
        *,
        cursor: int | None,
        cursor_store: CursorStore | None,
        decoder: FirehoseDecoder,
        verifier: Verifier | None,
        owned_identity: IdentityDirectory | None,
        on_invalid: Literal["yield", "raise"],
        backoff: Backoff,
        save_interval: float,
        status_interval: float | None,
        policy: OutboundPolicy | None,
        open_timeout: float,
    ) -> None:
        self.url = endpoint_url(url)
        self._store = cursor_store
        self._explicit_cursor = cursor
        self._decoder = decoder
        self._verifier = verifier
        self._owned_identity = owned_identity
        self._on_invalid = on_invalid
        self._backoff = backoff
        self._save_interval = save_interval
        self._status_interval = status_interval
        self._policy = policy
        self._open_timeout = open_timeout
        # cursor bookkeeping
        self._start: int | None = None  # where the first connection starts
        self._cursor: int | None = None  # last acknowledged seq
        self._last_seq: int | None = None  # last seq received (delivered or filtered)
        self._acked_upto = -1
        self._base: int | None = None  # the seq before the first one received
        self._marks: deque[list[Any]] = deque()  # [seq, delivered] since the cursor
        self._saved: int | None = None
        self._last_save = 0.0
        self._save_lock = asyncio.Lock()
        # connection state
        self._ws: ClientConnection | None = None
        self._connected_at = 0.0
        self._failures = 0
        self._wait = False
        self._ever_connected = False
        self._started = False
        self._closed = False
        self._close_event = asyncio.Event()
        self._housekeeping: asyncio.Task[None] | None = None
        self._last_time: str | None = None
        # counters
        self.events = 0
        self.received = 0
        self.reconnects = 0
        self.too_slow = 0
        self.failures = 0
        self.invalid = 0
        self._status_events = 0
        self._status_at = time.monotonic()

    # -- public state --------------------------------------------------------------

    @property
    def cursor(self) -> int | None:
        """The last acknowledged seq (what the store gets); the starting cursor before any ack."""
        return self._cursor

    @property
    def last_seq(self) -> int | None:
        """The last seq received from the server, delivered or filtered out."""
        return self._last_seq

    @property
    def connected(self) -> bool:
        return self._ws is not None

    @property
    def lag_seconds(self) -> float | None:
        """Age of the last received event by its ``time`` (None before the first)."""
        us = event_time_us(self._last_time)
        if us is None:
            return None
        return max(0.0, time.time() - us / 1_000_000)

    @property
    def lag_seq(self) -> int | None:
        """Received but not yet acknowledged seqs (the server's head is not observable)."""
        if self._last_seq is None:
            return None
        base = self._cursor if self._cursor is not None else self._base
        if base is None:
            return None
        return max(0, self._last_seq - base)

    def status(self) -> dict[str, Any]:
        """Counters and lag for status lines."""
        return {
            "url": self.url,
            "seq": self._last_seq,
            "cursor": self._cursor,
            "events": self.events,
            "received": self.received,
            "lag_s": self.lag_seconds,
            "lag_seq": self.lag_seq,
            "reconnects": self.reconnects,
            "too_slow": self.too_slow,
            "invalid": self.invalid,
            "connected": self.connected,
        }

    # -- acknowledgement ------------------------------------------------------------

    def ack(self, seq: int) -> None:
        """Everything up to ``seq`` is processed; the cursor may move up to it."""
        if type(seq) is not int:
            raise TypeError("ack takes the seq of an event")
        if self._last_seq is None or seq > self._last_seq:
            raise ValueError(f"seq {seq} has not been received (last is {self._last_seq})")
        if seq <= self._acked_upto:
            return
        self._acked_upto = seq
        self._advance()

    def _mark(self, seq: int, delivered: bool) -> None:
        marks = self._marks
        if not delivered and marks and not marks[-1][1]:
            marks[-1][0] = seq  # runs of filtered events collapse into one mark
        else:
            marks.append([seq, delivered])
        if not delivered:
            self._advance()

    def _advance(self) -> None:
        marks = self._marks
        acked = self._acked_upto
        moved = None
        while marks:
            seq, delivered = marks[0]
            if delivered and seq > acked:
                break
            moved = seq
            marks.popleft()
        if moved is not None:
            self._cursor = moved

    async def flush(self) -> None:
        """Save the cursor now if it moved since the last save."""
        if self._store is None:
            return
        async with self._save_lock:
            cursor = self._cursor
            if cursor is None or cursor == self._saved:
                return
            await self._store.save(cursor)
            self._saved = cursor
            self._last_save = time.monotonic()

    # -- iteration ---------------------------------------------------------------------

    def __aiter__(self) -> Self:
        return self

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def __anext__(self) -> Event:
        if self._closed:
            raise StopAsyncIteration
        if not self._started:
            await self._begin()
        if self._store is not None and time.monotonic() - self._last_save >= self._save_interval:
            await self.flush()
        try:
            while True:
                ws = self._ws
                if ws is None:
                    ws = await self._connect()
                try:
                    frame = await ws.recv()
                except ConnectionClosed as exc:
                    self._lost(f"connection closed ({exc})")
                    continue
                event = await self._handle(frame)
                if event is not None:
                    return event
        except _Closed:
            raise StopAsyncIteration from None

    async def _begin(self) -> None:
        self._started = True
        start = self._explicit_cursor
        if start is None and self._store is not None:
            start = await self._store.load()
        self._start = start
        self._cursor = start
        # an explicit cursor that differs from the stored one is saved on the first flush
        self._saved = start if self._explicit_cursor is None else None
        self._last_save = time.monotonic()
        self._housekeeping = asyncio.create_task(self._housekeep(), name="firehose-housekeeping")

    async def _handle(self, frame: Any) -> Event | None:
        if not isinstance(frame, bytes):
            await self._drop("text frame (the firehose is binary)")
            return None
        try:
            raw = self._decoder.read(frame)
        except ConsumerTooSlow as exc:
            self.too_slow += 1
            logger.warning("firehose consumer too slow url=%s seq=%s: %s", self.url,
                           self._last_seq, exc.message)
            await self._drop("ConsumerTooSlow")
            return None
        except (FutureCursor, StreamError) as exc:
            logger.error("firehose error frame url=%s: %s %s", self.url, exc.error, exc.message)
            await self._disconnect()
            raise
        except CborDecodeError as exc:
            await self._drop(f"bad frame: {exc.message}")
            return None
        if raw is None:
            return None
        if isinstance(raw, Info):
            logger.info("firehose info url=%s name=%s message=%s", self.url, raw.name, raw.message)
            return raw
        seq = raw.seq
        if self._last_seq is not None and seq <= self._last_seq:
            logger.debug("firehose duplicate or out-of-order seq=%d after %d", seq, self._last_seq)
            return None
        if self._base is None:
            self._base = self._start if self._start is not None else seq - 1
        self._last_seq = seq
        self.received += 1
        if raw.time is not None:
            self._last_time = raw.time
        if not raw.wanted:
            self._mark(seq, False)
            return None
        event: Event | None = None
        if raw.problem is None and self._verifier is not None:
            problem = await self._verifier.check(raw)
            if problem is not None:
                event = Invalid(seq, raw.did, raw.type, problem)
        if event is None:
            event = self._decoder.build(raw)
        self._mark(seq, True)
        self.events += 1
        if isinstance(event, Invalid):
            self.invalid += 1
            logger.warning("firehose invalid event url=%s seq=%d did=%s type=%s: %s",
                           self.url, seq, event.did, event.type, event.reason)
            if self._on_invalid == "raise":
                raise InvalidEvent(event)
        return event

    # -- connections -----------------------------------------------------------------

    def _resume_cursor(self) -> int | None:
        return self._last_seq if self._last_seq is not None else self._start

    async def _connect(self) -> ClientConnection:
        while True:
            if self._closed:
                raise _Closed
            if self._wait:
                await self._sleep(self._backoff.delay(self._failures))
            url = endpoint_url(self.url, self._resume_cursor())
            try:
                if self._policy is not None:
                    await _check_target(url, self._policy)
                ws = await websockets.connect(
                    url,
                    compression=None,
                    max_size=MAX_FRAME_BYTES,
                    open_timeout=self._open_timeout,
                    ping_interval=PING_INTERVAL_S,
                    ping_timeout=PING_TIMEOUT_S,
                    close_timeout=CLOSE_TIMEOUT_S,
                    user_agent_header=USER_AGENT,
                    proxy=None,
                )
            except InvalidStatus as exc:
                status = exc.response.status_code
                if status == 429 or (status >= 500 and status != 501):
                    retry_after = _retry_after(exc.response.headers.get("Retry-After"))
                    self._failed(f"HTTP {status}")
                    if retry_after:
                        await self._sleep(retry_after)
                    continue
                raise ConnectFailed(f"{self.url} refused the subscription: HTTP {status}") from None
            except InvalidURI as exc:
                raise ConnectFailed(f"bad firehose URL: {exc}") from None
            except UnsafeUrl:
                raise
            except (OSError, TimeoutError, InvalidHandshake, asyncio.IncompleteReadError) as exc:
                self._failed(f"{type(exc).__name__}: {exc}")
                continue
            if self._closed:
                await ws.close()
                raise _Closed
            self._ws = ws
            self._connected_at = time.monotonic()
            self._wait = False
            if self._ever_connected:
                self.reconnects += 1
                logger.info("firehose reconnected url=%s cursor=%s", self.url, self._resume_cursor())
            self._ever_connected = True
            return ws

    def _failed(self, reason: str) -> None:
        self.failures += 1
        logger.warning("firehose connect failed url=%s attempt=%d: %s", self.url,
                       self._failures + 1, reason)
        self._failures += 1
        self._wait = True

    def _lost(self, reason: str) -> None:
        """The connection is gone: the next read reconnects after a backoff."""
        self._ws = None
        if self._closed:
            raise _Closed
        if time.monotonic() - self._connected_at >= self._backoff.healthy_after:
            self._failures = 0
        else:
            self._failures += 1
        self._wait = True
        logger.warning("firehose disconnected url=%s seq=%s: %s", self.url, self._last_seq, reason)

    async def _drop(self, reason: str) -> None:
        await self._disconnect()
        self._lost(reason)

    async def _disconnect(self) -> None:
        ws, self._ws = self._ws, None
        if ws is not None:
            with contextlib.suppress(Exception):
                await ws.close()

    async def _sleep(self, seconds: float) -> None:
        if seconds <= 0:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._close_event.wait(), seconds)
        if self._closed:
            raise _Closed

    # -- housekeeping and shutdown ----------------------------------------------------

    async def _housekeep(self) -> None:
        tick = self._save_interval if self._save_interval > 0 else SAVE_INTERVAL_S
        if self._status_interval is not None:
            tick = min(tick, self._status_interval)
        while True:
            await asyncio.sleep(tick)
            try:
                await self.flush()
            except Exception:  # noqa: BLE001 - keep trying; the next save may work
                logger.exception("firehose cursor save failed url=%s", self.url)
            now = time.monotonic()
            if self._status_interval is not None and now - self._status_at >= self._status_interval:
                self._log_status(now)

    def _log_status(self, now: float) -> None:
        elapsed = max(now - self._status_at, 1e-9)
        rate = (self.events - self._status_events) / elapsed
        self._status_at = now
        self._status_events = self.events
        lag = self.lag_seconds
        logger.info(
            "firehose status url=%s seq=%s cursor=%s events=%d rate=%.1f/s lag_s=%s "
            "backlog=%s reconnects=%d too_slow=%d invalid=%d",
            self.url, self._last_seq, self._cursor, self.events, rate,
            "-" if lag is None else f"{lag:.1f}", self.lag_seq, self.reconnects,
            self.too_slow, self.invalid,
        )

    async def close(self) -> None:
        """Stop: close the connection, save the cursor, release what we own."""
        if self._closed:
            return
        self._closed = True
        self._close_event.set()
        task, self._housekeeping = self._housekeeping, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._disconnect()
        try:
            await self.flush()
        finally:
            if self._owned_identity is not None:
                resolver = self._owned_identity.resolver
                await self._owned_identity.aclose()
                await resolver.aclose()


def _retry_after(value: str | None) -> float:
    if value is None:
        return 0.0
    try:
        seconds = float(value.strip())
    except ValueError:
        return 0.0
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


async def _check_target(url: str, policy: OutboundPolicy) -> None:
    """Refuse WebSocket targets the outbound policy forbids (like the HTTP guard)."""
    http_url = "http" + url[2:] if url.startswith("ws") else url
    parsed = check_url(http_url, policy)
    for address in await system_resolve_host(parsed.host):
        problem = address_problem(address, allow_local=policy.allow_local)
        if problem is not None:
            raise UnsafeUrl(f"firehose host {parsed.host} is not allowed: {problem}")


def subscribe(
    url: str,
    *,
    cursor: int | None = None,
    cursor_store: CursorStore | None = None,
    collections: Iterable[str] | None = None,
    dids: Iterable[str] | None = None,
    decode_records: bool = True,
    verify: bool = False,
    identity: KeyResolver | None = None,
    plc_url: str = PLC_DIRECTORY_URL,
    allow_local: bool = False,
    on_invalid: Literal["yield", "raise"] = "yield",
    backoff: Backoff | None = None,
    save_interval: float = SAVE_INTERVAL_S,
    status_interval: float | None = STATUS_INTERVAL_S,
    policy: OutboundPolicy | None = None,
    open_timeout: float = OPEN_TIMEOUT_S,
) -> Subscription:
    """Subscribe to the ``subscribeRepos`` firehose at ``url`` (see the module docstring).

    ``cursor``: start after this seq (wins over ``cursor_store``); with
    neither, start live. ``identity``: where verification gets keys; when
    ``verify`` is on and none is given, an :class:`IdentityDirectory` over
    ``plc_url`` is made (``allow_local`` lets it reach loopback addresses)
    and closed with the subscription. ``policy``: refuse firehose hosts the
    outbound policy forbids (for services connecting to hosts they were told
    about). Nothing connects until the first event is awaited.
    """
    if cursor is not None and (type(cursor) is not int or cursor < 0):
        raise ValueError("cursor must be a non-negative integer")
    if on_invalid not in ("yield", "raise"):
        raise ValueError("on_invalid must be 'yield' or 'raise'")
    if save_interval < 0:
        raise ValueError("save_interval must not be negative")
    decoder = FirehoseDecoder(collections=collections, dids=dids, decode_records=decode_records)
    endpoint_url(url)  # fail fast on a malformed URL
    verifier = None
    owned = None
    if verify:
        if identity is None:
            owned = IdentityDirectory(
                IdentityResolver.create(plc_url=plc_url, allow_local=allow_local)
            )
            identity = owned
        verifier = Verifier(identity)
    return Subscription(
        url,
        cursor=cursor,
        cursor_store=cursor_store,
        decoder=decoder,
        verifier=verifier,
        owned_identity=owned,
        on_invalid=on_invalid,
        backoff=backoff or Backoff(),
        save_interval=save_interval,
        status_interval=status_interval,
        policy=policy,
        open_timeout=open_timeout,
    )

