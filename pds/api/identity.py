"""``com.atproto.identity.*`` served by the PDS."""

from __future__ import annotations

from typing import Any

from roost.errors import HandleNotFound
from roost.syntax import ensure_handle
from roost.xrpc import XrpcContext, XrpcRouter

from pds.context import pds

__all__ = ["register"]


def register(router: XrpcRouter) -> None:
    router.query("com.atproto.identity.resolveHandle")(resolve_handle)


async def resolve_handle(ctx: XrpcContext) -> dict[str, Any]:
    handle = ensure_handle(ctx.params["handle"])
    account = pds(ctx).db.account_by_handle(handle)
    if account is None:
        raise HandleNotFound("Unable to resolve handle")
    return {"did": account.did}
