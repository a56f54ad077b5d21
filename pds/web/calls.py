"""XRPC handlers called in-process, so the web pages run the API's own code.

A form on the public page or the admin console becomes the same call a client
would make over HTTP: parameters and body are checked against the lexicon,
then the registered handler runs with the given credentials. Errors come back
as the handler's typed :class:`~roost.errors.RoostError`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from starlette.requests import Request

from pds.context import PdsContext
from roost.auth import AdminCredentials, Credentials
from roost.xrpc import XrpcContext

__all__ = ["AS_ADMIN", "call", "pds_of", "public_message"]

#: Credentials of the operator, for calls made by a logged-in admin's pages.
AS_ADMIN = AdminCredentials()

Handler = Callable[[XrpcContext], Awaitable[Any]]


def pds_of(request: Request) -> PdsContext:
    return request.app.state.pds  # type: ignore[no-any-return]


def _query_value(value: Any) -> str | list[str]:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    return str(value)


async def call(
    request: Request,
    handler: Handler,
    nsid: str,
    *,
    auth: Credentials,
    params: Mapping[str, Any] | None = None,
    body: Any = None,
) -> Any:
    """Run ``handler`` for ``nsid`` as the XRPC layer would, with ``auth``'s rights."""
    p = pds_of(request)
    raw = {k: _query_value(v) for k, v in (params or {}).items() if v is not None}
    ctx = XrpcContext(
        nsid=nsid,
        params=p.catalog.validate_params(nsid, raw),
        auth=auth,
        request=request,
        client_ip=request.client.host if request.client else "unknown",
    )
    if body is not None:
        ctx.input = p.catalog.validate_input(nsid, body)
        ctx.encoding = "application/json"
    return await handler(ctx)


def public_message(exc: Exception) -> str:
    """What a page may tell about an error (server faults stay private)."""
    status = getattr(exc, "status", 500)
    message = getattr(exc, "message", "") or ""
    if status >= 500 and status not in (502, 503, 504):
        return "Something went wrong on the server; the operator can find it in the log."
    return message or type(exc).__name__
