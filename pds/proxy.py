"""Service proxying (``spec/xrpc.md`` section 8): forward a user's call elsewhere.

Two ways in:

* :func:`proxy_fallback` is the router's ``fallback``: an NSID this PDS does
  not serve goes to the ``atproto-proxy`` target, or (``app.bsky.*`` /
  ``chat.bsky.*`` without the header) to the configured AppView;
* :class:`ProxyHeaderMiddleware` sends any ``/xrpc/<NSID>`` request carrying
  an ``atproto-proxy`` header to its target even when this PDS serves the
  method itself (unless the header names this PDS).

The caller must hold an access session of an active local account (a
deactivated one is ``401 AccountDeactivated``). The outbound request
carries a fresh service-auth JWT signed with the account's repo signing
key: ``iss`` = the account, ``aud`` = ``did#service`` (or the AppView DID),
``lxm`` = the NSID. Only a safe set of headers crosses in each
direction; bodies are streamed with a size limit; timeouts answer ``504
UpstreamTimeout``, connection failures ``502 UpstreamFailure``; upstream
XRPC errors pass through with their status (a 500 becomes a 502).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from roost.auth import PRIVILEGED_SCOPES, SessionCredentials, service_auth_headers
from roost.errors import (
    AuthRequired,
    InvalidToken,
    MethodNotImplemented,
    PayloadTooLarge,
    RoostError,
    UpstreamFailure,
    UpstreamTimeout,
)
from roost.identity import DidDocument
from roost.syntax import is_valid_nsid
from roost.xrpc import error_response

from pds.context import PdsContext, require_active

__all__ = [
    "PROTECTED_METHODS",
    "PROXY_TIMEOUT_S",
    "ProxyHeaderMiddleware",
    "proxy_fallback",
    "proxy_request",
]

#: Whole-request budget for an upstream call (read at call time: tests shorten it).
PROXY_TIMEOUT_S = 30.0
#: Largest DID document read while resolving a proxy target.
MAX_DID_DOC_BYTES = 64 * 1024

#: Methods never reachable through the proxy, whatever the scope (xrpc.md section 6).
PROTECTED_METHODS = frozenset(
    "com.atproto." + name
    for name in (
        "admin.sendEmail",
        "identity.requestPlcOperationSignature",
        "identity.signPlcOperation",
        "identity.updateHandle",
        "server.activateAccount",
        "server.confirmEmail",
        "server.createAppPassword",
        "server.deactivateAccount",
        "server.getAccountInviteCodes",
        "server.getSession",
        "server.listAppPasswords",
        "server.requestAccountDelete",
        "server.requestEmailConfirmation",
        "server.requestEmailUpdate",
        "server.revokeAppPassword",
        "server.updateEmail",
    )
)

_REQUEST_HEADERS = ("accept-encoding", "accept-language", "atproto-accept-labelers", "x-bsky-topics")
_BODY_HEADERS = ("content-type", "content-encoding", "content-length")
_RESPONSE_HEADERS = (
    "content-type",
    "content-length",
    "content-encoding",
    "content-language",
    "atproto-repo-rev",
    "atproto-content-labelers",
    "retry-after",
)
_PROXY_HEADER_RE = re.compile(r"(did:[a-z]+:[A-Za-z0-9._:%-]+)#([A-Za-z0-9._~-]+)")
_WEB_IDENT_RE = re.compile(r"(?P<host>[A-Za-z0-9.-]+)(?:%3[Aa](?P<port>[0-9]{1,5}))?")


def _is_privileged(nsid: str) -> bool:
    return nsid.startswith("chat.bsky.") or nsid == "com.atproto.server.createAccount"


@dataclass(frozen=True, slots=True)
class Target:
    url: str
    aud: str


def parse_proxy_header(value: str) -> tuple[str, str]:
    """``(did, service id)`` of an ``atproto-proxy`` header; 400 when malformed."""
    value = value.strip()
    m = _PROXY_HEADER_RE.fullmatch(value)
    if m is None or value.count("#") != 1:
        raise RoostError("invalid atproto-proxy header")
    return m.group(1), m.group(2)


async def _did_document(p: PdsContext, did: str) -> DidDocument:
    if did.startswith("did:plc:"):
        url = f"{p.config.plc_url.rstrip('/')}/{did}"
    elif did.startswith("did:web:"):
        m = _WEB_IDENT_RE.fullmatch(did[len("did:web:") :])
        if m is None:
            raise RoostError(f"cannot resolve proxy service {did}")
        host, port = m["host"].lower(), m["port"]
        if host == "localhost" and p.config.allow_local:
            url = f"http://localhost{':' + port if port else ''}/.well-known/did.json"
        elif port is None and host != "localhost":
            url = f"https://{host}/.well-known/did.json"
        else:
            raise RoostError(f"cannot resolve proxy service {did}")
    else:
        raise RoostError(f"cannot resolve proxy service {did}")
    try:
        response = await p.http.get(url, timeout=10.0)
    except (httpx.HTTPError, RoostError):
        raise RoostError(f"could not resolve proxy service {did}") from None
    if response.status_code != 200 or len(response.content) > MAX_DID_DOC_BYTES:
        raise RoostError(f"could not resolve proxy service {did}")
    try:
        return DidDocument.from_json(response.content, did=did)
    except RoostError:
        raise RoostError(f"could not resolve proxy service {did}") from None


async def resolve_target(p: PdsContext, nsid: str, header: str | None) -> Target:
    """Where to send ``nsid``: the header's service, else the AppView for bsky methods."""
    config = p.config
    if header is not None:
        did, service_id = parse_proxy_header(header)
        aud = f"{did}#{service_id}"
        if config.appview_did and config.appview_url and did == config.appview_did:
            return Target(config.appview_url.rstrip("/"), aud)
        doc = await _did_document(p, did)
        endpoint = doc.service_endpoint(service_id)
        if endpoint is None:
            raise RoostError(f"could not resolve proxy service {aud}")
        return Target(endpoint, aud)
    if nsid.startswith(("app.bsky.", "chat.bsky.")) and config.appview_url and config.appview_did:
        return Target(config.appview_url.rstrip("/"), config.appview_did)
    raise MethodNotImplemented("Method Not Implemented")


