"""XRPC for Starlette: methods routed by NSID, validated by lexicon, typed errors.

``spec/xrpc.md`` is the contract. A service builds one :class:`XrpcRouter`
over its lexicon catalog, registers handlers by NSID and mounts
``router.routes`` in its Starlette app::

    router = XrpcRouter(catalog, version="0.1.0")

    @router.query("com.atproto.repo.getRecord", auth=optional(session))
    async def get_record(ctx: XrpcContext) -> dict[str, Any]:
        ...  # ctx.params are typed, defaults applied
        return {"uri": ..., "value": ...}

    app = Starlette(routes=[*router.routes, ...])

Methods: ``query`` answers ``GET`` (and ``HEAD``), ``procedure`` ``POST``,
``subscription`` a WebSocket upgrade, all at ``/xrpc/<nsid>``. A request goes
through, in order: CORS preflight, path and verb checks, parameters (decoded
and validated by the catalog), body headers (presence, ``Content-Type``
against the lexicon's encoding, declared size), auth (the method's
:class:`~roost.auth.Verifier`), rate limits (global per IP, then the
method's; a failed auth still charges the IP budgets; admin credentials are
never limited; handlers can charge more with ``ctx.rate_limit``), the body
(read under the size limit; JSON parsed strictly and validated), the
handler, then the result:

- a ``dict``: JSON (CIDs and bytes in their ``$link``/``$bytes`` form),
  validated against the output schema in debug mode only;
- an :class:`Output`: bytes or an async iterable of bytes, with its content type;
- any Starlette ``Response``, passed through;
- ``None``: 200 with no body.

Errors (``spec/xrpc.md`` section 3): any :class:`~roost.errors.RoostError`
becomes ``{"error": exc.error, "message": exc.message}`` with ``exc.status``;
anything else is logged with its traceback and answered ``500
InternalServerError`` "Internal Server Error" with no detail. Fixed answers:
unknown NSID ``501 MethodNotImplemented`` (or the router's ``fallback``, e.g.
a PDS proxying to its AppView); a path that is not ``/xrpc/<NSID>`` ``400``
"invalid xrpc path"; a known NSID with the wrong verb ``400`` "Incorrect HTTP
method (X) expected Y"; body where none is expected, or none where one is,
``400``; missing ``Content-Type`` ``400``; a ``Content-Type`` other than the
lexicon's encoding ``415 UnsupportedMediaType``; a body over the method's
limit ``413 PayloadTooLarge`` (counted while reading, whatever
``Content-Length`` says); malformed JSON ``400``.

Subscriptions (``spec/event-stream.md``): parameters, auth and rate limits
are checked before the upgrade; an unknown NSID or a rate-limit refusal is
an HTTP denial (501 / 429) where the server supports it, any other failure
an error frame after the upgrade, then close code 1008 with the error name
as reason. The handler is an async generator (or a coroutine returning an
async iterable) yielding messages: ``(t, body)`` pairs, dicts carrying a
``$type``, or pre-encoded frames (``bytes``); it may raise a ``RoostError``
(error frame, 1008); returning closes with 1000; an unexpected exception
closes with 1011 and no frame. Client disconnects cancel the generator.
Frame encoding lives in :mod:`roost.frames`.

Also: CORS on every XRPC response (``Access-Control-Allow-Origin: *``,
preflight answered, rate-limit headers exposed), ``GET /xrpc/_health``
(``{"version": ...}``, or 503 when the health check fails), and
``Cache-Control: private`` + ``Vary: Authorization`` on authenticated answers.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import http
import inspect
import json
import logging
import math
import re
import time
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Mapping,
    Sequence,
)
from dataclasses import dataclass, field
from typing import Any, Final, Literal, Protocol
from urllib.parse import unquote_plus

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Match, NoMatchFound
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from roost.auth import (
    UNAUTHENTICATED,
    AdminCredentials,
    Credentials,
    Unauthenticated,
    Verifier,
)
from roost.cid import CID
from roost.errors import (
    InternalServerError,
    LexiconError,
    MethodNotImplemented,
    PayloadTooLarge,
    RateLimitExceeded,
    RoostError,
    UnsupportedMediaType,
)
from roost.frames import encode_error_frame, encode_frame
from roost.ratelimit import RateLimit, RateLimiter, RateLimitStatus, tightest
from roost.syntax import is_valid_nsid

__all__ = [
    "DEFAULT_GLOBAL_RATE_LIMIT",
    "BodyStream",
    "LexiconCatalog",
    "MethodInfo",
    "Output",
    "XrpcContext",
    "XrpcRoute",
    "XrpcRouter",
    "error_response",
    "json_response",
]

logger = logging.getLogger(__name__)

#: Reference PDS: 3000 requests per 5 minutes per IP across all XRPC methods.
DEFAULT_GLOBAL_RATE_LIMIT: Final = RateLimit("global-ip", 3000, 300, per="ip")
#: Reference PDS body limits.
DEFAULT_MAX_JSON_BODY: Final = 150 * 1024
DEFAULT_MAX_TEXT_BODY: Final = 100 * 1024
DEFAULT_MAX_BINARY_BODY: Final = 5 * 1024 * 1024

_JSON: Final = "application/json"
_JSON_CONTENT_TYPE: Final = "application/json; charset=utf-8"
_MAX_QUERY_FIELDS: Final = 1000
_HEADER_LIST_RE: Final = re.compile(
    r"[A-Za-z0-9!#$%&'*+.^_`|~-]+(?:\s*,\s*[A-Za-z0-9!#$%&'*+.^_`|~-]+)*"
)

_CORS_ALLOW_HEADERS: Final = (
    "authorization, content-type, atproto-proxy, atproto-accept-labelers, dpop, "
    "accept, accept-language, x-bsky-topics"
)
_CORS_EXPOSE_HEADERS: Final = (
    "RateLimit-Limit, RateLimit-Remaining, RateLimit-Reset, RateLimit-Policy, Retry-After, "
    "WWW-Authenticate, DPoP-Nonce, Atproto-Repo-Rev, Atproto-Content-Labelers"
)
_CORS_HEADERS: Final = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Expose-Headers": _CORS_EXPOSE_HEADERS,
}

Kind = Literal["query", "procedure", "subscription"]
Handler = Callable[["XrpcContext"], Awaitable[Any]]
HealthCheck = Callable[[], Awaitable["Mapping[str, Any] | None"]]
Fallback = Callable[[Request, str], Awaitable[Response]]


# -- the lexicon catalog, as this module uses it ----------------------------------------


class MethodInfo(Protocol):
    """The parts of ``roost.lexicon.MethodDef`` this module reads."""

    @property
    def nsid(self) -> str: ...
    @property
    def type(self) -> str: ...
    @property
    def input_encoding(self) -> str | None: ...
    @property
    def output_encoding(self) -> str | None: ...
    @property
    def output_schema(self) -> dict[str, Any] | None: ...


class LexiconCatalog(Protocol):
    """What :class:`XrpcRouter` needs from ``roost.lexicon.Catalog``."""

    def method(self, nsid: str) -> Any: ...
    def validate_params(
        self, nsid: str, params: Mapping[str, str | Sequence[str]]
    ) -> dict[str, Any]: ...
    def validate_input(self, nsid: str, body: Any) -> Any: ...
    def validate_output(self, nsid: str, body: Any) -> Any: ...
    def validate_message(self, nsid: str, message: Any) -> Any: ...


# -- values handed to and returned by handlers --------------------------------------------


@dataclass(frozen=True, slots=True)
class Output:
    """A non-JSON result: ``body`` (bytes or an async iterable of bytes) as ``encoding``."""

    body: bytes | AsyncIterable[bytes]
    encoding: str
    headers: Mapping[str, str] | None = None
    status: int = 200


class BodyStream:
    """A request body read as it arrives, refusing more than ``limit`` bytes.

    Iterate it (``async for chunk in ctx.input``) or ``await read()`` it;
    either raises :class:`~roost.errors.PayloadTooLarge` once the count
    passes the limit. It can be consumed once.
    """

    def __init__(self, request: Request, limit: int) -> None:
        self._request = request
        self.limit = limit
        self.received = 0
        self._used = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        if self._used:
            raise RuntimeError("the request body was already consumed")
        self._used = True
        async for chunk in self._request.stream():
            if not chunk:
                continue
            self.received += len(chunk)
            if self.received > self.limit:
                raise _too_large(self.limit)
            yield chunk

    async def read(self) -> bytes:
        """The whole body."""
        return b"".join([chunk async for chunk in self])


@dataclass(slots=True, eq=False)
class XrpcContext:
    """Everything a handler gets.

    ``params``: validated parameters (typed, defaults applied). ``input``:
    for JSON encodings the parsed body in the atproto JSON form
    (``{"$link": ...}``), as the catalog's ``validate_input`` returns it;
    for other encodings the raw ``bytes``, or a :class:`BodyStream` when
    the method was registered with ``stream_input=True``; ``None`` without
    a body.
    ``encoding``: the request's content type (without parameters).
    ``auth``: the verified credentials. ``response_headers``: extra headers
    to send with the answer (e.g. ``Atproto-Repo-Rev``).
    """

    nsid: str
    params: dict[str, Any]
    auth: Credentials
    request: Request | WebSocket
    client_ip: str
    input: Any = None
    encoding: str | None = None
    response_headers: dict[str, str] = field(default_factory=dict)
    _router: XrpcRouter | None = field(default=None, repr=False)
    _statuses: list[RateLimitStatus] = field(default_factory=list, repr=False)

    def rate_limit(self, limit: RateLimit, *, cost: int = 1, key: str | None = None) -> None:
        """Charge ``cost`` points of ``limit`` now (for limits that depend on the body).

        ``key`` overrides the default key (the account DID for
        ``per="account"`` limits, else the client IP), e.g.
        ``f"{identifier}:{ip}"``. Raises ``RateLimitExceeded`` when refused;
        the rate-limit headers of the answer reflect the tightest budget.
        No-op for admin credentials and bypassed clients.
        """
        router = self._router
        if router is None or router._bypassed(self.request, self.auth, self.client_ip):
            return
        if key is None:
            key = _limit_key(limit, self.auth, self.client_ip)
        status = router.rate_limiter.consume(limit, key, cost)
        self._statuses.append(status)
        if not status.allowed:
            raise _rate_limited(status)


@dataclass(frozen=True, slots=True)
class _Method:
    nsid: str
    kind: Kind
    handler: Callable[[XrpcContext], Any]
    auth: Verifier | None
    rate_limits: tuple[RateLimit, ...]
    global_rate_limit: bool
    max_body: int
    stream_input: bool
    input_encoding: str | None
    json_input: bool
    has_output_schema: bool


# -- helpers ----------------------------------------------------------------------------------


def _json_default(value: Any) -> Any:
    if isinstance(value, CID):
        return {"$link": str(value)}
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"$bytes": base64.b64encode(value).decode("ascii").rstrip("=")}
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


_ENCODER: Final = json.JSONEncoder(
    ensure_ascii=False, separators=(",", ":"), allow_nan=False, default=_json_default
)


def _dumps(value: Any) -> bytes:
    return _ENCODER.encode(value).encode("utf-8")


RawHeaders = list[tuple[bytes, bytes]]

_RAW_CORS: Final[RawHeaders] = [
    (b"access-control-allow-origin", b"*"),
    (b"access-control-expose-headers", _CORS_EXPOSE_HEADERS.encode("latin-1")),
]
_RAW_JSON_TYPE: Final = (b"content-type", _JSON_CONTENT_TYPE.encode("latin-1"))
_RAW_PRIVATE: Final[RawHeaders] = [(b"cache-control", b"private"), (b"vary", b"Authorization")]


def _raw(headers: Mapping[str, str]) -> RawHeaders:
    return [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]


class _Answer:
    """A complete answer sent straight to ASGI (the hot path skips Starlette's Response)."""

    __slots__ = ("body", "headers", "status")

    def __init__(
        self, status: int, body: bytes, headers: RawHeaders, content_type: bool = True
    ) -> None:
        headers = [*_RAW_CORS, *headers]
        if content_type:
            headers.append(_RAW_JSON_TYPE)
        headers.append((b"content-length", b"%d" % len(body)))
        self.status = status
        self.body = body
        self.headers = headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status, "headers": self.headers})
        await send({"type": "http.response.body", "body": self.body})


