"""``com.atproto.repo.*``: writing and reading records of the PDS's own repos.

Writes (``createRecord``, ``putRecord``, ``deleteRecord``, ``applyWrites``)
need the account's own access token (any access scope, app passwords
included); the ``repo`` named (DID or handle) must be the caller and active.
Each request becomes one job of the single writer: the job re-reads the
repo as of the jobs before it, checks the swaps, and makes one signed
commit, so a write is atomic and acknowledged only once durable.

Record handling, as the reference PDS does it (``spec/lexicon.md`` section 6):

- the JSON record becomes a data-model value (no floats, valid ``$link`` /
  ``$bytes`` / blobs); a missing ``$type`` is filled with the collection, any
  other ``$type`` is refused;
- ``validate: true`` needs a known record lexicon; unset validates when the
  lexicon is known (``validationStatus`` ``valid``) and accepts otherwise
  (``unknown``); ``false`` skips the lexicon (no ``validationStatus``);
  when validating, the record key must also fit the lexicon's key type;
- ``rkey`` defaults to a fresh TID.

Swaps: ``swapCommit`` must name the current head; ``putRecord``'s
``swapRecord`` names the record CID expected now, ``null`` meaning "must not
exist"; ``deleteRecord``'s ``swapRecord`` likewise. A failed swap is
``InvalidSwap`` and changes nothing. ``putRecord`` of an identical record and
``deleteRecord`` of a missing record succeed without a commit (no
``commit`` in the answer), after the swaps are checked.

Reads (``getRecord``, ``listRecords``, ``describeRepo``) need no auth and
come from the record index, each in one SQL statement; records the operator
took down (``com.atproto.admin.updateSubjectStatus`` on a ``strongRef``) are
left out, as if absent. The takedown holds for the record's AT-URI, whatever
is written there later, until it is lifted.

Blobs (``spec/data-model.md`` section 5). ``uploadBlob`` streams the body
into the blob store's temporary area (the config's ``max_blob_bytes``,
``PayloadTooLarge`` past it) and records a *temporary* blob row. A record
write finds every blob reference in its records (``$type: blob`` objects
and legacy ``{cid, mimeType}`` ones); each must be a blob of this account
(else ``BlobNotFound``) whose stored MIME type and size are the ones the
reference claims (else ``InvalidMimeType`` / ``InvalidSize``; the lexicon's
``accept`` / ``maxSize`` were checked on the reference by validation). The
commit's transaction then records ``record_blob`` rows and marks the blobs
permanent; an update or delete forgets the old record's references and
deletes the rows, then the files, of blobs no record of the account
references any more. ``listMissingBlobs`` lists referenced blobs the
account does not hold (after an import, until they are uploaded).

Crash safety of temporary -> permanent: **the file moves first, the row
second.** Before the write is submitted, each temporary blob's file is
renamed into the account's directory (atomic, fsynced); the commit then
marks the row permanent in the same transaction as the record. So an
acknowledged write always has its blob files in place. A crash (or a
failed write) between the two leaves a file in the account directory with
a row still temporary: it is not served (only permanent rows are), a retry
finds it already in place (the move is idempotent), and if nothing ever
references it the orphan clean-up deletes the row and then the file. The
reverse order (row first) could acknowledge a write whose blob is still in
the temporary area and lose it to the clean-up. Deleting a blob is the
mirror image: the row goes in the transaction, the file after it; a crash
in between leaves a file without a row, which the clean-up's disk sweep
removes. File moves and deletions of an account happen under a per-account
lock and re-check the row under it, so a deletion never races a move of
the same blob.

Orphan clean-up (:func:`collect_blob_garbage`, run by the app every
:data:`BLOB_GC_INTERVAL_S` and callable by the operator): finishes moves
cut short by a crash, deletes temporary blobs no record referenced within
:data:`~pds.blobstore.TEMP_GRACE_SECONDS`, untracked temporary files, and
permanent files with no row.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import partial
from typing import Any, Final

from roost import cbor
from roost.auth import SessionCredentials
from roost.cid import CID
from roost.errors import (
    AuthRequired,
    CidError,
    InvalidSwap,
    PayloadTooLarge,
    RecordNotFound,
    RepoDeactivated,
    RepoError,
    RepoSuspended,
    RepoTakendown,
    RoostError,
    ValidationError,
)
from roost.limits import MAX_RECORD_BYTES
from roost.ratelimit import RateLimit
from roost.repo import MAX_COMMIT_OPS, CommitData, Repo, Write
from roost.xrpc import XrpcContext, XrpcRouter

from pds.api.server import ACCESS
from pds.blobstore import TEMP_GRACE_SECONDS, BlobNotFound, InvalidBlobKey, UploadedBlob
from pds.context import (
    PdsContext,
    UnresolvableDid,
    pds,
    require_active,
    require_self,
    resolve_did_document,
    resolve_repo,
)
from pds.sqlite import AccountRow, BlobRow, PdsDatabase, Statement
from pds.writer import WriteContext, utc_now

__all__ = [
    "BLOB_GC_INTERVAL_S",
    "UPLOAD_MAX_BODY",
    "WRITE_LIMITS",
    "WRITE_POINTS",
    "BlobLocks",
    "BlobRef",
    "InvalidMimeType",
    "InvalidSize",
    "PreparedRecord",
    "blob_locks",
    "collect_blob_garbage",
    "find_blob_refs",
    "inactive_error",
    "prepare_record",
    "register",
    "run_blob_gc",
]

log = logging.getLogger(__name__)

_APPLY_WRITES: Final = "com.atproto.repo.applyWrites"
#: The router's cap on an upload body; the real limit is the config's
#: ``max_blob_bytes``, checked by the handler (the router is built before the config is known).
UPLOAD_MAX_BODY: Final = 1 << 62
#: How often the app runs the orphan clean-up (the first run is at start-up).
BLOB_GC_INTERVAL_S: Final = 3600.0
#: Rows handled per step of a clean-up pass.
_GC_BATCH: Final = 500

#: Repo writes per account (reference PDS): points per hour and per day.
WRITE_LIMITS: Final = (
    RateLimit("repo-write-hour", 5000, 3600, per="account"),
    RateLimit("repo-write-day", 35_000, 86_400, per="account"),
)
#: What each kind of write costs against :data:`WRITE_LIMITS`.
WRITE_POINTS: Final = {"create": 3, "update": 2, "delete": 1}


def register(router: XrpcRouter) -> None:
    router.procedure("com.atproto.repo.createRecord", auth=ACCESS)(create_record)
    router.procedure("com.atproto.repo.putRecord", auth=ACCESS)(put_record)
    router.procedure("com.atproto.repo.deleteRecord", auth=ACCESS)(delete_record)
    router.procedure(_APPLY_WRITES, auth=ACCESS)(apply_writes)
    router.query("com.atproto.repo.getRecord")(get_record)
    router.query("com.atproto.repo.listRecords")(list_records)
    router.query("com.atproto.repo.describeRepo")(describe_repo)
    router.procedure(
        "com.atproto.repo.uploadBlob", auth=ACCESS, max_body=UPLOAD_MAX_BODY, stream_input=True
    )(upload_blob)
    router.query("com.atproto.repo.listMissingBlobs", auth=ACCESS)(list_missing_blobs)


# -- shared checks -----------------------------------------------------------------


def inactive_error(account: AccountRow) -> RoostError:
    """The error for reaching an account that is not active, by its status."""
    if account.status == "takendown":
        return RepoTakendown(f"Repo has been takendown: {account.did}")
    if account.status == "suspended":
        return RepoSuspended(f"Repo has been suspended: {account.did}")
    return RepoDeactivated(f"Repo has been deactivated: {account.did}")


def _writable(ctx: XrpcContext, p: PdsContext, repo: str) -> AccountRow:
    """The caller's own, active account named by ``repo`` (a deactivated one is
    ``401 AccountDeactivated``: its holder may have moved to another host)."""
    account = resolve_repo(p, repo)
    require_self(ctx, account)
    require_active(account)
    return account


def _readable(p: PdsContext, repo: str) -> AccountRow:
    account = resolve_repo(p, repo)
    if not account.active:
        raise inactive_error(account)
    return account


def _cid(value: str | None) -> CID | None:
    return CID.from_str(value) if value is not None else None


def _uri(did: str, collection: str, rkey: str) -> str:
    return f"at://{did}/{collection}/{rkey}"


def _commit_meta(data: CommitData | None) -> dict[str, Any]:
    return {} if data is None else {"commit": {"cid": str(data.cid), "rev": data.rev}}


def _charge(ctx: XrpcContext, actions: Sequence[str]) -> None:
    cost = sum(WRITE_POINTS[a] for a in actions)
    if cost:
        for limit in WRITE_LIMITS:
            ctx.rate_limit(limit, cost=cost)


# -- records ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PreparedRecord:
    """A record ready to write: its data-model value, CID, validation outcome
    and the blobs it references."""

    value: dict[str, Any]
    cid: CID
    validation_status: str | None
    blobs: tuple[BlobRef, ...] = ()


def prepare_record(
    p: PdsContext, collection: str, rkey: str, value: Any, validate: bool | None
) -> PreparedRecord:
    """Convert, type and validate one record for ``collection/rkey`` (module docstring)."""
    record = cbor.record_from_json(value)
    type_ = record.get("$type")
    if type_ is None:
        record["$type"] = collection
    elif type_ != collection:
        raise ValidationError(f"Invalid $type: expected {collection}, got {type_}", "record")
    status: str | None = None
    if validate is not False:
        status = _validate(p, collection, rkey, record, required=validate is True)
    block = cbor.encode(record)
    if len(block) > MAX_RECORD_BYTES:
        raise RepoError(f"record is {len(block)} bytes, over the limit of {MAX_RECORD_BYTES}")
    return PreparedRecord(
        record, CID.for_cbor_bytes(block), status, tuple(find_blob_refs(record))
    )


def _validate(
    p: PdsContext, collection: str, rkey: str, record: dict[str, Any], *, required: bool
) -> str:
    doc = p.catalog.get(collection)
    if doc is None:
        if required:
            raise ValidationError(f"Lexicon not found: {collection}", "record")
        return "unknown"
    if doc["defs"].get("main", {}).get("type") != "record":
        raise ValidationError(f"{collection} is not a record lexicon", "record")
    p.catalog.validate_record_key(collection, rkey)
    p.catalog.validate_record(collection, record)
    return "valid"


# -- blob references --------------------------------------------------------------------


class InvalidMimeType(RoostError):
    """A record's blob reference names another MIME type than the stored blob's."""

    error = "InvalidMimeType"


class InvalidSize(RoostError):
    """A record's blob reference names another size than the stored blob's."""

    error = "InvalidSize"


@dataclass(frozen=True, slots=True)
class BlobRef:
    """A blob reference found in a record. ``size`` is None for the legacy form."""

    cid: CID
    mime_type: str
    size: int | None


_LEGACY_BLOB_KEYS: Final = frozenset({"cid", "mimeType"})


def find_blob_refs(value: Any) -> list[BlobRef]:
    """Every blob reference in a data-model value, in document order.

    Current-form blobs (``$type: "blob"``, ``ref`` a CID link) and legacy ones
    (an object of exactly ``cid`` (a CID string) and ``mimeType``); the same
    blob referenced twice is listed twice.
    """
    out: list[BlobRef] = []
    stack: list[Any] = [value]
    while stack:
        v = stack.pop()
        t = type(v)
        if t is dict:
            if cbor.is_blob(v):
                ref, mime, size = v.get("ref"), v.get("mimeType"), v.get("size")
                if type(ref) is CID and type(mime) is str and type(size) is int:
                    out.append(BlobRef(ref, mime, size))
                continue
            if v.keys() == _LEGACY_BLOB_KEYS:
                legacy = _legacy_ref(v)
                if legacy is not None:
                    out.append(legacy)
                    continue
            stack.extend(reversed(list(v.values())))
        elif t is list:
            stack.extend(reversed(v))
    return out


def _legacy_ref(v: dict[str, Any]) -> BlobRef | None:
    text, mime = v["cid"], v["mimeType"]
    if type(text) is not str or type(mime) is not str or not mime:
        return None
    try:
        return BlobRef(CID.from_str(text), mime, None)
    except CidError:
        return None


def _blob_missing(cid: CID) -> BlobNotFound:
    return BlobNotFound(f"Could not find blob: {cid}")


def _check_blob(ref: BlobRef, row: BlobRow | None) -> BlobRow:
    """The stored blob ``ref`` names, if it is there and matches the reference."""
    if row is None:
        raise _blob_missing(ref.cid)
    if ref.mime_type != row.mime_type:
        raise InvalidMimeType(
            "Referenced Mimetype does not match stored blob."
            f" Expected: {row.mime_type}, Got: {ref.mime_type}"
        )
    if ref.size is not None and ref.size != row.size:
        raise InvalidSize(
            f"Referenced Size does not match stored blob. Expected: {row.size}, Got: {ref.size}"
        )
    return row


class BlobLocks:
    """One lock per account for moving and deleting its blob files.

    Whoever moves a file into place or deletes one re-reads the blob's row
    while holding the account's lock: a deletion (row gone) and a move (row
    there) of the same blob never interleave.
    """

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @asynccontextmanager
    async def hold(self, did: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(did) or (asyncio.Lock(), 0)
        self._locks[did] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[did]
            if users > 1:
                self._locks[did] = (lock, users - 1)
            else:
                del self._locks[did]


def blob_locks(p: PdsContext) -> BlobLocks:
    """The running PDS's blob locks (kept in its context)."""
    locks = p.extra.get("blob_locks")
    if not isinstance(locks, BlobLocks):
        locks = p.extra["blob_locks"] = BlobLocks()
    return locks


