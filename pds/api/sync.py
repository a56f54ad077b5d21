"""``com.atproto.sync.*`` served by the PDS (``spec/sync.md`` section 2).

Public endpoints (no auth needed). The per-repo ones refuse accounts that
are not active (``RepoTakendown``, ``RepoSuspended``, ``RepoDeactivated``)
unless the caller is the account itself (its access token) or the operator
(admin Basic auth), as the reference PDS does; an unknown DID is
``RepoNotFound``.

Exports read a :class:`~pds.sqlite.ReadSnapshot`: one read transaction, so a
CAR streamed while the account keeps writing is still exactly one revision
(the writer deletes blocks the new tree no longer uses). ``getRepo`` streams
its CAR, reading the snapshot in worker threads: a whole repo is one range
scan of the account's blocks, which are exactly the current commit's, in
CID order (no tree walk); ``getRecord`` (a proof) and ``getBlocks`` are
small and answered whole.

``getBlob`` serves only permanent blobs (a temporary upload is private until
a record references it), with single-range ``Range`` support and the
serving headers of ``spec/sync.md`` section 2 (:func:`pds.blobstore.blob_response`);
``listBlobs`` lists the CIDs current records reference, sorted by CID string.

``subscribeRepos`` is registered by :mod:`pds.app` (served by the sequencer).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import Any, Final

from starlette.requests import HTTPConnection
from starlette.responses import Response

from roost.auth import (
    AdminAuth,
    AdminCredentials,
    Credentials,
    SessionCredentials,
    any_of,
    optional,
)
from roost.car import car_bytes, car_sections, encode_car_header, write_car
from roost.cid import CID
from roost.errors import AuthRequired, MissingBlock, RecordNotFound, RepoNotFound
from roost.ratelimit import RateLimit
from roost.repo import Repo
from roost.xrpc import Output, XrpcContext, XrpcRouter

from pds.api.repo import inactive_error
from pds.api.server import ACCESS
from pds.blobstore import BlobNotFound, blob_response
from pds.context import PdsContext, pds
from pds.sqlite import AccountRow, ReadSnapshot

__all__ = ["CAR_MIME", "EXPORT_BATCH_ROWS", "GET_REPO_LIMIT", "SNAPSHOT_READ_BYTES", "register"]

log = logging.getLogger(__name__)

CAR_MIME: Final = "application/vnd.ipld.car"
#: Reference PDS: getRepo has its own per-IP budget and skips the global one.
GET_REPO_LIMIT: Final = RateLimit("sync-get-repo", 6000, 300, per="ip")
#: CAR bytes gathered per worker-thread read while streaming an export.
SNAPSHOT_READ_BYTES: Final = 256 * 1024
#: Block rows fetched from the database at a time while exporting a whole repo.
EXPORT_BATCH_ROWS: Final = 1_000


class _Admin:
    """Admin Basic auth with the password of the running app's config."""

    def accepts(self, conn: HTTPConnection) -> bool:
        value = conn.headers.get("authorization") or ""
        return value.strip().lower().startswith("basic ")

    async def __call__(self, conn: HTTPConnection, nsid: str) -> Credentials:
        password = conn.app.state.pds.config.admin_password
        if not password:
            raise AuthRequired("Admin authentication is not configured")
        return await AdminAuth(password)(conn, nsid)


#: Anyone; a presented credential must be valid (it lifts the status checks).
SELF_OR_ADMIN: Final = optional(any_of(ACCESS, _Admin()))


def register(router: XrpcRouter) -> None:
    router.query(
        "com.atproto.sync.getRepo",
        auth=SELF_OR_ADMIN,
        rate_limits=(GET_REPO_LIMIT,),
        global_rate_limit=False,
    )(get_repo)
    router.query("com.atproto.sync.getLatestCommit", auth=SELF_OR_ADMIN)(get_latest_commit)
    router.query("com.atproto.sync.getRecord", auth=SELF_OR_ADMIN)(get_record)
    router.query("com.atproto.sync.getBlocks", auth=SELF_OR_ADMIN)(get_blocks)
    router.query("com.atproto.sync.getBlob", auth=SELF_OR_ADMIN)(get_blob)
    router.query("com.atproto.sync.listBlobs", auth=SELF_OR_ADMIN)(list_blobs)
    router.query("com.atproto.sync.listRepos")(list_repos)
    router.query("com.atproto.sync.getRepoStatus")(get_repo_status)


def _available(ctx: XrpcContext, p: PdsContext, did: str) -> AccountRow:
    """The account of ``did`` if the caller may read its repo."""
    account = p.db.account(did)
    if account is None:
        raise RepoNotFound(f"Could not find repo for DID: {did}")
    if not account.active:
        creds = ctx.auth
        mine = isinstance(creds, SessionCredentials) and creds.did == did
        if not (mine or isinstance(creds, AdminCredentials)):
            raise inactive_error(account)
    return account


