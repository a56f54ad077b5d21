"""The operator's API (admin Basic auth): invite codes, accounts, moderation.

Account statuses kept in ``account.status``:

* ``active``;
* ``pending``: an application (sign-up mode "application") awaiting review;
* ``rejected``: an application the operator refused (``status_reason`` says why);
* ``deactivated``; ``takendown`` (``status_reason`` is the takedown's ``ref``).

``updateSubjectStatus`` on a ``repoRef`` drives them: ``takedown {applied}``
takes an account down or restores it; ``deactivated {applied: false}`` approves
a pending application (or reactivates), ``deactivated {applied: true, ref}``
on a pending application rejects it with ``ref`` as the reason. An approved
application of an account migrating in (its DID document does not name this
server yet) becomes ``deactivated``: its holder activates it once the
document is updated.

Records and blobs are taken down one by one: ``takedown`` on a
``com.atproto.repo.strongRef`` (the record's AT-URI; its ``cid`` is not
checked) hides the record from ``getRecord``, ``listRecords`` and
``sync.getRecord``; on a ``com.atproto.admin.defs#repoBlobRef`` it stops
``sync.getBlob`` serving the blob. ``ref`` is the reason, kept with it.
``getSubjectStatus`` answers for ``did``, ``uri`` or ``did`` + ``blob``.

``org.roost.admin.listOutbox`` lists the messages waiting for members
(confirmation tokens: roost sends no email), newest first.
"""

from __future__ import annotations

import json
import secrets
from typing import Any

from roost.auth import AdminAuth, Credentials
from roost.cid import CID
from roost.errors import AuthRequired, RecordNotFound, RoostError
from roost.syntax import AtUri
from roost.xrpc import XrpcContext, XrpcRouter

from pds.context import PdsContext, pds
from pds.passwords import hash_password_async
from pds.sqlite import AccountRow, PdsDatabase
from pds.writer import WriteContext, utc_now

__all__ = ["ADMIN", "register"]

#: Invite codes created in one call at most, and uses per code at most.
MAX_CODES_PER_CALL = 1_000
MAX_CODE_USES = 100_000
_REPO_REF = "com.atproto.admin.defs#repoRef"
_STRONG_REF = "com.atproto.repo.strongRef"
_BLOB_REF = "com.atproto.admin.defs#repoBlobRef"


class _Admin:
    """Admin Basic auth with the password of the running app's config."""

    def accepts(self, conn: Any) -> bool:
        value = conn.headers.get("authorization") or ""
        return bool(value.strip().lower().startswith("basic "))

    async def __call__(self, conn: Any, nsid: str) -> Credentials:
        password = conn.app.state.pds.config.admin_password
        if not password:
            raise AuthRequired("Admin authentication is not configured")
        return await AdminAuth(password)(conn, nsid)


ADMIN = _Admin()


def register(router: XrpcRouter) -> None:
    router.procedure("com.atproto.server.createInviteCode", auth=ADMIN)(create_invite_code)
    router.procedure("com.atproto.server.createInviteCodes", auth=ADMIN)(create_invite_codes)
    router.query("com.atproto.admin.getInviteCodes", auth=ADMIN)(get_invite_codes)
    router.procedure("com.atproto.admin.disableInviteCodes", auth=ADMIN)(disable_invite_codes)
    router.query("com.atproto.admin.getAccountInfo", auth=ADMIN)(get_account_info)
    router.query("com.atproto.admin.getAccountInfos", auth=ADMIN)(get_account_infos)
    router.query("com.atproto.admin.searchAccounts", auth=ADMIN)(search_accounts)
    router.procedure("com.atproto.admin.updateSubjectStatus", auth=ADMIN)(update_subject_status)
    router.query("com.atproto.admin.getSubjectStatus", auth=ADMIN)(get_subject_status)
    router.procedure("com.atproto.admin.deleteAccount", auth=ADMIN)(delete_account)
    router.procedure("com.atproto.admin.updateAccountPassword", auth=ADMIN)(
        update_account_password
    )
    router.query("org.roost.admin.listOutbox", auth=ADMIN)(list_outbox)


def _run(w: WriteContext, statements: list[tuple[str, tuple[Any, ...]]]) -> None:
    for sql, params in statements:
        w.execute(sql, *params)


def _account(p: PdsContext, did: str) -> AccountRow:
    account = p.db.account(did)
    if account is None:
        raise RoostError(f"Account not found: {did}")
    return account


# -- invite codes -------------------------------------------------------------------------


