"""``com.atproto.repo.importRepo``: take in a repo exported from another host.

``repository.md`` section 10 and ``account-migration.md``: the caller is the
account itself (a main-password session); the body is a repo CAR. It is
streamed (size-limited) into a staging store in memory, verified there (one
root, every block hash, ``commit.did`` is the account, canonical MST, valid
paths; record blocks may be missing and are skipped), then one writer job
replaces the account's repo: blocks, record index, the records' blob
references (which ``listMissingBlobs`` then reports until uploaded), and the
root.

The commit's signature must verify with a key the DID has held: the
``#atproto`` key of its current document (the old host's during a
migration), the account's key here (a re-import of an export), or, for
did:plc, any ``atproto`` key of the DID's operation log (a repo exported
before the DID moved). A CAR signed by anyone else is refused.

The imported commit was signed by the old host's key, so a fresh commit
over the same data is signed here with the account's key, with a rev above
both the imported one and the account's current one. ``#sync`` announces it
if the account is active; an account migrating in is deactivated and stays
silent until ``activateAccount`` (``account-migration.md`` section 6).

Cut for now: importing a ``since`` diff CAR (only whole repos are accepted;
re-importing a whole repo is idempotent in content).
"""

from __future__ import annotations

import asyncio
import tempfile
from typing import Any

from roost import cbor
from roost.blockstore import MemoryBlockStore
from roost.car import car_bytes
from roost.cid import CID
from roost.commit import sign_commit
from roost.crypto import PublicKey, parse_did_key
from roost.errors import CryptoError, PayloadTooLarge, PlcError, RoostError
from roost.mst import MST, NodeStore
from roost.repo import Repo, RepoSummary, import_car
from roost.xrpc import BodyStream, XrpcContext, XrpcRouter

from pds.api.repo import find_blob_refs
from pds.api.server import FULL_ACCESS
from pds.context import (
    PdsContext,
    UnresolvableDid,
    pds,
    require_self,
    resolve_did_document,
    resolve_repo,
)
from pds.sqlite import AccountRow
from pds.sqlite import AccountBlocks, PdsDatabase
from pds.writer import WriteContext

__all__ = ["MAX_IMPORT_BYTES", "register"]

#: Largest repo CAR accepted.
MAX_IMPORT_BYTES = 256 * 1024 * 1024
#: Imported CARs are kept in memory up to this size, then spooled to disk.
_SPOOL_BYTES = 8 * 1024 * 1024


def register(router: XrpcRouter) -> None:
    router.procedure(
        "com.atproto.repo.importRepo",
        auth=FULL_ACCESS,
        max_body=MAX_IMPORT_BYTES,
        stream_input=True,
    )(import_repo)


class _Staged:
    """A verified import: what the writer job stores."""

    def __init__(self, repo: Repo, summary: RepoSummary) -> None:
        self.repo = repo
        self.summary = summary
        #: (cid, bytes) of MST nodes and present records (not the old commit).
        self.blocks: dict[CID, bytes] = {}
        #: (collection, rkey, cid, blob cids) of present records.
        self.records: list[tuple[str, str, CID, list[CID]]] = []


def _stage(did: str, source: Any) -> _Staged:
    staging = MemoryBlockStore()
    try:
        repo, summary = import_car(staging, source, did=did, require_records=False)
    except PayloadTooLarge:
        raise
    except RoostError as exc:
        raise RoostError(f"Invalid repo CAR: {exc.message}") from None
    except (ValueError, EOFError):
        raise RoostError("Invalid repo CAR") from None
    if repo.did != did:
        raise RoostError(f"Imported repo is for {repo.did}, not {did}")
    staged = _Staged(repo, summary)
    for node in repo.tree.nodes():
        staged.blocks[node.cid] = node.block
    missing = {cid for _, cid in summary.missing_records}
    for path, cid in repo.tree.items():
        if cid in missing:
            continue
        data = staging.get(cid)
        if data is None:  # pragma: no cover - verify_repo listed it as missing
            continue
        staged.blocks[cid] = data
        collection, _, rkey = path.partition("/")
        try:
            record = cbor.decode(data)
        except RoostError:
            raise RoostError(f"Invalid repo CAR: record {path} is not DAG-CBOR") from None
        blobs = list(dict.fromkeys(ref.cid for ref in find_blob_refs(record)))
        staged.records.append((collection, rkey, cid, blobs))
    return staged


