"""What the relay stores, and the interface its storage backends implement.

The relay keeps (``spec/relay.md`` section 1):

- **hosts**: every upstream it knows, with its status, account limit and the
  last upstream seq it has durably processed (its cursor);
- **accounts**: per DID, the host it lives on, the local status (takedowns,
  throttling) and the upstream status, and the sync state of its repo -
  ``(rev, commit CID, data CID)``, nothing else: the relay is non-archival;
- **the event log**: its own output, one row per event with the relay's seq,
  kept for a replay window (by age and total size);
- domain bans and a log of every admin action.

Everything written because of upstream events goes through one call,
:meth:`Store.commit` with a :class:`WriteSet`: the events with their seqs,
the account rows they changed and the host cursors they advance land in one
transaction, so a cursor never runs ahead of (or behind) the events and
state it covers. SQLite is the default backend (:mod:`relay.sqlite`);
:mod:`relay.postgres` implements the same protocol on PostgreSQL, where
several relay processes share one log.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from roost.cid import CID

__all__ = [
    "ACCOUNT_ACTIVE_STATUSES",
    "HOST_STATUSES",
    "AccountRow",
    "AccountState",
    "HostRow",
    "Statement",
    "Store",
    "WriteSet",
    "prune_cut",
]

#: ``com.atproto.sync.defs#hostStatus``.
HOST_STATUSES: Final = ("active", "idle", "offline", "throttled", "banned")
#: Local statuses under which an account's events flow.
ACCOUNT_ACTIVE_STATUSES: Final = frozenset({"active", "throttled"})


@dataclass(slots=True)
class HostRow:
    """One upstream host."""

    id: int
    hostname: str
    no_ssl: bool
    status: str
    account_limit: int
    trusted: bool
    last_seq: int = -1
    account_count: int = 0
    created_at: str = ""


@dataclass(slots=True)
class AccountState:
    """One account as the relay tracks it (cached in memory, mutable).

    ``status`` is local (``active``, ``takendown``, ``suspended``,
    ``host-throttled``...); ``upstream_status`` is what its PDS last said
    (``active``, ``deactivated``, ``deleted``, ``takendown``...).
    ``desync``: a commit could not be verified and a resync is pending.
    """

    uid: int
    did: str
    host_id: int
    status: str = "active"
    upstream_status: str = "active"
    rev: str | None = None
    commit_cid: CID | None = None
    data_cid: CID | None = None
    desync: bool = False
    created_at: str = ""
    #: Writer batch that last changed it (memory only: not evicted before it is durable).
    dirty_batch: int = 0

    @property
    def active(self) -> bool:
        return (
            self.status in ACCOUNT_ACTIVE_STATUSES
            and self.upstream_status == "active"
            and not self.desync
        )

    @property
    def public_status(self) -> str | None:
        """``status`` for ``#account``/``getRepoStatus``: None when active."""
        if self.status not in ACCOUNT_ACTIVE_STATUSES:
            return "throttled" if self.status == "host-throttled" else self.status
        if self.upstream_status != "active":
            return self.upstream_status
        if self.desync:
            return "desynchronized"
        return None

    def row(self) -> AccountRow:
        """A snapshot of the columns to store."""
        return (
            self.uid,
            self.did,
            self.host_id,
            self.status,
            self.upstream_status,
            self.rev,
            self.commit_cid.bytes if self.commit_cid is not None else None,
            self.data_cid.bytes if self.data_cid is not None else None,
            int(self.desync),
            self.created_at,
        )

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> AccountState:
        uid, did, host_id, status, upstream, rev, commit, data, desync, created = row
        return cls(
            uid,
            did,
            host_id,
            status,
            upstream,
            rev,
            CID.from_bytes(commit) if commit is not None else None,
            CID.from_bytes(data) if data is not None else None,
            bool(desync),
            created,
        )


#: (uid, did, host_id, status, upstream_status, rev, commit, data, desync, created_at)
AccountRow = tuple[int, str, int, str, str, str | None, bytes | None, bytes | None, int, str]
#: (sql, params): a statement for :attr:`WriteSet.statements` (built by the backend).
Statement = tuple[str, tuple[Any, ...]]