def _new_code(p: PdsContext) -> str:
    raw = secrets.token_hex(5)
    return f"{p.config.hostname.replace('.', '-')}-{raw[:5]}-{raw[5:]}"


def _use_count(value: Any) -> int:
    if not isinstance(value, int) or not 1 <= value <= MAX_CODE_USES:
        raise RoostError(f"useCount must be 1 to {MAX_CODE_USES}")
    return value


async def _create_codes(p: PdsContext, accounts: list[str], count: int, uses: int) -> list[dict[str, Any]]:
    if not 1 <= count <= MAX_CODES_PER_CALL:
        raise RoostError(f"codeCount must be 1 to {MAX_CODES_PER_CALL}")
    created_at = utc_now()
    groups = [(account, [_new_code(p) for _ in range(count)]) for account in accounts]
    statements = [
        PdsDatabase.insert_invite_code_sql(code, account, "admin", uses, created_at)
        for account, codes in groups
        for code in codes
    ]
    out = [{"account": account, "codes": codes} for account, codes in groups]
    await p.writer.submit(lambda w: _run(w, statements))
    return out


async def create_invite_code(ctx: XrpcContext) -> dict[str, Any]:
    p = pds(ctx)
    uses = _use_count(ctx.input["useCount"])
    account = ctx.input.get("forAccount") or "admin"
    groups = await _create_codes(p, [account], 1, uses)
    return {"code": groups[0]["codes"][0]}


async def create_invite_codes(ctx: XrpcContext) -> dict[str, Any]:
    p = pds(ctx)
    uses = _use_count(ctx.input["useCount"])
    accounts = list(ctx.input.get("forAccounts") or ["admin"])
    return {"codes": await _create_codes(p, accounts, ctx.input.get("codeCount", 1), uses)}


def invite_code_view(db: PdsDatabase, row: tuple[str, str, str, int, bool, str]) -> dict[str, Any]:
    code, for_did, created_by, available, disabled, created_at = row
    return {
        "code": code,
        "available": available,
        "disabled": disabled,
        "forAccount": for_did,
        "createdBy": created_by,
        "createdAt": created_at,
        "uses": [{"usedBy": by, "usedAt": at} for by, at in db.invite_uses(code)],
    }


async def get_invite_codes(ctx: XrpcContext) -> dict[str, Any]:
    p = pds(ctx)
    limit = ctx.params["limit"]
    rows = p.db.invite_codes(limit, ctx.params.get("cursor"))
    codes = [invite_code_view(p.db, row) for row in rows]
    if ctx.params.get("sort") == "usage":
        codes.sort(key=lambda c: len(c["uses"]), reverse=True)
    out: dict[str, Any] = {"codes": codes}
    if len(rows) == limit:
        out["cursor"] = f"{rows[-1][5]}::{rows[-1][0]}"
    return out


async def disable_invite_codes(ctx: XrpcContext) -> None:
    p = pds(ctx)
    codes = list(ctx.input.get("codes") or [])
    accounts = list(ctx.input.get("accounts") or [])
    if "admin" in accounts:
        raise RoostError("cannot disable admin invite codes by account")
    statements = PdsDatabase.disable_invite_codes_sql(codes, accounts)
    await p.writer.submit(lambda w: _run(w, statements))


# -- accounts -------------------------------------------------------------------------------


def account_view(p: PdsContext, account: AccountRow) -> dict[str, Any]:
    out: dict[str, Any] = {
        "did": account.did,
        "handle": account.handle,
        "indexedAt": account.created_at,
        "invites": [
            invite_code_view(p.db, row)
            for row in p.db.invite_codes(1000, None, for_did=account.did)
        ],
        # roost extensions: the account's status, why, its application and storage
        "roostStatus": account.status,
    }
    repo_bytes, blob_bytes = p.db.storage_use(account.did)
    out["roostStorage"] = {"repoBytes": repo_bytes, "blobBytes": blob_bytes}
    if account.email:
        out["email"] = account.email
    if account.invite_code:
        row = p.db.invite_code(account.invite_code)
        if row is not None:
            out["invitedBy"] = invite_code_view(p.db, row)
    if account.status_reason:
        out["roostStatusReason"] = account.status_reason
    if account.delete_after:
        out["roostDeleteAfter"] = account.delete_after
    if account.application:
        out["roostApplication"] = json.loads(account.application)
    return out


async def get_account_info(ctx: XrpcContext) -> dict[str, Any]:
    p = pds(ctx)
    return account_view(p, _account(p, ctx.params["did"]))