async def _place_blobs(p: PdsContext, did: str, refs: Iterable[BlobRef]) -> frozenset[CID]:
    """Check the blobs a write references; move the temporary ones into place.

    Returns the CIDs whose files this call moved (their rows are still
    temporary until the write commits). Raises before moving anything if a
    reference is missing or does not match.
    """
    wanted: dict[CID, BlobRef] = {}
    for ref in refs:
        _check_blob(ref, p.db.blob(did, ref.cid))
        wanted.setdefault(ref.cid, ref)
    moved: set[CID] = set()
    for cid in wanted:
        row = p.db.blob(did, cid)
        if row is None or row.permanent:
            continue  # gone since: the job reports it; permanent: nothing to move
        async with blob_locks(p).hold(did):
            row = p.db.blob(did, cid)
            if row is None:
                raise _blob_missing(cid)
            if row.temp_key is None:
                continue
            try:
                await p.blobs.make_permanent(did, row.temp_key, cid)
            except (BlobNotFound, InvalidBlobKey):
                raise _blob_missing(cid) from None
            moved.add(cid)
    return frozenset(moved)


def _verify_blobs(
    db: PdsDatabase, did: str, refs: Mapping[str, Sequence[BlobRef]], moved: frozenset[CID]
) -> dict[CID, BlobRow]:
    """In the writer job: the referenced blobs as committed, each in place."""
    rows: dict[CID, BlobRow] = {}
    for path_refs in refs.values():
        for ref in path_refs:
            row = _check_blob(ref, db.blob(did, ref.cid))
            if not row.permanent and ref.cid not in moved:
                raise _blob_missing(ref.cid)  # re-uploaded since its file was checked
            rows[ref.cid] = row
    return rows