@dataclass(slots=True)
class WriteSet:
    """Everything one transaction writes."""

    #: (seq, uid, time_ms, frame) in seq order.
    events: list[tuple[int, int, int, bytes]] = field(default_factory=list)
    #: uid -> the account's columns (the latest snapshot wins).
    accounts: dict[int, AccountRow] = field(default_factory=dict)
    #: host id -> upstream cursor.
    cursors: dict[int, int] = field(default_factory=dict)
    #: host id -> account count.
    host_counts: dict[int, int] = field(default_factory=dict)
    #: Other writes (hosts, bans, admin log), in order, before the rows above.
    statements: list[Statement] = field(default_factory=list)
    #: The highest seq ever assigned, when it moves.
    last_seq: int | None = None
    #: The events again, numbered from a given first seq (frames re-encoded). A
    #: backend that assigns seqs inside its transaction (``numbers_events``)
    #: calls it when the log's head is not where the writer expected, and
    #: leaves the events it stored in :attr:`events`.
    renumber: Callable[[int], list[tuple[int, int, int, bytes]]] | None = None

    def __bool__(self) -> bool:
        return bool(
            self.events or self.accounts or self.cursors or self.host_counts or self.statements
        )


class Store(Protocol):
    """A relay storage backend. Reads are safe on the event loop unless marked."""

    # -- the writer's transaction -------------------------------------------------

    def commit(self, writes: WriteSet) -> None:
        """Apply ``writes`` in one durable transaction (blocking: call from a thread)."""
        ...

    # -- statements for WriteSet.statements ----------------------------------------

    def insert_host_sql(self, host: HostRow) -> Statement: ...
    def update_host_sql(self, host: HostRow) -> Statement: ...
    def ban_domain_sql(self, domain: str, created_at: str) -> Statement: ...
    def unban_domain_sql(self, domain: str) -> Statement: ...
    def admin_action_sql(self, time: str, action: str, subject: str, detail: str) -> Statement: ...

    # -- reads ------------------------------------------------------------------------

    def meta(self, key: str) -> str | None: ...
    def hosts(self) -> list[HostRow]: ...
    def domain_bans(self) -> list[str]: ...
    def account(self, did: str) -> AccountState | None: ...
    def max_uid(self) -> int: ...
    def takendown_uids(self) -> set[int]: ...
    def list_repos(self, after_uid: int, limit: int) -> list[AccountState]: ...
    def takedowns(self, after_uid: int, limit: int) -> list[AccountState]: ...
    def throttled_accounts(self, host_id: int, limit: int) -> list[AccountState]: ...
    def admin_actions(self, before_id: int | None, limit: int) -> list[dict[str, Any]]: ...
    def last_seq(self) -> int: ...

    # -- the event log (blocking: call from a thread) ---------------------------------

    def events_after(self, seq: int, limit: int) -> list[tuple[int, int, bytes]]:
        """(seq, uid, frame) with seq greater than ``seq``, ascending."""
        ...

    def oldest_seq_since(self, time_ms: int) -> int | None: ...
    def prune_events(self, before_time_ms: int, max_bytes: int, batch: int) -> int:
        """Delete old events (by age, then oldest first past ``max_bytes``); how many."""
        ...

    def close(self) -> None: ...


def prune_cut(
    rows: Sequence[Sequence[int]], total_bytes: int, before_time_ms: int, max_bytes: int
) -> tuple[int | None, int]:
    """Where pruning stops: the last seq to delete (None: nothing) and the bytes freed.

    ``rows`` are the oldest events as ``(seq, time_ms, size)`` in seq order; an
    event goes if it is older than ``before_time_ms`` or the log is still
    larger than ``max_bytes`` without it.
    """
    cut: int | None = None
    freed = 0
    for seq, time_ms, size in rows:
        if time_ms >= before_time_ms and total_bytes - freed <= max_bytes:
            break
        cut = seq
        freed += size
    return cut, freed