def json_response(
    body: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    """A JSON answer in the atproto JSON form, with the CORS headers."""
    out = dict(_CORS_HEADERS)
    if headers:
        out.update(headers)
    return Response(_dumps(body), status, out, _JSON_CONTENT_TYPE)


def _is_hidden(exc: RoostError) -> bool:
    """500-class errors whose message must not reach the client."""
    return exc.status >= 500 and exc.status not in (501, 502, 503, 504)


def _error_body(exc: RoostError) -> bytes:
    if _is_hidden(exc):
        return _INTERNAL_ERROR_BODY
    return _dumps({"error": exc.error, "message": exc.message or _reason(exc.status)})


_INTERNAL_ERROR_BODY: Final = b'{"error":"InternalServerError","message":"Internal Server Error"}'


def _reason(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _error_headers(exc: RoostError, rate_headers: RawHeaders | None = None) -> RawHeaders:
    """Rate-limit headers (the error's own, else those given), challenge, Retry-After."""
    own = getattr(exc, "rate_limit_headers", None)
    out: RawHeaders = list(own or rate_headers or ())
    if exc.status == 401:
        challenge = getattr(exc, "www_authenticate", "Bearer")
        out.append((b"www-authenticate", challenge.encode("latin-1")))
    if (
        isinstance(exc, RateLimitExceeded)
        and exc.retry_after is not None
        and not any(name == b"retry-after" for name, _ in out)
    ):
        out.append((b"retry-after", b"%d" % max(0, math.ceil(exc.retry_after))))
    return out


def _error_answer(exc: RoostError, rate_headers: RawHeaders | None = None) -> _Answer:
    return _Answer(exc.status, _error_body(exc), _error_headers(exc, rate_headers))


def error_response(exc: RoostError, headers: Mapping[str, str] | None = None) -> Response:
    """``{"error", "message"}`` with the error's status (500s reveal nothing), as a Response."""
    out = dict(_CORS_HEADERS)
    if headers:
        out.update(headers)
    for name, value in _error_headers(exc):
        out[name.decode("latin-1")] = value.decode("latin-1")
    return Response(_error_body(exc), exc.status, out, _JSON_CONTENT_TYPE)


class _HttpError(RoostError):
    """A generic error name with an unusual status (405, 426)."""

    def __init__(self, message: str, status: int, error: str = "InvalidRequest") -> None:
        super().__init__(message)
        self.status = status
        self.error = error


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"request entity too large: the limit is {limit} bytes")


def _rate_limited(status: RateLimitStatus) -> RateLimitExceeded:
    return RateLimitExceeded("Rate Limit Exceeded", retry_after=status.retry_after)


def _rate_headers(statuses: list[RateLimitStatus]) -> RawHeaders:
    """Headers of the tightest budget charged so far (a fresh list)."""
    if not statuses:
        return []
    if len(statuses) == 1:
        return statuses[0].raw_headers()
    return tightest(statuses).raw_headers()  # type: ignore[union-attr]


def _with_cors(response: Response) -> Response:
    for name, value in _CORS_HEADERS.items():
        if name not in response.headers:
            response.headers[name] = value
    return response


def _decoded(headers: RawHeaders) -> dict[str, str]:
    return {name.decode("latin-1"): value.decode("latin-1") for name, value in headers}


def _limit_key(limit: RateLimit, auth: Credentials, ip: str) -> str:
    if limit.per == "account" and auth.did is not None:
        return "did:" + auth.did
    return "ip:" + ip


def _client_ip(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


def _mime(value: str | None) -> str:
    """``type/subtype`` lower-cased, parameters dropped; '' if absent."""
    if not value:
        return ""
    return value.partition(";")[0].strip().lower()


def _encoding_matches(expected: str, actual: str) -> bool:
    expected = _mime(expected)
    if expected in ("*/*", "*"):
        return True
    if expected.endswith("/*"):
        return actual.startswith(expected[:-1])
    return expected == actual


def _parse_query(query_string: bytes) -> dict[str, str | list[str]]:
    """Query string -> {name: value, or [values] when repeated}; strict UTF-8."""
    if not query_string:
        return {}
    try:
        text = query_string.decode("utf-8")
        parts = text.split("&")
        if len(parts) > _MAX_QUERY_FIELDS:
            raise ValueError("too many query parameters")
        out: dict[str, str | list[str]] = {}
        for part in parts:
            if not part:
                continue
            key, _, value = part.partition("=")
            if "%" in part or "+" in part:
                key = unquote_plus(key, errors="strict")
                value = unquote_plus(value, errors="strict")
            if not key:
                continue
            seen = out.get(key)
            if seen is None:
                out[key] = value
            elif isinstance(seen, list):
                seen.append(value)
            else:
                out[key] = [seen, value]
    except (UnicodeDecodeError, ValueError):
        raise RoostError("invalid query string") from None
    return out


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed in JSON")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise ValueError("duplicate key in a JSON object")
    return obj


def _parse_json(body: bytes) -> Any:
    try:
        text = body.decode("utf-8")
        return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)
    except UnicodeDecodeError:
        raise RoostError("Request body is not valid UTF-8") from None
    except (ValueError, RecursionError) as exc:
        raise RoostError(f"Request body is not valid JSON: {_json_problem(exc)}") from None


def _json_problem(exc: BaseException) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return f"{exc.msg} at line {exc.lineno} column {exc.colno}"
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    return str(exc)


def _body_presence(scope: Scope) -> Literal["missing", "empty", "present"]:
    content_length = None
    for name, value in scope["headers"]:
        if name == b"transfer-encoding":
            return "present"
        if name == b"content-length":
            content_length = value
    if content_length is None:
        return "missing"
    return "empty" if content_length.strip() == b"0" else "present"


def _declared_length(request: Request) -> int | None:
    value = request.headers.get("content-length")
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise RoostError("invalid Content-Length") from None


# -- routing --------------------------------------------------------------------------------


class XrpcRoute(BaseRoute):
    """Matches every HTTP and WebSocket request under ``/xrpc/``."""

    def __init__(self, router: XrpcRouter) -> None:
        self.router = router
        self.path = "/xrpc/{nsid}"
        self.name = "xrpc"

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if scope["type"] in ("http", "websocket"):
            path: str = scope["path"]
            root = scope.get("root_path", "")
            if root and path.startswith(root):
                path = path[len(root) :]
            if path.startswith("/xrpc/"):
                return Match.FULL, {"endpoint": self.router, "path_params": {"nsid": path[6:]}}
        return Match.NONE, {}

    def url_path_for(self, name: str, /, **path_params: Any) -> Any:
        raise NoMatchFound(name, path_params)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self.router.handle_http(scope, receive, send)
        else:
            await self.router.handle_websocket(scope, receive, send)


class XrpcRouter:
    """Handlers by NSID, and the Starlette route that serves them.

    ``catalog``: the lexicons (``roost.lexicon.Catalog``); every registered
    NSID must be a method there, of the matching type. ``debug``: validate
    outputs and subscription messages too. ``health``: awaited by
    ``/xrpc/_health``; may return extra fields, raises when unhealthy.
    ``rate_limiter``: the buckets (inject one with a fake clock in tests).
    ``global_rate_limit``: charged on every call of methods that do not opt
    out; ``None`` for none. Clients in ``rate_limit_bypass_ips``, requests
    carrying ``x-ratelimit-bypass: <rate_limit_bypass_secret>`` and admin
    credentials are never rate limited. ``max_json_body`` /
    ``max_text_body`` / ``max_binary_body``: default body limits by input
    encoding (a method's ``max_body`` overrides). ``fallback``: answers
    NSIDs with no handler (default: 501).
    """

    def __init__(
        self,
        catalog: LexiconCatalog,
        *,
        version: str = "0.0.0",
        debug: bool = False,
        health: HealthCheck | None = None,
        rate_limiter: RateLimiter | None = None,
        global_rate_limit: RateLimit | None = DEFAULT_GLOBAL_RATE_LIMIT,
        rate_limit_bypass_ips: Iterable[str] = (),
        rate_limit_bypass_secret: str | None = None,
        max_json_body: int = DEFAULT_MAX_JSON_BODY,
        max_text_body: int = DEFAULT_MAX_TEXT_BODY,
        max_binary_body: int = DEFAULT_MAX_BINARY_BODY,
        fallback: Fallback | None = None,
    ) -> None:
        self.catalog = catalog
        self.version = version
        self.debug = debug
        self.health = health
        self.rate_limiter = (
            rate_limiter if rate_limiter is not None else RateLimiter(clock=time.time)
        )
        self.global_rate_limit = global_rate_limit
        self.rate_limit_bypass_ips = frozenset(rate_limit_bypass_ips)
        self.rate_limit_bypass_secret = rate_limit_bypass_secret
        self.max_json_body = max_json_body
        self.max_text_body = max_text_body
        self.max_binary_body = max_binary_body
        self.fallback = fallback
        self._methods: dict[str, _Method] = {}
        self._health_body = _dumps({"version": version})

    # -- registration ---------------------------------------------------------------

    @property
    def routes(self) -> list[BaseRoute]:
        """Routes to put in the Starlette app (one route for all of ``/xrpc/``)."""
        return [XrpcRoute(self)]

    @property
    def nsids(self) -> list[str]:
        return sorted(self._methods)

    def query(
        self,
        nsid: str,
        *,
        auth: Verifier | None = None,
        rate_limits: Sequence[RateLimit] = (),
        global_rate_limit: bool = True,
    ) -> Callable[[Handler], Handler]:
        """Register ``async def handler(ctx) -> result`` for the query ``nsid`` (GET)."""
        return self._register(nsid, "query", auth, rate_limits, global_rate_limit, None, False)

    def procedure(
        self,
        nsid: str,
        *,
        auth: Verifier | None = None,
        rate_limits: Sequence[RateLimit] = (),
        global_rate_limit: bool = True,
        max_body: int | None = None,
        stream_input: bool = False,
    ) -> Callable[[Handler], Handler]:
        """Register a handler for the procedure ``nsid`` (POST).

        ``max_body`` caps the request body in bytes; ``stream_input=True``
        hands a non-JSON body over as a :class:`BodyStream` instead of bytes.
        """
        return self._register(
            nsid, "procedure", auth, rate_limits, global_rate_limit, max_body, stream_input
        )

    def subscription(
        self,
        nsid: str,
        *,
        auth: Verifier | None = None,
        rate_limits: Sequence[RateLimit] = (),
        global_rate_limit: bool = True,
    ) -> Callable[[Callable[[XrpcContext], Any]], Callable[[XrpcContext], Any]]:
        """Register an async generator ``handler(ctx)`` for the subscription ``nsid``."""
        return self._register(
            nsid, "subscription", auth, rate_limits, global_rate_limit, None, False
        )

    def _register(
        self,
        nsid: str,
        kind: Kind,
        auth: Verifier | None,
        rate_limits: Sequence[RateLimit],
        global_rate_limit: bool,
        max_body: int | None,
        stream_input: bool,
    ) -> Callable[[Any], Any]:
        definition = self.catalog.method(nsid)
        if definition is None:
            raise LexiconError(f"no lexicon method {nsid!r} in the catalog")
        if definition.type != kind:
            raise LexiconError(f"{nsid} is a {definition.type}, not a {kind}")
        if nsid in self._methods:
            raise ValueError(f"{nsid} already has a handler")
        if auth is not None and not isinstance(auth, Verifier):
            raise TypeError("auth must be a verifier (see roost.auth)")
        input_encoding = definition.input_encoding if kind == "procedure" else None
        json_input = _mime(input_encoding) == _JSON
        if max_body is None:
            if input_encoding is None or json_input:
                max_body = self.max_json_body
            elif _mime(input_encoding).startswith("text/"):
                max_body = self.max_text_body
            else:
                max_body = self.max_binary_body

        def decorator(handler: Any) -> Any:
            self._methods[nsid] = _Method(
                nsid=nsid,
                kind=kind,
                handler=handler,
                auth=auth,
                rate_limits=tuple(rate_limits),
                global_rate_limit=global_rate_limit,
                max_body=max_body,
                stream_input=stream_input and not json_input,
                input_encoding=input_encoding,
                json_input=json_input,
                has_output_schema=bool(getattr(definition, "output_schema", None)),
            )
            return handler

        return decorator

    # -- rate limits ---------------------------------------------------------------------

    def _bypassed(self, conn: Request | WebSocket, auth: Credentials, ip: str) -> bool:
        if isinstance(auth, AdminCredentials) or ip in self.rate_limit_bypass_ips:
            return True
        secret = self.rate_limit_bypass_secret
        if secret is not None:
            given = conn.headers.get("x-ratelimit-bypass")
            if given is not None and _constant_eq(given, secret):
                return True
        return False

    def _charge(
        self,
        method: _Method,
        conn: Request | WebSocket,
        auth: Credentials,
        ip: str,
        *,
        ip_only: bool = False,
    ) -> list[RateLimitStatus]:
        """Charge the global and the method's limits; raise if any refuses."""
        if self._bypassed(conn, auth, ip):
            return []
        charges: list[tuple[RateLimit, str]] = []
        if method.global_rate_limit and self.global_rate_limit is not None:
            charges.append((self.global_rate_limit, "ip:" + ip))
        for limit in method.rate_limits:
            if ip_only and limit.per != "ip":
                continue
            charges.append((limit, _limit_key(limit, auth, ip)))
        if not charges:
            return []
        if len(charges) == 1:
            statuses = [self.rate_limiter.consume(*charges[0])]
        else:
            statuses = self.rate_limiter.consume_many(charges)
        for status in statuses:
            if not status.allowed:
                exc = _rate_limited(status)
                exc.rate_limit_headers = status.raw_headers()  # type: ignore[attr-defined]
                raise exc
        return statuses

    # -- HTTP -------------------------------------------------------------------------------

    async def handle_http(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The ASGI entry point for ``/xrpc/*`` HTTP requests."""
        nsid: str = scope["path_params"]["nsid"]
        verb: str = scope["method"]
        response: Any
        if verb == "OPTIONS":
            response = self._preflight(Request(scope, receive))
        elif nsid == "_health":
            if verb == "GET" or verb == "HEAD":
                response = await self._health_response()
            else:
                exc = RoostError(f"Incorrect HTTP method ({verb}) expected GET")
                response = _error_answer(exc)
        else:
            response = await self._call(Request(scope, receive), nsid, verb)
        if response is not None:
            await response(scope, receive, send)

    def _preflight(self, request: Request) -> Response:
        requested = request.headers.get("access-control-request-headers")
        allow = requested if requested and _HEADER_LIST_RE.fullmatch(requested) else None
        headers = {
            "Access-Control-Allow-Origin": "*",
            "Access-Control-Allow-Methods": "GET, HEAD, PUT, PATCH, POST, DELETE",
            "Access-Control-Allow-Headers": allow or _CORS_ALLOW_HEADERS,
            "Access-Control-Max-Age": "86400",
            "Access-Control-Expose-Headers": _CORS_EXPOSE_HEADERS,
            "Vary": "Access-Control-Request-Headers",
        }
        return Response(None, 204, headers)

    async def _health_response(self) -> _Answer:
        if self.health is None:
            return _Answer(200, self._health_body, [])
        body: dict[str, Any] = {"version": self.version}
        try:
            extra = await self.health()
        except Exception:
            logger.warning("health check failed", exc_info=True)
            body["error"] = "Service Unavailable"
            return _Answer(503, _dumps(body), [])
        if extra:
            body.update(extra)
        return _Answer(200, _dumps(body), [])

    async def _call(self, request: Request, nsid: str, verb: str) -> Any:
        method = self._methods.get(nsid)
        statuses: list[RateLimitStatus] = []
        try:
            if method is None:
                if not is_valid_nsid(nsid):
                    raise RoostError("invalid xrpc path")
                if self.fallback is not None:
                    return _with_cors(await self.fallback(request, nsid))
                raise MethodNotImplemented("Method Not Implemented")
            self._check_verb(method, verb)
            ctx = await self._prepare(method, request)
            statuses = ctx._statuses
            result = await method.handler(ctx)
            return self._render(method, ctx, result)
        except RoostError as exc:
            if _is_hidden(exc):
                logger.error("xrpc error nsid=%s error=%s", nsid, exc.error, exc_info=exc)
            return _error_answer(exc, _rate_headers(statuses))
        except ClientDisconnect:
            logger.debug("client went away nsid=%s", nsid)
            return None
        except Exception:
            logger.exception("xrpc handler failed nsid=%s", nsid)
            return _Answer(500, _INTERNAL_ERROR_BODY, _rate_headers(statuses))

    def _check_verb(self, method: _Method, verb: str) -> None:
        kind = method.kind
        if kind == "query":
            if verb != "GET" and verb != "HEAD":
                raise RoostError(f"Incorrect HTTP method ({verb}) expected GET")
        elif kind == "procedure":
            if verb != "POST":
                raise RoostError(f"Incorrect HTTP method ({verb}) expected POST")
        elif verb != "GET":
            raise _HttpError(f"Incorrect HTTP method ({verb}) expected GET", 405)
        else:
            raise _HttpError("This method is a subscription: a WebSocket upgrade is required", 426)

    async def _prepare(self, method: _Method, request: Request) -> XrpcContext:
        scope = request.scope
        nsid = method.nsid
        params = self.catalog.validate_params(nsid, _parse_query(scope["query_string"]))

        # Body headers: cheap checks before auth, reading only after it.
        presence = _body_presence(scope)
        encoding: str | None = None
        if method.input_encoding is None:
            if presence == "present":
                raise RoostError("A request body was provided when none was expected")
        else:
            if presence == "missing":
                raise RoostError("A request body is expected but none was provided")
            encoding = _mime(request.headers.get("content-type"))
            if not encoding:
                raise RoostError("Request encoding (Content-Type) required but not provided")
            if not _encoding_matches(method.input_encoding, encoding):
                raise UnsupportedMediaType(f"Wrong request encoding (Content-Type): {encoding}")
            declared = _declared_length(request)
            if declared is not None and declared > method.max_body:
                raise _too_large(method.max_body)

        ip = _client_ip(scope)
        auth: Credentials = UNAUTHENTICATED
        if method.auth is not None:
            try:
                auth = await method.auth(request, nsid)
            except RoostError:
                # Failed logins still count against the IP's budgets.
                self._charge(method, request, UNAUTHENTICATED, ip, ip_only=True)
                raise
        ctx = XrpcContext(
            nsid=nsid,
            params=params,
            auth=auth,
            request=request,
            client_ip=ip,
            encoding=encoding,
            _router=self,
            _statuses=self._charge(method, request, auth, ip),
        )
        if method.input_encoding is not None:
            if method.stream_input:
                ctx.input = BodyStream(request, method.max_body)
            else:
                raw = await BodyStream(request, method.max_body).read()
                if method.json_input:
                    if not raw:
                        raise RoostError("A request body is expected but none was provided")
                    ctx.input = self.catalog.validate_input(nsid, _parse_json(raw))
                else:
                    ctx.input = raw
        return ctx

    def _render(self, method: _Method, ctx: XrpcContext, result: Any) -> Any:
        headers = _rate_headers(ctx._statuses)
        if type(ctx.auth) is not Unauthenticated:
            headers.extend(_RAW_PRIVATE)
        if ctx.response_headers:
            headers.extend(_raw(ctx.response_headers))
        if isinstance(result, dict):
            if self.debug and method.has_output_schema:
                _check_own_data(self.catalog.validate_output, method.nsid, result, "output")
            return _Answer(200, _dumps(result), headers)
        if result is None:
            if self.debug and method.has_output_schema:
                raise TypeError(f"{method.nsid} declares an output but its handler returned None")
            return _Answer(200, b"", headers, content_type=False)
        if isinstance(result, Output):
            merged = {**_CORS_HEADERS, **_decoded(headers), **(result.headers or {})}
            if isinstance(result.body, (bytes, bytearray, memoryview)):
                return Response(bytes(result.body), result.status, merged, result.encoding)
            return StreamingResponse(result.body, result.status, merged, result.encoding)
        if isinstance(result, Response):
            for name, value in {**_CORS_HEADERS, **_decoded(headers)}.items():
                if name not in result.headers:
                    result.headers[name] = value
            return result
        raise TypeError(f"{method.nsid} handler returned {type(result).__name__}")

    # -- WebSocket --------------------------------------------------------------------------------

    async def handle_websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The ASGI entry point for ``/xrpc/*`` WebSocket upgrades."""
        ws = WebSocket(scope, receive, send)
        nsid: str = scope["path_params"]["nsid"]
        method = self._methods.get(nsid)
        if method is None or method.kind != "subscription":
            if method is not None:
                exc: RoostError = RoostError(f"{nsid} is a {method.kind}, not a subscription")
            elif is_valid_nsid(nsid):
                exc = MethodNotImplemented("Method Not Implemented")
            else:
                exc = RoostError("invalid xrpc path")
            await self._refuse(ws, exc, deny=True)
            return
        ip = _client_ip(scope)
        try:
            params = self.catalog.validate_params(nsid, _parse_query(scope["query_string"]))
            auth: Credentials = UNAUTHENTICATED
            if method.auth is not None:
                try:
                    auth = await method.auth(ws, nsid)
                except RoostError:
                    self._charge(method, ws, UNAUTHENTICATED, ip, ip_only=True)
                    raise
            self._charge(method, ws, auth, ip)
        except RateLimitExceeded as exc:
            await self._refuse(ws, exc, deny=True)
            return
        except RoostError as exc:
            await self._refuse(ws, exc, deny=False)
            return
        except Exception:
            logger.exception("xrpc subscription setup failed nsid=%s", nsid)
            await self._refuse(ws, InternalServerError("Internal Server Error"), deny=True)
            return
        ctx = XrpcContext(
            nsid=nsid, params=params, auth=auth, request=ws, client_ip=ip, _router=self
        )
        await ws.accept()
        await self._run_subscription(method, ws, ctx)

    async def _refuse(self, ws: WebSocket, exc: RoostError, *, deny: bool) -> None:
        """Refuse a subscription: an HTTP answer if possible and wanted, else an error frame."""
        if deny and "websocket.http.response" in ws.scope.get("extensions", {}):
            await ws.send_denial_response(error_response(exc))
            return
        if _is_hidden(exc):
            error, message = "InternalServerError", "Internal Server Error"
        else:
            error, message = exc.error, exc.message
        await ws.accept()
        with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
            await ws.send_bytes(encode_error_frame(error, message or None))
            await ws.close(1008, error[:120])

    async def _run_subscription(self, method: _Method, ws: WebSocket, ctx: XrpcContext) -> None:
        producer = asyncio.ensure_future(self._produce(method, ws, ctx))
        watcher = asyncio.ensure_future(_wait_disconnect(ws))
        try:
            await asyncio.wait({producer, watcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (producer, watcher):
                if not task.done():
                    task.cancel()
            for task in (producer, watcher):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    async def _produce(self, method: _Method, ws: WebSocket, ctx: XrpcContext) -> None:
        nsid = method.nsid
        stream: Any = None
        try:
            stream = method.handler(ctx)
            if inspect.isawaitable(stream):
                stream = await stream
            async for item in stream:
                await ws.send_bytes(self._frame(nsid, item))
        except RoostError as exc:
            if _is_hidden(exc):
                logger.error("xrpc subscription error nsid=%s", nsid, exc_info=exc)
                error, message = "InternalServerError", "Internal Server Error"
            else:
                error, message = exc.error, exc.message
            with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
                await ws.send_bytes(encode_error_frame(error, message or None))
                await ws.close(1008, error[:120])
            return
        except (WebSocketDisconnect, asyncio.CancelledError):
            raise
        except Exception:
            logger.exception("xrpc subscription failed nsid=%s", nsid)
            with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
                await ws.close(1011)
            return
        finally:
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()
        if ws.application_state == WebSocketState.CONNECTED:
            with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
                await ws.close(1000)

    def _frame(self, nsid: str, item: Any) -> bytes:
        if isinstance(item, (bytes, bytearray, memoryview)):
            return bytes(item)
        if isinstance(item, tuple) and len(item) == 2:
            t, body = item
            if self.debug:
                full = nsid + t if t.startswith("#") else t
                _check_own_data(
                    self.catalog.validate_message, nsid, {"$type": full, **body}, "message"
                )
            return encode_frame(t, body)
        if isinstance(item, dict) and isinstance(item.get("$type"), str):
            full = item["$type"]
            if self.debug:
                _check_own_data(self.catalog.validate_message, nsid, item, "message")
            t = full[len(nsid) :] if full.startswith(nsid + "#") else full
            body = {k: v for k, v in item.items() if k != "$type"}
            return encode_frame(t, body)
        raise TypeError(
            f"cannot frame a {type(item).__name__}: yield (t, body), a $type dict or bytes"
        )


class InvalidOutput(RuntimeError):
    """A handler produced data its lexicon rejects (debug mode): a server bug, so a 500."""


def _check_own_data(validate: Callable[[str, Any], Any], nsid: str, value: Any, what: str) -> None:
    try:
        validate(nsid, value)
    except RoostError as exc:
        raise InvalidOutput(f"{nsid} produced an invalid {what}: {exc.message}") from exc


async def _wait_disconnect(ws: WebSocket) -> None:
    """Read (and ignore) whatever the client sends until it goes away."""
    while True:
        message = await ws.receive()
        if message["type"] == "websocket.disconnect":
            return


def _constant_eq(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode("utf-8"), b.encode("utf-8"))