def _execute(w: WriteContext, statements: Iterable[Statement]) -> None:
    for sql, params in statements:
        w.execute(sql, *params)


def _index_blobs(
    w: WriteContext,
    did: str,
    data: CommitData,
    refs: Mapping[str, Sequence[BlobRef]],
    rows: Mapping[CID, BlobRow],
) -> None:
    """The commit's record_blob rows: old references out, new ones in."""
    now = utc_now()
    for op in data.ops:
        _execute(w, PdsDatabase.unlink_record_blobs_sql(did, op.path))
        if op.cid is None:
            continue
        for ref in refs.get(op.path, ()):
            _execute(w, PdsDatabase.link_record_blob_sql(did, op.path, rows[ref.cid], now))


async def _drop_unreferenced(p: PdsContext, did: str, cids: Iterable[CID]) -> None:
    """Delete the files of blobs whose rows a committed write removed."""
    for cid in cids:
        async with blob_locks(p).hold(did):
            if p.db.blob(did, cid) is not None:
                continue  # still (or again) referenced or uploaded
            try:
                await p.blobs.delete(did, cid)
            except OSError:  # the clean-up's disk sweep retries
                log.warning("blob delete failed did=%s cid=%s", did, cid, exc_info=True)


# -- the writer job ---------------------------------------------------------------------

