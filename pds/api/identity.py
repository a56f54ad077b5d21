"""``com.atproto.identity.*`` served by the PDS.

Handles (``resolveHandle``, ``updateHandle``) and the PLC steps of a
migration (``spec/account-migration.md`` section 4):

- old host: ``requestPlcOperationSignature`` leaves a confirmation token in
  the outbox (:mod:`pds.api.account`), ``signPlcOperation`` (main password and
  that token) signs an update of the DID's latest op with this server's
  rotation key, fields not given copied, and returns it *unsubmitted*;
- new host: ``getRecommendedDidCredentials`` says what the DID should hold
  to be hosted here, ``submitPlcOperation`` checks an op is safe for this
  server (its rotation key, its URL as ``atproto_pds``, the account's key
  here as ``atproto``, the account's handle first in ``alsoKnownAs``), sends
  it to the directory and emits ``#identity``.

did:web accounts have no PLC ops: their holder edits ``did.json`` instead
(the same two entries), so the PLC methods refuse them.
"""

from __future__ import annotations

from typing import Any

from roost.errors import HandleNotAvailable, HandleNotFound, PlcError, RoostError
from roost.plc import (
    PDS_SERVICE_ID,
    PDS_SERVICE_TYPE,
    UNCHANGED,
    PlcOperation,
    PlcTombstone,
    Service,
    build_update,
    op_cid,
    parse_op,
    sign_op,
)
from roost.syntax import ensure_handle
from roost.xrpc import XrpcContext, XrpcRouter

from pds.api.account import PURPOSE_PLC, TOKEN_TTL_SECONDS, consume_token, own_account, send_token
from pds.api.server import ACCESS, FULL_ACCESS, check_external_handle, check_handle
from pds.context import pds
from pds.sqlite import PdsDatabase
from pds.writer import WriteContext

__all__ = ["register"]


def register(router: XrpcRouter) -> None:
    router.query("com.atproto.identity.resolveHandle")(resolve_handle)
    router.procedure("com.atproto.identity.updateHandle", auth=ACCESS)(update_handle)
    router.procedure("com.atproto.identity.requestPlcOperationSignature", auth=FULL_ACCESS)(
        request_plc_operation_signature
    )
    router.procedure("com.atproto.identity.signPlcOperation", auth=FULL_ACCESS)(
        sign_plc_operation
    )
    router.query("com.atproto.identity.getRecommendedDidCredentials", auth=ACCESS)(
        get_recommended_did_credentials
    )
    router.procedure("com.atproto.identity.submitPlcOperation", auth=ACCESS)(
        submit_plc_operation
    )


async def resolve_handle(ctx: XrpcContext) -> dict[str, Any]:
    handle = ensure_handle(ctx.params["handle"])
    account = pds(ctx).db.account_by_handle(handle)
    if account is None:
        raise HandleNotFound("Unable to resolve handle")
    return {"did": account.did}


# -- updateHandle -------------------------------------------------------------------------


async def update_handle(ctx: XrpcContext) -> None:
    p = pds(ctx)
    did: str = ctx.auth.did  # type: ignore[assignment]
    handle = ensure_handle(ctx.input["handle"]).lower()
    holder = p.db.account_by_handle(handle)
    if holder is not None and holder.did != did:
        raise HandleNotAvailable("Handle already taken")
    if holder is None:
        if handle.endswith(p.config.handle_domain):
            handle = check_handle(p, handle)  # the createAccount rules
        else:
            await check_external_handle(p, did, handle)
    # the DID document first: the account row and #identity follow once it says so
    await p.plc.update(did, p.config.rotation_key, handle=handle)

    def job(w: WriteContext) -> None:
        current = w.db.account_by_handle(handle)
        if current is not None and current.did != did:
            raise HandleNotAvailable("Handle already taken")
        sql, params = PdsDatabase.update_handle_sql(did, handle)
        w.execute(sql, *params)
        w.event(did, "#identity", {"did": did, "handle": handle})

    await p.writer.submit(job)


# -- PLC operations (migration) -------------------------------------------------------------


def _plc_did(did: str) -> str:
    if not did.startswith("did:plc:"):
        raise RoostError(f"{did} is not a did:plc: its document is changed by its own host")
    return did


async def request_plc_operation_signature(ctx: XrpcContext) -> None:
    p = pds(ctx)
    account = own_account(ctx)
    _plc_did(account.did)
    await send_token(
        p,
        account,
        PURPOSE_PLC,
        "PLC update requested",
        f"Someone asked {p.config.hostname} to sign an update of the identity"
        f" {account.did} ({account.handle}), as when moving the account to another"
        f" server. To allow it, use this code within {TOKEN_TTL_SECONDS // 60} minutes:"
        " {token}\nIf you did not ask for this, do not share the code and change your"
        " password.",
    )


