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
come from the record index, each in one SQL statement.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from roost import cbor
from roost.cid import CID
from roost.errors import (
    AuthRequired,
    IdentityError,
    InvalidSwap,
    PlcError,
    RecordNotFound,
    RepoDeactivated,
    RepoError,
    RepoSuspended,
    RepoTakendown,
    RoostError,
    ValidationError,
)
from roost.identity import DidDocument
from roost.limits import MAX_RECORD_BYTES
from roost.ratelimit import RateLimit
from roost.repo import MAX_COMMIT_OPS, CommitData, Repo, Write
from roost.xrpc import XrpcContext, XrpcRouter

from pds.api.server import ACCESS
from pds.context import PdsContext, pds, require_self, resolve_repo
from pds.sqlite import AccountRow, PdsDatabase
from pds.writer import WriteContext

__all__ = [
    "WRITE_LIMITS",
    "WRITE_POINTS",
    "PreparedRecord",
    "inactive_error",
    "prepare_record",
    "register",
]

_APPLY_WRITES: Final = "com.atproto.repo.applyWrites"

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


# -- shared checks -----------------------------------------------------------------


def inactive_error(account: AccountRow) -> RoostError:
    """The error for reaching an account that is not active, by its status."""
    if account.status == "takendown":
        return RepoTakendown(f"Repo has been takendown: {account.did}")
    if account.status == "suspended":
        return RepoSuspended(f"Repo has been suspended: {account.did}")
    return RepoDeactivated(f"Repo has been deactivated: {account.did}")


def _writable(ctx: XrpcContext, p: PdsContext, repo: str) -> AccountRow:
    """The caller's own, active account named by ``repo``."""
    account = resolve_repo(p, repo)
    require_self(ctx, account)
    if not account.active:
        raise inactive_error(account)
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
    """A record ready to write: its data-model value, CID and validation outcome."""

    value: dict[str, Any]
    cid: CID
    validation_status: str | None


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
    return PreparedRecord(record, CID.for_cbor_bytes(block), status)


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


# -- the writer job ---------------------------------------------------------------------

#: Given the repo as of the jobs before, the writes to commit (None: nothing to do).
Build = Callable[[Repo], "list[Write] | None"]


async def _write(
    p: PdsContext, account: AccountRow, swap_commit: CID | None, build: Build
) -> CommitData | None:
    did = account.did
    key = p.signing_key(account)

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
        return w.commit(did, key, writes, swap_commit)

    result: CommitData | None = await p.writer.submit(job)
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
        p, account, swap_commit, lambda repo: [Write.create(collection, rkey, record.value)]
    )
    out: dict[str, Any] = {
        "uri": _uri(account.did, collection, rkey),
        "cid": str(record.cid),
        **_commit_meta(data),
    }
    if record.validation_status is not None:
        out["validationStatus"] = record.validation_status
    return out


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

    data = await _write(p, account, swap_commit, build)
    out: dict[str, Any] = {
        "uri": _uri(account.did, collection, rkey),
        "cid": str(record.cid),
        **_commit_meta(data),
    }
    if record.validation_status is not None:
        out["validationStatus"] = record.validation_status
    return out


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
        result: dict[str, Any] = {
            "$type": f"{_APPLY_WRITES}#{kind}Result",
            "uri": _uri(did, collection, rkey),
            "cid": str(record.cid),
        }
        if record.validation_status is not None:
            result["validationStatus"] = record.validation_status
        results.append(result)
    _charge(ctx, [w.action for w in writes])
    data = await _write(p, account, _cid(body.get("swapCommit")), lambda repo: writes)
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
    if not did.startswith("did:plc:"):
        raise RoostError(f"Could not resolve DID: {did}")
    try:
        raw = await p.plc.get_document(did)
        doc = DidDocument.parse(raw, did=did)
    except (IdentityError, PlcError) as exc:
        raise RoostError(f"Could not resolve DID: {exc.message}") from None
    return {
        "handle": account.handle,
        "did": did,
        "didDoc": raw,
        "collections": p.db.list_collections(did),
        "handleIsCorrect": doc.handle == account.handle,
    }