#: Given the repo as of the jobs before, the writes to commit (None: nothing to do).
Build = Callable[[Repo], "list[Write] | None"]


async def _write(
    p: PdsContext,
    account: AccountRow,
    swap_commit: CID | None,
    build: Build,
    blobs: Mapping[str, Sequence[BlobRef]] | None = None,
) -> CommitData | None:
    """Commit what ``build`` returns; ``blobs``: the references of each written path."""
    did = account.did
    key = p.signing_key(account)
    refs: Mapping[str, Sequence[BlobRef]] = blobs or {}
    moved = await _place_blobs(p, did, (r for rs in refs.values() for r in rs))
    dropped: set[CID] = set()

    def job(w: WriteContext) -> CommitData | None:
        _check_still_active(w.db, did)
        repo = w.repo(did)
        if repo is None:
            raise RepoError(f"{did} has no repository")
        if swap_commit is not None and swap_commit != repo.cid:
            raise InvalidSwap(f"Commit was at {repo.cid}")
        writes = build(repo)
        if writes is None:
            return None
        written = {w_.path for w_ in writes if w_.action != "delete"}
        rows = _verify_blobs(w.db, did, {k: v for k, v in refs.items() if k in written}, moved)
        data = w.commit(did, key, writes, swap_commit)
        _index_blobs(w, did, data, refs, rows)
        dropped.update(
            w.db.blobs_at_paths(did, (op.path for op in data.ops if op.prev is not None))
        )
        return data

    result: CommitData | None = await p.writer.submit(job)
    if dropped:
        await _drop_unreferenced(p, did, dropped)
    return result