async def get_account_infos(ctx: XrpcContext) -> dict[str, Any]:
    p = pds(ctx)
    infos = []
    for did in ctx.params["dids"]:
        account = p.db.account(did)
        if account is not None:
            infos.append(account_view(p, account))
    return {"infos": infos}


async def search_accounts(ctx: XrpcContext) -> dict[str, Any]:
    """Accounts whose DID, handle or email contains ``email`` (all when absent)."""
    p = pds(ctx)
    limit = ctx.params["limit"]
    rows = p.db.search_accounts(ctx.params.get("email"), limit, ctx.params.get("cursor"))
    out: dict[str, Any] = {"accounts": [account_view(p, row) for row in rows]}
    if len(rows) == limit:
        out["cursor"] = f"{rows[-1].created_at}::{rows[-1].did}"
    return out


# -- moderation -----------------------------------------------------------------------------


def _set_status(w: WriteContext, account: AccountRow, status: str, reason: str | None) -> None:
    """Change the account's status and emit what event-stream.md §6 asks for."""
    did = account.did
    w.execute(*_flat(PdsDatabase.set_account_status_sql(did, status, reason)))
    if status == "active":
        w.event(did, "#account", {"did": did, "active": True})
        w.event(did, "#identity", {"did": did, "handle": account.handle})
        if w.repo(did) is not None:
            w.sync_event(did)
    elif account.active or _shown(account.status) != _shown(status):
        w.event(did, "#account", {"did": did, "active": False, "status": _shown(status)})


def _shown(status: str) -> str:
    """An inactive status as downstream services see it: applications awaiting
    review or refused are "deactivated"."""
    return status if status in ("takendown", "suspended", "deactivated") else "deactivated"


def _flat(statement: tuple[str, tuple[Any, ...]]) -> tuple[Any, ...]:
    return (statement[0], *statement[1])


def _record_path(uri: str) -> tuple[str, str, str]:
    """(did, collection, rkey) of a record AT-URI with a DID authority."""
    parsed = AtUri.parse(uri)
    if not parsed.authority_is_did or parsed.collection is None or parsed.rkey is None:
        raise RoostError(f"Not a record AT-URI with a DID: {uri}")
    return parsed.authority, parsed.collection, parsed.rkey


async def update_subject_status(ctx: XrpcContext) -> dict[str, Any]:
    p = pds(ctx)
    subject = ctx.input["subject"]
    kind = subject.get("$type") if isinstance(subject, dict) else None
    takedown = ctx.input.get("takedown")
    out: dict[str, Any] = {"subject": subject}
    if takedown is not None:
        out["takedown"] = takedown
    if kind == _REPO_REF:
        await _update_account_status(p, subject["did"], takedown, ctx.input.get("deactivated"))
        return out
    if kind not in (_STRONG_REF, _BLOB_REF):
        raise RoostError("Invalid subject")
    if ctx.input.get("deactivated") is not None:
        raise RoostError("Only accounts can be deactivated")
    if takedown is None:
        return out
    applied, ref, now = bool(takedown["applied"]), takedown.get("ref"), utc_now()
    if kind == _STRONG_REF:
        did, collection, rkey = _record_path(subject["uri"])
        _account(p, did)
        if applied and p.db.record_cid(did, collection, rkey) is None:
            raise RecordNotFound(f"Could not locate record: {subject['uri']}")
        statement = PdsDatabase.record_takedown_sql(did, collection, rkey, applied, ref, now)
    else:
        did, cid = subject["did"], CID.from_str(subject["cid"])
        _account(p, did)
        if applied and p.db.blob(did, cid) is None:
            raise RoostError(f"Blob not found: {cid}")
        statement = PdsDatabase.blob_takedown_sql(did, cid, applied, ref, now)
    await p.writer.submit(lambda w: w.execute(*_flat(statement)))
    return out


async def _update_account_status(
    p: PdsContext, did: str, takedown: dict[str, Any] | None, deactivated: dict[str, Any] | None
) -> None:
    account = _account(p, did)
    approving = (
        deactivated is not None and not deactivated["applied"] and account.status == "pending"
    )
    # an approved application of an account migrating in waits for its DID document
    approved_status = "active"
    if approving and not await _hosted_here(p, account):
        approved_status = "deactivated"

    def job(w: WriteContext) -> None:
        account = w.db.account(did)
        if account is None:
            raise RoostError(f"Account not found: {did}")
        status, reason = account.status, account.status_reason
        if takedown is not None:
            if takedown["applied"]:
                status, reason = "takendown", takedown.get("ref")
            elif status == "takendown":
                status, reason = "active", None
        if deactivated is not None:
            if deactivated["applied"]:
                if status == "pending":
                    status, reason = "rejected", deactivated.get("ref")
                elif status == "active":
                    status, reason = "deactivated", deactivated.get("ref")
            elif status == "pending":
                status, reason = approved_status, None
            elif status in ("rejected", "deactivated"):
                status, reason = "active", None
        if (status, reason) != (account.status, account.status_reason):
            _set_status(w, account, status, reason)

    await p.writer.submit(job)


