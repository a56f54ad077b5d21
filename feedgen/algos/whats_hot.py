"""``whats-hot``: the most liked recent posts, likes decaying with time.

The index keeps each post's score up to date as likes come and go
(``log2(1 + likes) + time / half-life``, see :mod:`feedgen.sqlite`), with an
index over it, so the ranking is a short index read, never a scan.

Scores move while someone pages through the feed, which would make a
position-based cursor skip or repeat posts. So the first page takes a
snapshot of the top ``size`` posts (shared by every reader: the ranking is
not personal) and the cursor names the snapshot and an offset into it: pages
of one snapshot never skip or repeat. A new snapshot is taken at most every
``refresh_s`` seconds, and only when the index changed. The last
:data:`SNAPSHOTS_KEPT` snapshots are kept; a cursor whose snapshot is gone
(the server restarted) continues at the same rank of the current one.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from feedgen.plugins import FeedPage, FeedRequest, algorithm
from feedgen.storage import HotItem, IndexReader, InvalidCursor

#: Snapshots kept for open cursors.
SNAPSHOTS_KEPT: Final = 64
#: Largest ranking one feed may keep.
MAX_SIZE: Final = 10_000
_HEX: Final = "0123456789abcdef"


@dataclass(slots=True)
class _Snapshot:
    id: str
    version: int
    taken: float
    posts: tuple[str, ...]


@algorithm("whats-hot", anonymous=True, inline=True, shared=True)
class WhatsHot:
    """The most liked posts, newer ones first among equals (likes halve every 6 hours)."""

    def __init__(
        self,
        *,
        size: int = 1_000,
        refresh_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= MAX_SIZE:
            raise ValueError(f"size must be an integer from 1 to {MAX_SIZE}")
        if isinstance(refresh_s, bool) or not isinstance(refresh_s, (int, float)) or refresh_s < 0:
            raise ValueError("refresh_s must be a number of seconds")
        self.size = size
        self.refresh_s = float(refresh_s)
        self._clock = clock
        self._lock = threading.Lock()
        self._snapshots: OrderedDict[str, _Snapshot] = OrderedDict()
        self._current: _Snapshot | None = None

    def _fresh(self, index: IndexReader) -> _Snapshot:
        with self._lock:
            current = self._current
            now = self._clock()
            if current is not None and now - current.taken < self.refresh_s:
                return current
            version = index.version()
            if current is not None and current.version == version:
                current.taken = now
                return current
            ranked: list[HotItem] = index.hot(self.size)
            snap = _Snapshot(secrets.token_hex(6), version, now, tuple(i.post for i in ranked))
            self._current = snap
            self._snapshots[snap.id] = snap
            while len(self._snapshots) > SNAPSHOTS_KEPT:
                self._snapshots.popitem(last=False)
            return snap

    def _find(self, snapshot_id: str) -> _Snapshot | None:
        with self._lock:
            return self._snapshots.get(snapshot_id)

    def __call__(self, index: IndexReader, request: FeedRequest) -> FeedPage:
        if request.cursor is None:
            snap, offset = self._fresh(index), 0
        else:
            snapshot_id, offset = _parse(request.cursor)
            snap = self._find(snapshot_id) or self._fresh(index)
        end = offset + request.limit
        cursor = f"{snap.id}:{end}" if end < len(snap.posts) else None
        return FeedPage(snap.posts[offset:end], cursor)


def _parse(cursor: str) -> tuple[str, int]:
    snapshot_id, sep, offset = cursor.partition(":")
    if (
        not sep
        or len(snapshot_id) > 32
        or not snapshot_id
        or snapshot_id.strip(_HEX)
        or not offset.isdigit()
        or int(offset) > MAX_SIZE
    ):
        raise InvalidCursor("malformed cursor")
    return snapshot_id, int(offset)