def _check_still_active(db: PdsDatabase, did: str) -> None:
    account = db.account(did)
    if account is None:
        raise AuthRequired("Account not found")
    if not account.active:
        raise inactive_error(account)


def _swap_failed(path: str, current: CID | None) -> InvalidSwap:
    return InvalidSwap(f"Record at {path} was at {current if current is not None else 'nothing'}")


# -- createRecord / putRecord / deleteRecord --------------------------------------------


def _written(account: Any, collection: str, rkey: str, record: Any, data: Any) -> dict[str, Any]:
    """The output of createRecord/putRecord for the record just written."""
    out: dict[str, Any] = {
        "uri": _uri(account.did, collection, rkey),
        "cid": str(record.cid),
        **_commit_meta(data),
    }
    if record.validation_status is not None:
        out["validationStatus"] = record.validation_status
    return out


async def create_record(ctx: XrpcContext) -> dict[str, Any]:
    p = pds(ctx)
    body = ctx.input
    account = _writable(ctx, p, body["repo"])
    collection = body["collection"]
    rkey = body.get("rkey") or p.writer.clock.next_str()
    record = prepare_record(p, collection, rkey, body["record"], body.get("validate"))
    swap_commit = _cid(body.get("swapCommit"))
    _charge(ctx, ["create"])
    data = await _write(
        p,
        account,
        swap_commit,
        lambda repo: [Write.create(collection, rkey, record.value)],
        {f"{collection}/{rkey}": record.blobs},
    )
    return _written(account, collection, rkey, record, data)


async def put_record(ctx: XrpcContext) -> dict[str, Any]:
    p = pds(ctx)
    body = ctx.input
    account = _writable(ctx, p, body["repo"])
    collection, rkey = body["collection"], body["rkey"]
    record = prepare_record(p, collection, rkey, body["record"], body.get("validate"))
    swap_commit = _cid(body.get("swapCommit"))
    check_swap = "swapRecord" in body
    expected = _cid(body.get("swapRecord"))
    path = f"{collection}/{rkey}"
    _charge(ctx, ["update"])

    def build(repo: Repo) -> list[Write] | None:
        current = repo.get_record_cid(collection, rkey)
        if check_swap and current != expected:
            raise _swap_failed(path, current)
        if current == record.cid:
            return None  # the same record is already there
        if current is None:
            return [Write.create(collection, rkey, record.value)]
        return [Write.update(collection, rkey, record.value)]

    data = await _write(p, account, swap_commit, build, {path: record.blobs})
    return _written(account, collection, rkey, record, data)