async def _hosted_here(p: PdsContext, account: AccountRow) -> bool:
    from pds.api.account import check_did_document  # noqa: PLC0415 (account imports admin's module)

    try:
        await check_did_document(p, account)
    except RoostError:
        return False
    return True


def _takedown_attr(row: tuple[str | None] | None) -> dict[str, Any]:
    out: dict[str, Any] = {"applied": row is not None}
    if row is not None and row[0]:
        out["ref"] = row[0]
    return out


async def get_subject_status(ctx: XrpcContext) -> dict[str, Any]:
    p = pds(ctx)
    params = ctx.params
    uri, blob, did = params.get("uri"), params.get("blob"), params.get("did")
    if uri is not None:
        did, collection, rkey = _record_path(uri)
        cid = p.db.record_cid(did, collection, rkey)
        if cid is None:
            raise RecordNotFound(f"Could not locate record: {uri}")
        return {
            "subject": {"$type": _STRONG_REF, "uri": uri, "cid": str(cid)},
            "takedown": _takedown_attr(p.db.record_takedown(did, collection, rkey)),
        }
    if did is None:
        raise RoostError("Currently, only did, uri, or did + blob lookups are supported")
    if blob is not None:
        cid = CID.from_str(blob)
        if p.db.blob(did, cid) is None:
            raise RoostError(f"Blob not found: {blob}")
        return {
            "subject": {"$type": _BLOB_REF, "did": did, "cid": blob},
            "takedown": _takedown_attr(p.db.blob_takedown(did, cid)),
        }
    account = _account(p, did)
    takedown: dict[str, Any] = {"applied": account.status == "takendown"}
    if account.status == "takendown" and account.status_reason:
        takedown["ref"] = account.status_reason
    return {
        "subject": {"$type": _REPO_REF, "did": did},
        "takedown": takedown,
        "deactivated": {"applied": account.status in ("pending", "rejected", "deactivated")},
    }


async def delete_account(ctx: XrpcContext) -> None:
    p = pds(ctx)
    did = ctx.input["did"]
    _account(p, did)
    await remove_account(p, did)


async def remove_account(p: PdsContext, did: str) -> None:
    """Delete every row and blob of the account, keep a tombstone (later requests
    learn it was deleted); emit ``#account`` "deleted"."""
    statements = PdsDatabase.delete_account_sql(did, utc_now())

    def job(w: WriteContext) -> None:
        if w.db.account(did) is None:
            raise RoostError(f"Account not found: {did}")
        _run(w, statements)
        w.event(did, "#account", {"did": did, "active": False, "status": "deleted"})

    await p.writer.submit(job)
    p.writer.forget(did)
    await p.blobs.delete_account(did)


async def update_account_password(ctx: XrpcContext) -> None:
    p = pds(ctx)
    did = ctx.input["did"]
    password = ctx.input["password"]
    if not password:
        raise RoostError("Password is required")
    _account(p, did)
    password_hash = await hash_password_async(password)
    statements = PdsDatabase.update_password_sql(did, password_hash)
    await p.writer.submit(lambda w: _run(w, statements))


# -- the outbox -----------------------------------------------------------------------------


async def list_outbox(ctx: XrpcContext) -> dict[str, Any]:
    p = pds(ctx)
    limit: int = ctx.params["limit"]
    cursor = ctx.params.get("cursor")
    before: int | None = None
    if cursor is not None:
        if not cursor.isdigit():
            raise RoostError("Invalid cursor")
        before = int(cursor)
    rows = p.db.outbox(limit, before, ctx.params.get("did"))
    messages = []
    for row in rows:
        message: dict[str, Any] = {
            "id": row.id,
            "did": row.did,
            "purpose": row.purpose,
            "subject": row.subject,
            "body": row.body,
            "createdAt": row.created_at,
        }
        if row.recipient:
            message["recipient"] = row.recipient
        if row.token:
            message["token"] = row.token
        messages.append(message)
    out: dict[str, Any] = {"messages": messages}
    if len(rows) == limit:
        out["cursor"] = str(rows[-1].id)
    return out