def _head(snapshot: ReadSnapshot, did: str) -> CID:
    root = snapshot.repo_root(did)
    if root is None:
        raise RepoNotFound(f"Could not find repo for DID: {did}")
    return root[0]


class _SnapshotBlocks:
    """One account's blocks in a snapshot, as a read-only BlockStore."""

    __slots__ = ("did", "snapshot")

    def __init__(self, snapshot: ReadSnapshot, did: str) -> None:
        self.snapshot = snapshot
        self.did = did

    def get(self, cid: CID) -> bytes | None:
        return self.snapshot.get_block(self.did, cid)

    def has(self, cid: CID) -> bool:
        return self.get(cid) is not None

    def get_many(self, cids: Iterable[CID]) -> dict[CID, bytes]:
        return self.snapshot.get_blocks(self.did, cids)

    def put(self, cid: CID, data: bytes) -> None:
        raise TypeError("a snapshot is read-only")

    def put_many(self, blocks: Iterable[tuple[CID, bytes]]) -> None:
        raise TypeError("a snapshot is read-only")

    def delete_many(self, cids: Iterable[CID]) -> None:
        raise TypeError("a snapshot is read-only")


# -- getRepo ----------------------------------------------------------------------------


async def get_repo(ctx: XrpcContext) -> Output:
    p = pds(ctx)
    did = ctx.params["did"]
    since = ctx.params.get("since")
    _available(ctx, p, did)
    snapshot = p.db.snapshot()
    try:
        head = _head(snapshot, did)
        if since is None:
            chunks = _whole_repo(snapshot, did, head)
        else:
            chunks = write_car([head], _diff_blocks(snapshot, did, head, since))
    except BaseException:
        snapshot.close()
        raise
    return Output(_stream(chunks, snapshot), CAR_MIME)


def _whole_repo(snapshot: ReadSnapshot, did: str, head: CID) -> Iterator[bytes]:
    """The whole repo as CAR chunks: the commit, then every other block the
    account holds, straight from one range scan (no tree walk).

    The writer keeps the block table equal to the current commit's blocks
    (each commit deletes the previous commit block and the MST nodes and
    records it took out), so this is the commit, its MST nodes and its
    records. They come in CID order rather than tree order: readers must
    accept any block order (``spec/repository.md`` section 7).
    """
    commit = snapshot.get_block(did, head)
    if commit is None:
        raise MissingBlock(f"commit block {head} is missing", head)
    head_bytes = head.bytes
    rows = snapshot.block_rows(did)

    def chunks() -> Iterator[bytes]:
        yield encode_car_header([head]) + car_sections([(head_bytes, commit)])
        while batch := rows.fetchmany(EXPORT_BATCH_ROWS):
            yield car_sections(row for row in batch if row[0] != head_bytes)

    return chunks()


def _diff_blocks(
    snapshot: ReadSnapshot, did: str, head: CID, since: str
) -> Iterator[tuple[CID, bytes]]:
    """The current commit, then every block written by a revision after ``since``
    and every record written after it (whose block may be older)."""
    commit = snapshot.get_block(did, head)
    if commit is None:
        raise MissingBlock(f"commit block {head} is missing", head)
    yield head, commit
    seen = {head}
    for cid, data in snapshot.blocks_since(did, since):
        if cid not in seen:
            seen.add(cid)
            yield cid, data
    for cid, data in snapshot.record_blocks_since(did, since):
        if cid not in seen:
            seen.add(cid)
            yield cid, data


def _take(chunks: Iterator[bytes]) -> bytes:
    """The next ~:data:`SNAPSHOT_READ_BYTES` of the CAR (b"" at the end)."""
    parts: list[bytes] = []
    size = 0
    for chunk in chunks:
        parts.append(chunk)
        size += len(chunk)
        if size >= SNAPSHOT_READ_BYTES:
            break
    return b"".join(parts)


async def _stream(chunks: Iterator[bytes], snapshot: ReadSnapshot) -> AsyncIterator[bytes]:
    """Pull the CAR out of the snapshot in worker threads; close it when done or dropped."""
    pending: asyncio.Future[bytes] | None = None
    try:
        while True:
            pending = asyncio.ensure_future(asyncio.to_thread(_take, chunks))
            # shielded: if the client goes away, the read in flight finishes first
            data = await asyncio.shield(pending)
            pending = None
            if not data:
                return
            yield data
    except Exception:
        log.exception("repo export failed mid-stream")
        raise
    finally:
        if pending is not None and not pending.done():
            pending.add_done_callback(lambda f: _close_after(f, snapshot))
        else:
            snapshot.close()