async def delete_record(ctx: XrpcContext) -> dict[str, Any]:
    p = pds(ctx)
    body = ctx.input
    account = _writable(ctx, p, body["repo"])
    collection, rkey = body["collection"], body["rkey"]
    swap_commit = _cid(body.get("swapCommit"))
    expected = _cid(body.get("swapRecord"))
    path = f"{collection}/{rkey}"
    _charge(ctx, ["delete"])

    def build(repo: Repo) -> list[Write] | None:
        current = repo.get_record_cid(collection, rkey)
        if expected is not None and current != expected:
            raise _swap_failed(path, current)
        if current is None:
            return None  # already absent: nothing to commit
        return [Write.delete(collection, rkey)]

    return _commit_meta(await _write(p, account, swap_commit, build))


# -- applyWrites --------------------------------------------------------------------------


async def apply_writes(ctx: XrpcContext) -> dict[str, Any]:
    p = pds(ctx)
    body = ctx.input
    account = _writable(ctx, p, body["repo"])
    items = body["writes"]
    if len(items) > MAX_COMMIT_OPS:
        raise RoostError(f"Too many writes. Max: {MAX_COMMIT_OPS}")
    validate = body.get("validate")
    did = account.did
    writes: list[Write] = []
    results: list[dict[str, Any]] = []
    blobs: dict[str, tuple[BlobRef, ...]] = {}
    for item in items:
        kind = item["$type"].rpartition("#")[2]
        collection = item["collection"]
        if kind == "delete":
            writes.append(Write.delete(collection, item["rkey"]))
            results.append({"$type": f"{_APPLY_WRITES}#deleteResult"})
            continue
        if kind not in ("create", "update"):
            raise RoostError(f"Action not supported: {item['$type']}")
        rkey = item.get("rkey") or p.writer.clock.next_str()
        record = prepare_record(p, collection, rkey, item["value"], validate)
        make = Write.create if kind == "create" else Write.update
        writes.append(make(collection, rkey, record.value))
        blobs[f"{collection}/{rkey}"] = record.blobs
        result: dict[str, Any] = {
            "$type": f"{_APPLY_WRITES}#{kind}Result",
            "uri": _uri(did, collection, rkey),
            "cid": str(record.cid),
        }
        if record.validation_status is not None:
            result["validationStatus"] = record.validation_status
        results.append(result)
    _charge(ctx, [w.action for w in writes])
    data = await _write(p, account, _cid(body.get("swapCommit")), lambda repo: writes, blobs)
    return {**_commit_meta(data), "results": results}


# -- reads --------------------------------------------------------------------------------


async def get_record(ctx: XrpcContext) -> dict[str, Any]:
    p = pds(ctx)
    params = ctx.params
    account = _readable(p, params["repo"])
    collection, rkey = params["collection"], params["rkey"]
    uri = _uri(account.did, collection, rkey)
    found = p.db.record(account.did, collection, rkey)
    wanted = _cid(params.get("cid"))
    if found is None or (wanted is not None and found[0] != wanted):
        raise RecordNotFound(f"Could not locate record: {uri}")
    cid, block = found
    return {"uri": uri, "cid": str(cid), "value": cbor.decode(block)}


async def list_records(ctx: XrpcContext) -> dict[str, Any]:
    p = pds(ctx)
    params = ctx.params
    account = _readable(p, params["repo"])
    collection = params["collection"]
    limit = params["limit"]
    rows = p.db.list_records(
        account.did, collection, limit, params.get("cursor"), bool(params.get("reverse"))
    )
    out: dict[str, Any] = {
        "records": [
            {
                "uri": _uri(account.did, collection, rkey),
                "cid": str(cid),
                "value": cbor.decode(block),
            }
            for rkey, cid, block in rows
        ]
    }
    if len(rows) == limit:
        out["cursor"] = rows[-1][0]
    return out


