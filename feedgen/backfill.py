"""``roost feedgen backfill``: index whole repositories, so a new feed does not start empty.

Accounts come from ``--did`` (resolved to their PDS) and from ``--host``
(every active repo ``com.atproto.sync.listRepos`` lists there). Each repo is
fetched with ``com.atproto.sync.getRepo``, read with :func:`roost.repo.import_car`
(block hashes and the MST checked; the commit signature too when the DID's
key resolves) and its posts, likes, reposts, follows and blocks go through
the same record mapping as the firehose (:mod:`feedgen.records`), a batch
per repo. Records are stamped "indexed now", so feeds order them by their
``createdAt``.

The firehose cursor is not touched: backfilling while the server indexes
the live stream is fine (each write is a short transaction; re-indexing a
record changes nothing). A record deleted between the repo snapshot and the
firehose delete can come back; backfilling the account again removes it
only if the delete is replayed, so backfill before serving when possible.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import urlsplit

import httpx

from roost import cbor
from roost.blockstore import MemoryBlockStore
from roost.crypto import PublicKey
from roost.errors import RoostError
from roost.identity import IdentityDirectory
from roost.repo import import_car

from feedgen.records import INDEXED_COLLECTIONS, index_op
from feedgen.storage import ActorHost, IndexOp, IndexStore

__all__ = ["BackfillReport", "MAX_REPO_BYTES", "backfill", "index_repo"]

log = logging.getLogger(__name__)

#: Largest repo CAR fetched.
MAX_REPO_BYTES: Final = 1 << 30
#: Repos listed per listRepos page.
LIST_PAGE: Final = 1_000
#: Most repos taken from one host.
MAX_REPOS_PER_HOST: Final = 1_000_000
#: Repos fetched at once.
CONCURRENCY: Final = 4
#: Index ops per store transaction.
APPLY_CHUNK: Final = 5_000
#: getRepo timeout, seconds.
FETCH_TIMEOUT_S: Final = 300.0


@dataclass(slots=True)
class BackfillReport:
    repos: int = 0
    records: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)


def index_repo(
    did: str, car: bytes, *, key: PublicKey | None, indexed_at: int
) -> list[IndexOp]:
    """The index ops for every indexed record of a repo CAR (verified against ``did``)."""
    blocks = MemoryBlockStore()
    repo, _ = import_car(blocks, car, did=did, key=key)
    ops: list[IndexOp] = []
    for collection in INDEXED_COLLECTIONS:
        for path, cid in repo.tree.items(collection + "/", collection + "0"):
            data = blocks.get(cid)
            if data is None:
                continue
            try:
                record = cbor.decode(data)
            except RoostError:
                continue
            op = index_op(did, collection, path[len(collection) + 1 :], cid, record, indexed_at)
            if op is not None:
                ops.append(op)
    return ops


async def _list_repos(http: httpx.AsyncClient, host: str) -> list[str]:
    dids: list[str] = []
    cursor: str | None = None
    while len(dids) < MAX_REPOS_PER_HOST:
        params: dict[str, Any] = {"limit": LIST_PAGE}
        if cursor:
            params["cursor"] = cursor
        response = await http.get(f"{host}/xrpc/com.atproto.sync.listRepos", params=params)
        if response.status_code != 200:
            raise RoostError(f"listRepos at {host} answered {response.status_code}")
        body = response.json()
        repos = body.get("repos") if isinstance(body, dict) else None
        if not isinstance(repos, list):
            raise RoostError(f"listRepos at {host} returned no repos list")
        for repo in repos:
            if isinstance(repo, dict) and isinstance(repo.get("did"), str):
                if repo.get("active", True) is not False:
                    dids.append(repo["did"])
        cursor = body.get("cursor")
        if not repos or not isinstance(cursor, str):
            break
    return dids


async def _fetch_repo(http: httpx.AsyncClient, host: str, did: str) -> bytes:
    url = f"{host}/xrpc/com.atproto.sync.getRepo"
    async with http.stream("GET", url, params={"did": did}, timeout=FETCH_TIMEOUT_S) as response:
        if response.status_code != 200:
            body = (await response.aread())[:300].decode("utf-8", "replace")
            raise RoostError(f"getRepo answered {response.status_code}: {body}")
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > MAX_REPO_BYTES:
                raise RoostError(f"repo is larger than {MAX_REPO_BYTES} bytes")
            chunks.append(chunk)
    return b"".join(chunks)


def _origin(url: str) -> str:
    parts = urlsplit(url if "://" in url else f"https://{url}")
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"{url!r} is not a host URL")
    return f"{parts.scheme}://{parts.netloc}"


async def backfill(
    store: IndexStore,
    http: httpx.AsyncClient,
    identity: IdentityDirectory,
    *,
    dids: Iterable[str] = (),
    hosts: Iterable[str] = (),
    progress: Callable[[str], None] = lambda line: None,
    clock: Callable[[], float] = time.time,
) -> BackfillReport:
    """Index the repos of ``dids`` and of every active account on ``hosts``."""
    report = BackfillReport()
    targets: dict[str, str] = {}
    for host in hosts:
        origin = _origin(host)
        listed = await _list_repos(http, origin)
        progress(f"{origin}: {len(listed)} repos")
        for did in listed:
            targets.setdefault(did, origin)
    for did in dids:
        if did in targets:
            continue
        try:
            doc = await identity.lookup_did(did)
        except RoostError as exc:
            report.failed.append((did, exc.message))
            continue
        if doc.pds_endpoint is None:
            report.failed.append((did, "its DID document names no PDS"))
            continue
        targets[did] = doc.pds_endpoint
    limit = asyncio.Semaphore(CONCURRENCY)

    async def one(did: str, origin: str) -> None:
        async with limit:
            try:
                key: PublicKey | None
                try:
                    key = await identity.signing_key(did)
                except RoostError:
                    key = None  # structure and hashes are still checked
                car = await _fetch_repo(http, origin, did)
                now = int(clock() * 1000)
                ops = await asyncio.to_thread(index_repo, did, car, key=key, indexed_at=now)
                ops.append(ActorHost(did, urlsplit(origin).netloc.lower()))
                for start in range(0, len(ops), APPLY_CHUNK):
                    await asyncio.to_thread(store.apply, ops[start : start + APPLY_CHUNK])
            except (RoostError, httpx.HTTPError, OSError) as exc:
                message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
                report.failed.append((did, message))
                progress(f"{did}: FAILED: {message}")
                return
            report.repos += 1
            report.records += len(ops) - 1
            progress(f"{did}: {len(ops) - 1} records")

    await asyncio.gather(*(one(did, origin) for did, origin in targets.items()))
    return report
