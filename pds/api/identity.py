"""``com.atproto.identity.*`` served by the PDS."""

from __future__ import annotations

from typing import Any

from roost.errors import HandleNotAvailable, HandleNotFound, InvalidHandle, RoostError
from roost.identity import HandleResolver
from roost.syntax import ensure_handle, is_disallowed_handle_tld
from roost.xrpc import XrpcContext, XrpcRouter

from pds.api.server import ACCESS, check_handle
from pds.context import PdsContext, pds
from pds.sqlite import PdsDatabase
from pds.writer import WriteContext

__all__ = ["register"]


def register(router: XrpcRouter) -> None:
    router.query("com.atproto.identity.resolveHandle")(resolve_handle)
    router.procedure("com.atproto.identity.updateHandle", auth=ACCESS)(update_handle)


async def resolve_handle(ctx: XrpcContext) -> dict[str, Any]:
    handle = ensure_handle(ctx.params["handle"])
    account = pds(ctx).db.account_by_handle(handle)
    if account is None:
        raise HandleNotFound("Unable to resolve handle")
    return {"did": account.did}


# -- updateHandle -------------------------------------------------------------------------


async def _check_external_handle(p: PdsContext, did: str, handle: str) -> None:
    """A handle outside the server's domain must resolve (DNS or well-known) to ``did``."""
    if is_disallowed_handle_tld(handle):
        raise InvalidHandle("Handle uses a reserved top-level domain")
    resolver = HandleResolver(allow_local=p.config.allow_local)
    try:
        resolved = await resolver.resolve(handle)
    except RoostError:
        resolved = None
    finally:
        await resolver.aclose()
    if resolved != did:
        raise RoostError("External handle did not resolve to DID")


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
            await _check_external_handle(p, did, handle)
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