async def describe_repo(ctx: XrpcContext) -> dict[str, Any]:
    p = pds(ctx)
    account = _readable(p, ctx.params["repo"])
    did = account.did
    try:
        doc = await resolve_did_document(p, did)
    except UnresolvableDid as exc:
        raise RoostError(exc.message) from None
    return {
        "handle": account.handle,
        "did": did,
        "didDoc": dict(doc.raw),
        "collections": p.db.list_collections(did),
        "handleIsCorrect": doc.handle == account.handle,
    }


# -- uploadBlob ------------------------------------------------------------------------------


async def upload_blob(ctx: XrpcContext) -> dict[str, Any]:
    p = pds(ctx)
    creds = ctx.auth
    if not isinstance(creds, SessionCredentials):  # pragma: no cover - ACCESS gives sessions
        raise AuthRequired("Authentication Required")
    did = creds.did
    if p.db.account(did) is None:
        raise AuthRequired("Account not found")
    # deactivated accounts may upload: a migration brings its blobs in before activating
    limit = p.config.max_blob_bytes
    declared = ctx.request.headers.get("content-length")
    if declared is not None and declared.strip().isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"blob is larger than {limit} bytes")
    uploaded = await p.blobs.upload(did, ctx.input, max_size=limit, mime_hint=ctx.encoding)
    try:
        mime_type, size = await _track_upload(p, did, uploaded)
    except BaseException:
        await _forget_upload(p, uploaded)
        raise
    return {"blob": {"$type": "blob", "ref": uploaded.cid, "mimeType": mime_type, "size": size}}


async def _forget_upload(p: PdsContext, uploaded: UploadedBlob) -> None:
    try:
        await p.blobs.delete_temp(uploaded.temp_key)
    except OSError:  # the clean-up removes it later
        log.warning("could not remove temporary blob key=%s", uploaded.temp_key, exc_info=True)


async def _track_upload(p: PdsContext, did: str, up: UploadedBlob) -> tuple[str, int]:
    """Record the upload; (MIME type, size) of the blob as the account now holds it.

    Bytes the account already holds permanently keep their row (the new file
    is dropped). Bytes that records already reference (an imported repo)
    become permanent at once: the file moves into place first, under the
    account's lock held until the row is committed (so the disk sweep never
    sees the moved file without its row).
    """

    def job(moved: bool) -> Callable[[WriteContext], BlobRow | None]:
        def track(w: WriteContext) -> BlobRow | None:
            row = w.db.blob(did, up.cid)
            if row is not None and row.permanent:
                return row
            w.execute(
                *_flat(
                    PdsDatabase.track_upload_sql(
                        did, up.cid, up.mime_type, up.size, up.temp_key, utc_now(), moved=moved
                    )
                )
            )
            return None

        return track

    existing: BlobRow | None = None
    moved = False
    if p.db.blob_referenced(did, up.cid):
        async with blob_locks(p).hold(did):
            current = p.db.blob(did, up.cid)
            if current is None or not current.permanent:
                await p.blobs.make_permanent(did, up.temp_key, up.cid)
                moved = True
                existing = await p.writer.submit(job(True))
    if not moved:
        existing = await p.writer.submit(job(False))
        if existing is not None:
            await _forget_upload(p, up)  # already held: this copy is not needed
    if existing is not None:
        return existing.mime_type, existing.size
    return up.mime_type, up.size


def _run_statement(w: WriteContext, *, statement: Statement) -> None:
    w.execute(*_flat(statement))


def _flat(statement: Statement) -> tuple[Any, ...]:
    """``(sql, params)`` as the arguments of ``WriteContext.execute``."""
    sql, params = statement
    return (sql, *params)


# -- listMissingBlobs ------------------------------------------------------------------------