def _close_after(future: asyncio.Future[bytes], snapshot: ReadSnapshot) -> None:
    if not future.cancelled():
        future.exception()  # retrieved: an abandoned read's failure is not news
    snapshot.close()


# -- heads, proofs and blocks -------------------------------------------------------------


async def get_latest_commit(ctx: XrpcContext) -> dict[str, Any]:
    p = pds(ctx)
    did = ctx.params["did"]
    _available(ctx, p, did)
    root = p.db.repo_root(did)
    if root is None:
        raise RepoNotFound(f"Could not find root for DID: {did}")
    return {"cid": str(root[0]), "rev": root[1]}


async def get_record(ctx: XrpcContext) -> Output:
    p = pds(ctx)
    params = ctx.params
    did = params["did"]
    _available(ctx, p, did)
    if p.db.record_takedown(did, params["collection"], params["rkey"]) is not None:
        uri = f"at://{did}/{params['collection']}/{params['rkey']}"
        raise RecordNotFound(f"Could not locate record: {uri}")
    with p.db.snapshot() as snapshot:
        head = _head(snapshot, did)
        repo = Repo.load(_SnapshotBlocks(snapshot, did), head, did=did)
        proof = repo.record_proof(params["collection"], params["rkey"])
    return Output(proof, CAR_MIME)


async def get_blocks(ctx: XrpcContext) -> Output:
    p = pds(ctx)
    did = ctx.params["did"]
    _available(ctx, p, did)
    wanted = list(dict.fromkeys(CID.from_str(c) for c in ctx.params["cids"]))
    found = p.db.get_blocks(did, wanted)
    missing = [str(c) for c in wanted if c not in found]
    if missing:
        raise MissingBlock(f"Could not find cids: {', '.join(missing)}")
    return Output(car_bytes([], ((c, found[c]) for c in wanted)), CAR_MIME)


# -- blobs ------------------------------------------------------------------------------------


async def get_blob(ctx: XrpcContext) -> Response:
    p = pds(ctx)
    did = ctx.params["did"]
    account = _available(ctx, p, did)
    cid = CID.from_str(ctx.params["cid"])
    row = p.db.blob(did, cid)
    if row is None or not row.permanent or p.db.blob_takedown(did, cid) is not None:
        raise BlobNotFound("Blob not found")
    request = ctx.request
    headers = request.headers
    # a blob of an inactive account reaches only its owner or the operator: not for caches
    cache: dict[str, str] = {} if account.active else {"cache_control": "private, no-store"}
    return await blob_response(
        p.blobs,
        did,
        cid,
        row.mime_type,
        headers.get("range"),
        if_range=headers.get("if-range"),
        if_none_match=headers.get("if-none-match"),
        head=request.scope.get("method") == "HEAD",
        **cache,
    )


async def list_blobs(ctx: XrpcContext) -> dict[str, Any]:
    p = pds(ctx)
    params = ctx.params
    did = params["did"]
    _available(ctx, p, did)
    limit: int = params["limit"]
    cursor = params.get("cursor")
    cids = sorted(str(cid) for cid in p.db.referenced_blob_cids(did, params.get("since")))
    if cursor is not None:
        cids = [c for c in cids if c > cursor]
    page = cids[:limit]
    out: dict[str, Any] = {"cids": page}
    if len(cids) > limit:
        out["cursor"] = page[-1]
    return out


# -- hosting status -------------------------------------------------------------------------


def _status(account: AccountRow) -> dict[str, Any]:
    if account.active:
        return {"active": True}
    return {"active": False, "status": account.status}


async def list_repos(ctx: XrpcContext) -> dict[str, Any]:
    p = pds(ctx)
    limit = ctx.params["limit"]
    rows = p.db.list_accounts(limit, ctx.params.get("cursor"))
    repos = [
        {
            "did": account.did,
            "head": str(CID.from_bytes(root[0])),
            "rev": root[1],
            **_status(account),
        }
        for account, root in rows
        if root is not None  # an account whose repo is not there yet
    ]
    out: dict[str, Any] = {"repos": repos}
    if len(rows) == limit:
        last = rows[-1][0]
        out["cursor"] = f"{last.created_at}::{last.did}"
    return out


async def get_repo_status(ctx: XrpcContext) -> dict[str, Any]:
    p = pds(ctx)
    did = ctx.params["did"]
    account = p.db.account(did)
    if account is None:
        if p.db.deleted_at(did) is not None:
            return {"did": did, "active": False, "status": "deleted"}
        raise RepoNotFound(f"Could not find user: {did}")
    out: dict[str, Any] = {"did": did, **_status(account)}
    if account.active:
        root = p.db.repo_root(did)
        if root is not None:
            out["rev"] = root[1]
    return out