def _string_map(value: Any, what: str) -> dict[str, str]:
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise RoostError(f"{what} must be an object of strings")
    return dict(value)


def _services(value: Any) -> dict[str, Service]:
    if not isinstance(value, dict):
        raise RoostError("services must be an object")
    out: dict[str, Service] = {}
    for sid, svc in value.items():
        if not (
            isinstance(svc, dict)
            and isinstance(svc.get("type"), str)
            and isinstance(svc.get("endpoint"), str)
        ):
            raise RoostError(f"services.{sid} must be {{type, endpoint}} strings")
        out[sid] = Service(svc["type"], svc["endpoint"])
    return out


async def sign_plc_operation(ctx: XrpcContext) -> dict[str, Any]:
    p = pds(ctx)
    body = ctx.input
    did = _plc_did(own_account(ctx).did)
    token = body.get("token")
    if not token:
        raise RoostError("email confirmation token required to sign PLC operations")
    # fields are checked before the token is used up
    fields: dict[str, Any] = {
        "rotation_keys": UNCHANGED,
        "also_known_as": UNCHANGED,
        "verification_methods": UNCHANGED,
        "services": UNCHANGED,
    }
    if body.get("rotationKeys") is not None:
        fields["rotation_keys"] = list(body["rotationKeys"])
    if body.get("alsoKnownAs") is not None:
        fields["also_known_as"] = list(body["alsoKnownAs"])
    if body.get("verificationMethods") is not None:
        fields["verification_methods"] = _string_map(
            body["verificationMethods"], "verificationMethods"
        )
    if body.get("services") is not None:
        fields["services"] = _services(body["services"])
    await consume_token(p, did, PURPOSE_PLC, token, keep=True)
    last = await p.plc.get_last_op(did)
    if isinstance(last, PlcTombstone):
        raise RoostError("Did is tombstoned")
    try:
        update = build_update(last, op_cid(last), **fields)
        parse_op(update.to_json(), require_sig=False)  # every field within the rules
    except PlcError as exc:
        raise RoostError(f"Invalid PLC operation: {exc.message}") from None
    except (TypeError, ValueError) as exc:
        raise RoostError(f"Invalid PLC operation: {exc}") from None
    signed = sign_op(update, p.config.rotation_key)
    await consume_token(p, did, PURPOSE_PLC, token)
    return {"operation": signed.to_json()}


async def get_recommended_did_credentials(ctx: XrpcContext) -> dict[str, Any]:
    p = pds(ctx)
    account = own_account(ctx)
    return {
        "rotationKeys": [p.config.rotation_key.public_key.did_key()],
        "alsoKnownAs": [f"at://{account.handle}"],
        "verificationMethods": {"atproto": p.signing_key(account).public_key.did_key()},
        "services": {
            PDS_SERVICE_ID: {"type": PDS_SERVICE_TYPE, "endpoint": p.config.url},
        },
    }


async def submit_plc_operation(ctx: XrpcContext) -> None:
    p = pds(ctx)
    account = own_account(ctx)
    did = _plc_did(account.did)
    try:
        op = parse_op(ctx.input["operation"])
    except PlcError as exc:
        raise RoostError(f"Invalid operation: {exc.message}") from None
    if not isinstance(op, PlcOperation):
        raise RoostError("Invalid operation: not a plc_operation")
    if p.config.rotation_key.public_key.did_key() not in op.rotation_keys:
        raise RoostError("Rotation keys do not include server's rotation key")
    service = op.services.get(PDS_SERVICE_ID)
    if service is None or service.type != PDS_SERVICE_TYPE:
        raise RoostError("Incorrect type on atproto_pds service")
    if service.endpoint != p.config.url:
        raise RoostError("Incorrect endpoint on atproto_pds service")
    if op.verification_methods.get("atproto") != p.signing_key(account).public_key.did_key():
        raise RoostError("Incorrect signing key")
    if not op.also_known_as or op.also_known_as[0] != f"at://{account.handle}":
        raise RoostError("Incorrect handle in alsoKnownAs")
    try:
        await p.plc.submit(did, op)
    except PlcError as exc:
        raise RoostError(f"The PLC directory refused the operation: {exc.message}") from None

    def job(w: WriteContext) -> None:
        current = w.db.account(did)
        handle = current.handle if current is not None else account.handle
        w.event(did, "#identity", {"did": did, "handle": handle})

    await p.writer.submit(job)