async def list_missing_blobs(ctx: XrpcContext) -> dict[str, Any]:
    p = pds(ctx)
    creds = ctx.auth
    if not isinstance(creds, SessionCredentials):  # pragma: no cover - ACCESS gives sessions
        raise AuthRequired("Authentication Required")
    did = creds.did
    limit: int = ctx.params["limit"]
    cursor = ctx.params.get("cursor")
    missing = sorted((str(cid), path) for cid, path in p.db.missing_blobs(did))
    if cursor is not None:
        missing = [m for m in missing if m[0] > cursor]
    page = missing[:limit]
    out: dict[str, Any] = {
        "blobs": [{"cid": cid, "recordUri": f"at://{did}/{path}"} for cid, path in page]
    }
    if len(page) == limit and len(missing) > limit:
        out["cursor"] = page[-1][0]
    return out


# -- orphan clean-up -------------------------------------------------------------------------


def _iso(seconds: float) -> str:
    moment = datetime.fromtimestamp(seconds, timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


async def collect_blob_garbage(
    p: PdsContext, *, grace_s: float = TEMP_GRACE_SECONDS, sweep_disk: bool = True
) -> dict[str, int]:
    """One clean-up pass over every account's blobs; counts of what it did.

    1. ``settled``: temporary blobs that records reference (a move or upload
       cut short by a crash) are moved into place and marked permanent;
    2. ``expired``: temporary blobs no record referenced within ``grace_s``
       lose their row, then their files;
    3. ``temp_files``: temporary files older than ``grace_s`` that no row
       tracks (interrupted or superseded uploads);
    4. ``orphan_files`` (with ``sweep_disk``): permanent files without a row
       (a crash between a delete's commit and the file's removal).
    """
    stats = {"settled": 0, "expired": 0, "temp_files": 0, "orphan_files": 0}
    locks = blob_locks(p)

    for row in p.db.referenced_temp_blobs(_GC_BATCH):
        async with locks.hold(row.did):
            current = p.db.blob(row.did, row.cid)
            if current is None or current.temp_key is None:
                continue
            try:
                await p.blobs.make_permanent(row.did, current.temp_key, row.cid)
            except (BlobNotFound, InvalidBlobKey):
                log.warning("referenced blob lost did=%s cid=%s", row.did, row.cid)
                continue  # listed by listMissingBlobs until uploaded again
            settle = PdsDatabase.settle_temp_blob_sql(row.did, row.cid, current.temp_key)
            await p.writer.submit(partial(_run_statement, statement=settle))
        stats["settled"] += 1

    cutoff = _iso(time.time() - grace_s)
    for _ in range(10_000):  # bounded: each round removes what it found
        rows = p.db.stale_temp_blobs(cutoff, _GC_BATCH)
        if not rows:
            break
        drops = [PdsDatabase.drop_temp_blob_sql(r.did, r.cid, r.temp_key or "") for r in rows]

        def drop(w: WriteContext, drops: list[Statement] = drops) -> None:
            for statement in drops:
                w.execute(*_flat(statement))

        await p.writer.submit(drop)
        for r in rows:
            async with locks.hold(r.did):
                current = p.db.blob(r.did, r.cid)
                if current is None:
                    # a file moved for a write that never committed, if any
                    await p.blobs.delete(r.did, r.cid)
                    stats["expired"] += 1
                if (current is None or current.temp_key != r.temp_key) and r.temp_key:
                    await p.blobs.delete_temp(r.temp_key)
        if len(rows) < _GC_BATCH:
            break

    stats["temp_files"] = await p.blobs.cleanup_temp(grace_s)

    if sweep_disk:
        for did in p.db.account_dids():
            names = await p.blobs.list_cids(did)
            if not names:
                continue
            known = {str(cid) for cid in p.db.blob_cids(did)}
            for name in names:
                if name in known:
                    continue
                cid = CID.from_str(name)
                async with locks.hold(did):
                    if p.db.blob(did, cid) is None and await p.blobs.delete(did, cid):
                        stats["orphan_files"] += 1
    if any(stats.values()):
        log.info("blob clean-up %s", " ".join(f"{k}={v}" for k, v in stats.items()))
    return stats


async def run_blob_gc(p: PdsContext, interval_s: float = BLOB_GC_INTERVAL_S) -> None:
    """The app's periodic clean-up task: a pass at start-up, then every ``interval_s``."""
    while True:
        try:
            await collect_blob_garbage(p)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("blob clean-up failed")
        await asyncio.sleep(interval_s)
