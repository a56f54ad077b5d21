"""Storage interface of the did:plc directory, and its row types.

A store keeps every op ever accepted, per DID in ``createdAt`` order, with a
``nullified`` flag and a directory-local ``seq``. Its one write,
:meth:`PlcStore.append`, is a compare-and-set: it succeeds only if the DID's
latest valid op is still the one the op was validated against, and it
inserts the op and nullifies the ops a recovery replaces in one transaction.
Two racing updates therefore give one success and one
:class:`~roost.errors.PlcConflict`, and nothing half-written.

Rows are :class:`roost.plc.LogEntry` values (re-exported here).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from roost.plc import LogEntry, NextOp, Op

__all__ = ["ExportCursor", "LogEntry", "PlcStore"]


@dataclass(frozen=True, slots=True)
class ExportCursor:
    """Position in the export order (``createdAt``, then CID).

    With ``cid`` None the page starts strictly after ``created_at`` (the
    reference ``after=<timestamp>`` semantics); with a CID it starts strictly
    after that op, so ops sharing a timestamp are never skipped.
    """

    created_at: datetime
    cid: str | None = None


class PlcStore(Protocol):
    """What the directory needs from its storage."""

    async def open(self) -> None:
        """Create or migrate the schema and get ready."""

    async def close(self) -> None: ...

    async def ping(self) -> None:
        """Raise if the storage cannot answer a trivial query."""

    async def get_log(self, did: str, *, include_nullified: bool = True) -> list[LogEntry]:
        """Ops of ``did`` by ``createdAt`` (all, or only the valid chain)."""

    async def get_last(self, did: str) -> LogEntry | None:
        """The newest valid op of ``did`` (may be a tombstone), or None."""

    async def has_op(self, cid: str) -> bool:
        """True if an op with this CID is stored (for any DID)."""

    async def append(
        self,
        did: str,
        op: Op,
        result: NextOp,
        *,
        expected_head: str | None,
        now: datetime,
        exact_time: bool = False,
    ) -> LogEntry:
        """Store a validated op atomically; returns the stored entry.

        Raises :class:`~roost.errors.PlcConflict` unless the DID's newest valid op
        is still ``expected_head`` (None: the DID must not exist). Marks
        ``result.nullified`` as nullified in the same transaction. ``createdAt``
        is ``now`` moved forward as needed to stay strictly increasing, or
        exactly ``now`` when ``exact_time`` (mirroring another directory's log).
        """

    async def export(self, count: int, after: ExportCursor | None = None) -> list[LogEntry]:
        """Up to ``count`` ops by (``createdAt``, CID) after the cursor."""

    async def export_seq(self, after: int, count: int) -> list[LogEntry]:
        """Up to ``count`` ops with ``seq > after``, by ``seq``."""

    async def get_meta(self, key: str) -> str | None: ...

    async def set_meta(self, key: str, value: str) -> None: ...
