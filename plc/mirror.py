"""Read-through mirror of another did:plc directory.

With ``upstream`` configured the directory does not accept ops itself: it
replays the upstream ``/export`` in pages (``sequenced_op`` lines by ``seq``
when upstream has them, legacy lines by ``createdAt`` otherwise), checks
every op with the same validator a primary uses (at the op's own
``createdAt``) before storing it, and keeps following with a poll interval.
A DID asked for before the replay reached it is fetched from upstream's
``/:did/log/audit`` and verified the same way. Submissions are forwarded.

Ops upstream accepted but roost's validator refuses are logged and skipped
(plc.directory holds a few known-invalid ops).
"""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import timedelta

import httpx

from plc.storage import LogEntry, PlcStore
from roost.errors import InvalidPlcOperation, PlcConflict, RoostError
from roost.plc import format_timestamp, is_valid_plc_did, op_cid, parse_timestamp, validate_next_op

__all__ = ["Mirror"]

log = logging.getLogger(__name__)

_SEQ_KEY = "mirror_upstream_seq"
_TIME_KEY = "mirror_upstream_after"
PAGE_SIZE = 1000
#: Legacy (timestamp) paging re-reads this much before the last op seen, so ops
#: sharing a timestamp across a page boundary are not lost (known CIDs are skipped).
_OVERLAP = timedelta(milliseconds=1)


class Mirror:
    """Follows ``upstream``'s export into ``store``."""

    def __init__(
        self,
        store: PlcStore,
        upstream: str,
        http: httpx.AsyncClient,
        *,
        poll_interval: float = 5.0,
        page_size: int = PAGE_SIZE,
    ) -> None:
        self.store = store
        self.upstream = upstream.rstrip("/")
        self.http = http
        self.poll_interval = poll_interval
        self.page_size = page_size
        self.stored = 0
        self.rejected = 0
        self._lock = asyncio.Lock()

    # -- one op ----------------------------------------------------------------------

    async def ingest(self, entry: LogEntry) -> bool:
        """Validate and store one upstream op; False if known or refused."""
        async with self._lock:
            if await self.store.has_op(entry.cid):
                return False
            try:
                if op_cid(entry.operation) != entry.cid:
                    raise InvalidPlcOperation(f"CID {entry.cid} does not match its operation")
                chain = await self.store.get_log(entry.did)
                result = validate_next_op(entry.did, chain, entry.operation, entry.created_at)
                head = next((e.cid for e in reversed(chain) if not e.nullified), None)
                await self.store.append(
                    entry.did,
                    entry.operation,
                    result,
                    expected_head=head,
                    now=entry.created_at,
                    exact_time=True,
                )
            except (InvalidPlcOperation, PlcConflict) as exc:
                self.rejected += 1
                log.warning("mirror refused op did=%s cid=%s reason=%s", entry.did, entry.cid, exc)
                return False
            self.stored += 1
            return True

    # -- export replay ----------------------------------------------------------------

    async def _page(self, after: str) -> list[LogEntry]:
        response = await self.http.get(
            f"{self.upstream}/export", params={"after": after, "count": str(self.page_size)}
        )
        response.raise_for_status()
        entries = []
        for line in response.text.splitlines():
            if line.strip():
                entries.append(LogEntry.from_json(json.loads(line)))
        return entries

    async def sync_once(self) -> int:
        """Pull pages until upstream has nothing new; returns how many ops were stored."""
        stored = 0
        while True:
            seq_text = await self.store.get_meta(_SEQ_KEY)
            time_text = await self.store.get_meta(_TIME_KEY)
            if time_text is None:
                entries = await self._page(seq_text or "0")
                if entries and all(e.seq is not None for e in entries):
                    for entry in entries:
                        stored += await self.ingest(entry)
                    await self.store.set_meta(_SEQ_KEY, str(max(e.seq or 0 for e in entries)))
                    if len(entries) < self.page_size:
                        return stored
                    continue
                if not entries:
                    return stored
                # Upstream has no sequenced export: switch to timestamp paging.
                time_text = "1900-01-01T00:00:00.000Z"
                await self.store.set_meta(_TIME_KEY, time_text)
            entries = await self._page(time_text)
            for entry in entries:
                stored += await self.ingest(entry)
            if not entries:
                return stored
            newest = max(e.created_at for e in entries)
            cursor = newest - _OVERLAP
            if cursor <= parse_timestamp(time_text):
                cursor = newest  # a full page within one millisecond: move on
            await self.store.set_meta(_TIME_KEY, format_timestamp(cursor))
            if len(entries) < self.page_size:
                return stored

    async def run(self) -> None:
        """Follow upstream forever (cancel to stop); errors are logged and retried."""
        while True:
            try:
                count = await self.sync_once()
                if count:
                    log.info("mirror synced ops=%d total=%d", count, self.stored)
            except asyncio.CancelledError:
                raise
            except (httpx.HTTPError, RoostError, ValueError) as exc:
                log.warning("mirror sync failed upstream=%s error=%s", self.upstream, exc)
            await asyncio.sleep(self.poll_interval)

    # -- read-through and writes --------------------------------------------------------

    async def fetch_did(self, did: str) -> bool:
        """Fetch ``did``'s audit log from upstream and store what verifies; False if unknown."""
        if not is_valid_plc_did(did):
            return False
        try:
            response = await self.http.get(f"{self.upstream}/{did}/log/audit")
        except httpx.HTTPError as exc:
            log.warning("mirror read-through failed did=%s error=%s", did, exc)
            return False
        if response.status_code != 200:
            return False
        try:
            body = response.json()
            entries = [LogEntry.from_json(item, did=did) for item in body]
        except (ValueError, TypeError, RoostError) as exc:
            log.warning("mirror read-through got a bad audit log did=%s error=%s", did, exc)
            return False
        for entry in entries:
            await self.ingest(entry)
        return True

    async def forward(self, did: str, body: bytes) -> httpx.Response:
        """POST a submission to upstream, then pull the DID's log on success."""
        response = await self.http.post(
            f"{self.upstream}/{did}", content=body, headers={"content-type": "application/json"}
        )
        if response.status_code == 200:
            await self.fetch_did(did)
        return response