async def _read_body(stream: BodyStream) -> Any:
    spool = tempfile.SpooledTemporaryFile(max_size=_SPOOL_BYTES)
    try:
        async for chunk in stream:
            spool.write(chunk)
        spool.seek(0)
    except BaseException:
        spool.close()
        raise
    return spool


async def _did_keys(p: PdsContext, did: str) -> list[PublicKey]:
    """Signing keys the DID holds or has held, current first (see the module docstring)."""
    keys: list[PublicKey] = []
    try:
        doc = await resolve_did_document(p, did)
    except UnresolvableDid:
        doc = None
    if doc is not None and doc.signing_key is not None:
        keys.append(doc.signing_key)
    if did.startswith("did:plc:"):
        try:
            log = await p.plc.get_log(did)
        except (PlcError, RoostError):
            log = []
        for op in reversed(log):
            state = op.normalized()
            atproto = state.verification_methods.get("atproto") if state is not None else None
            if atproto is None:
                continue
            try:
                keys.append(parse_did_key(atproto))
            except CryptoError:
                continue
    return keys


async def _check_signature(p: PdsContext, account: AccountRow, staged: _Staged) -> None:
    commit = staged.repo.commit
    own = p.signing_key(account).public_key
    if commit.verify(own):
        return
    for key in await _did_keys(p, account.did):
        if commit.verify(key):
            return
    raise RoostError(
        f"Invalid repo CAR: the commit is not signed by a key of {account.did}"
    )


async def import_repo(ctx: XrpcContext) -> None:
    p: PdsContext = pds(ctx)
    creds = ctx.auth
    did = getattr(creds, "did", None)
    if not isinstance(did, str):
        raise RoostError("Authentication Required")
    account = resolve_repo(p, did)
    require_self(ctx, account)
    if not isinstance(ctx.input, BodyStream):
        raise RoostError("A repo CAR body is required")
    spool = await _read_body(ctx.input)
    try:
        staged = await asyncio.to_thread(_stage, did, spool)
    finally:
        spool.close()
    await _check_signature(p, account, staged)
    key = p.signing_key(account)

    def job(w: WriteContext) -> str:
        db: PdsDatabase = w.db
        current = w.repo(did)
        floor = staged.summary.rev
        if current is not None and current.rev > floor:
            floor = current.rev
        rev = str(w.writer.clock.next_after(floor))
        data_cid = staged.repo.commit.data
        commit = sign_commit(did, data_cid, rev, key)
        statements = list(PdsDatabase.clear_repo_sql(did))
        statements.append(PdsDatabase.put_block_sql(did, commit.cid, commit.block, rev))
        for cid, block in staged.blocks.items():
            statements.append(PdsDatabase.put_block_sql(did, cid, block, rev))
        for collection, rkey, cid, blobs in staged.records:
            statements.append(PdsDatabase.put_record_sql(did, collection, rkey, cid, rev))
            path = f"{collection}/{rkey}"
            for blob in blobs:
                statements.append(PdsDatabase.put_record_blob_sql(did, path, blob))
        statements.append(PdsDatabase.set_repo_root_sql(did, commit.cid, rev, data_cid))
        for sql, params in statements:
            w.execute(sql, *params)
        # Later jobs of this batch see the imported repo (its blocks pending in
        # the store until this transaction commits; rewriting them is harmless).
        blocks = AccountBlocks(db, did)
        blocks.pending.update(staged.blocks)
        blocks.pending[commit.cid] = commit.block
        tree = MST.load(NodeStore(blocks), data_cid)
        w.touched[did] = (Repo(blocks, commit, tree), blocks)
        current_account = db.account(did)
        if current_account is not None and current_account.active:
            w.event(
                did,
                "#sync",
                {
                    "did": did,
                    "rev": rev,
                    "blocks": car_bytes([commit.cid], {commit.cid: commit.block}),
                },
            )
        return rev

    try:
        await p.writer.submit(job)
    finally:
        p.writer.forget(did)