async def _authenticate(p: PdsContext, request: Request, nsid: str) -> Any:
    if request.headers.get("authorization") is None:
        raise AuthRequired("Authentication Required")
    creds = await p.access(request, nsid)
    if not isinstance(creds, SessionCredentials):
        raise AuthRequired("Authentication Required")
    account = p.db.account(creds.did)
    if account is None:
        raise AuthRequired("Account not found")
    require_active(account)  # a deactivated account's holder may have moved elsewhere
    if nsid in PROTECTED_METHODS:
        raise InvalidToken("Bad token method")
    if _is_privileged(nsid) and creds.scope not in PRIVILEGED_SCOPES:
        raise InvalidToken("Bad token method")
    return account


async def _limited_body(request: Request, limit: int) -> AsyncIterator[bytes]:
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > limit:
            raise PayloadTooLarge(f"request entity is larger than {limit} bytes")
        yield chunk


async def proxy_request(request: Request, nsid: str) -> Response:
    """Forward ``request`` for ``nsid`` to its target; errors become XRPC error answers."""
    try:
        return await _proxy(request, nsid)
    except RoostError as exc:
        return error_response(exc)


async def _proxy(request: Request, nsid: str) -> Response:
    p: PdsContext = request.app.state.pds
    verb = request.method
    if verb not in ("GET", "HEAD", "POST"):
        raise RoostError(f"Incorrect HTTP method ({verb})")
    header = request.headers.get("atproto-proxy")
    account = await _authenticate(p, request, nsid)
    target = await resolve_target(p, nsid, header)
    headers = {k: v for k in _REQUEST_HEADERS if (v := request.headers.get(k)) is not None}
    content: AsyncIterator[bytes] | None = None
    if verb == "POST":
        for k in _BODY_HEADERS:
            v = request.headers.get(k)
            if v is not None:
                headers[k] = v
        limit = p.config.max_blob_bytes
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise PayloadTooLarge(f"request entity is larger than {limit} bytes")
        content = _limited_body(request, limit)
    headers.update(
        service_auth_headers(p.signing_key(account), iss=account.did, aud=target.aud, lxm=nsid)
    )
    url = f"{target.url}/xrpc/{nsid}"
    query = request.url.query
    if query:
        url += "?" + query
    outbound = p.http.build_request(
        verb, url, headers=headers, content=content, timeout=httpx.Timeout(PROXY_TIMEOUT_S)
    )
    try:
        upstream = await p.http.send(outbound, stream=True)
    except httpx.TimeoutException:
        raise UpstreamTimeout("Upstream service timed out") from None
    except (httpx.HTTPError, OSError):
        raise UpstreamFailure("Upstream service unreachable") from None
    except PayloadTooLarge:
        raise
    except RoostError:
        raise UpstreamFailure("Upstream service unreachable") from None
    if upstream.status_code == 500:
        await upstream.aclose()
        raise UpstreamFailure("Upstream service failed")
    out_headers = {
        k: v for k in _RESPONSE_HEADERS if (v := upstream.headers.get(k)) is not None
    }
    if verb == "HEAD":
        await upstream.aclose()
        return Response(None, upstream.status_code, out_headers)
    try:
        # the first chunk is read here, so early upstream failures are still answerable
        chunks = upstream.aiter_raw()
        first = await anext(chunks, b"")
    except httpx.TimeoutException:
        await upstream.aclose()
        raise UpstreamTimeout("Upstream service timed out") from None
    except (httpx.HTTPError, RoostError):
        await upstream.aclose()
        raise UpstreamFailure("Upstream service unreachable") from None

    async def body() -> AsyncIterator[bytes]:
        try:
            if first:
                yield first
            async for chunk in chunks:
                yield chunk
        finally:
            await upstream.aclose()

    return StreamingResponse(body(), upstream.status_code, out_headers)


async def proxy_fallback(request: Request, nsid: str) -> Response:
    """The router fallback: NSIDs this PDS does not serve."""
    return await proxy_request(request, nsid)


class ProxyHeaderMiddleware:
    """Route ``/xrpc/<NSID>`` requests carrying ``atproto-proxy`` to the proxy,
    even for methods served here (unless the header names this PDS)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path: str = scope.get("path", "")
            if path.startswith("/xrpc/") and scope.get("method") != "OPTIONS":
                nsid = path[len("/xrpc/") :]
                header = None
                for key, value in scope.get("headers", ()):
                    if key == b"atproto-proxy":
                        header = value.decode("latin-1")
                        break
                if header is not None and nsid != "_health" and is_valid_nsid(nsid):
                    request = Request(scope, receive)
                    p: PdsContext = request.app.state.pds
                    if not header.startswith(p.service_did + "#"):
                        response = await proxy_request(request, nsid)
                        response.headers.setdefault("Access-Control-Allow-Origin", "*")
                        await response(scope, receive, send)
                        return
        await self.app(scope, receive, send)
