"""The did:plc directory as a Starlette app (plc.directory-compatible HTTP API).

Routes:

=======================  =====================================================
``POST /:did``           submit a signed op (genesis or update); 200, or 400
                         ``{"message"}`` naming the broken rule, 409 when a
                         concurrent update won, 413 body too large, 429 rate
``GET /:did``            DID document (``application/did+ld+json``); 404
                         ``DID not registered``, 410 ``DID not available``
``GET /:did/data``       state JSON; same errors
``GET /:did/log``        valid chain of ops, oldest first
``GET /:did/log/audit``  every op with ``cid``, ``nullified``, ``createdAt``
``GET /:did/log/last``   newest valid op (may be a tombstone)
``GET /export``          JSON lines; ``after`` = seq (``sequenced_op`` lines)
                         or timestamp / absent (legacy lines), ``count`` ≤ 1000
``GET /_health``         ``{"version"}`` (also ``/xrpc/_health``)
=======================  =====================================================

Errors are ``{"message": ..., "error": <name>}``; the reference directory's
clients read ``message``. Submissions are limited per client IP (token
bucket) and per DID (the reference's ops-per-hour/day/week counts, plain
appends only; recoveries are never rate limited).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from plc.config import PlcConfig
from plc.mirror import Mirror
from plc.storage import ExportCursor, LogEntry, PlcStore
from roost.errors import InternalServerError, PayloadTooLarge, RateLimitExceeded, RoostError
from roost.plc import (
    DocumentState,
    PlcTombstone,
    check_rate_limits,
    is_valid_plc_did,
    op_cid,
    parse_op,
    parse_timestamp,
    state_from_op,
    validate_next_op,
)

__all__ = ["create_app", "PlcContext", "IpRateLimiter", "MAX_EXPORT_COUNT", "DEFAULT_EXPORT_COUNT"]

log = logging.getLogger(__name__)

MAX_EXPORT_COUNT = 1000
DEFAULT_EXPORT_COUNT = 10
_MS = timedelta(milliseconds=1)

Clock = Callable[[], datetime]


def _utc_now() -> datetime:
    return datetime.now(UTC)


class IpRateLimiter:
    """Token bucket per client address: ``limit`` submissions per ``window`` seconds."""

    MAX_TRACKED = 10_000

    def __init__(
        self, limit: int, window: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limit = limit
        self.rate = limit / window if window > 0 else 0.0
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}

    def hit(self, key: str) -> float | None:
        """Take one token; returns None if allowed, else seconds until one is free."""
        if self.limit <= 0:
            return None
        now = self.clock()
        tokens, last = self._buckets.get(key, (float(self.limit), now))
        tokens = min(float(self.limit), tokens + (now - last) * self.rate)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            return (1.0 - tokens) / self.rate
        self._buckets[key] = (tokens - 1.0, now)
        if len(self._buckets) > self.MAX_TRACKED:
            self._evict(now)
        return None

    def _evict(self, now: float) -> None:
        full = [
            k
            for k, (t, last) in self._buckets.items()
            if t + (now - last) * self.rate >= self.limit
        ]
        for key in full:
            del self._buckets[key]
        while len(self._buckets) > self.MAX_TRACKED:  # all busy: drop the oldest
            del self._buckets[next(iter(self._buckets))]


@dataclass
class PlcContext:
    """What the handlers share, built in the lifespan and kept on ``app.state.plc``."""

    config: PlcConfig
    store: PlcStore
    clock: Clock
    ip_limiter: IpRateLimiter
    mirror: Mirror | None = None


# -- responses ------------------------------------------------------------------------


def _error(status: int, message: str, name: str = "InvalidRequest") -> JSONResponse:
    return JSONResponse({"message": message, "error": name}, status_code=status)


def _not_registered(did: str) -> JSONResponse:
    return _error(404, f"DID not registered: {did}", "DidNotFound")


def _not_available(did: str) -> JSONResponse:
    return _error(410, f"DID not available: {did}", "DidDeactivated")


Handler = Callable[[Request], Awaitable[Response]]


def _handler(fn: Handler) -> Handler:
    """Turn roost errors into ``{"message", "error"}`` answers and hide 500 details."""

    async def wrapped(request: Request) -> Response:
        try:
            return await fn(request)
        except InternalServerError:
            return _error(500, "Internal Server Error", "InternalServerError")
        except RateLimitExceeded as exc:
            response = _error(exc.status, exc.message, exc.error)
            if exc.retry_after is not None:
                response.headers["Retry-After"] = str(max(1, round(exc.retry_after)))
            return response
        except RoostError as exc:
            return _error(exc.status, exc.message, exc.error)
        except Exception:
            log.exception("plc handler failed path=%s", request.url.path)
            return _error(500, "Internal Server Error", "InternalServerError")

    wrapped.__name__ = fn.__name__
    return wrapped


def _ctx(request: Request) -> PlcContext:
    ctx: PlcContext = request.app.state.plc
    return ctx


async def _last(ctx: PlcContext, did: str) -> LogEntry | None:
    last = await ctx.store.get_last(did)
    if last is None and ctx.mirror is not None and await ctx.mirror.fetch_did(did):
        last = await ctx.store.get_last(did)
    return last


async def _chain(ctx: PlcContext, did: str, *, include_nullified: bool) -> list[LogEntry]:
    entries = await ctx.store.get_log(did, include_nullified=include_nullified)
    if not entries and ctx.mirror is not None and await ctx.mirror.fetch_did(did):
        entries = await ctx.store.get_log(did, include_nullified=include_nullified)
    return entries


# -- reads ---------------------------------------------------------------------------------


async def _current_state(request: Request) -> DocumentState | Response:
    """The DID's current state, or the 404/410 response that answers instead."""
    did = request.path_params["did"]
    last = await _last(_ctx(request), did)
    if last is None:
        return _not_registered(did)
    state = state_from_op(did, last.operation)
    if state is None:
        return _not_available(did)
    return state


@_handler
async def resolve(request: Request) -> Response:
    state = await _current_state(request)
    if isinstance(state, Response):
        return state
    return Response(
        json.dumps(state.did_document(), separators=(",", ":")),
        media_type="application/did+ld+json",
    )


@_handler
async def get_data(request: Request) -> Response:
    state = await _current_state(request)
    if isinstance(state, Response):
        return state
    return JSONResponse(state.to_json())


@_handler
async def get_log(request: Request) -> Response:
    did = request.path_params["did"]
    chain = await _chain(_ctx(request), did, include_nullified=False)
    if not chain:
        return _not_registered(did)
    return JSONResponse([e.operation.to_json() for e in chain])


@_handler
async def get_audit_log(request: Request) -> Response:
    did = request.path_params["did"]
    entries = await _chain(_ctx(request), did, include_nullified=True)
    if not entries:
        return _not_registered(did)
    return JSONResponse([e.to_json() for e in entries])


@_handler
async def get_last_op(request: Request) -> Response:
    did = request.path_params["did"]
    last = await _last(_ctx(request), did)
    if last is None:
        return _not_registered(did)
    return JSONResponse(last.operation.to_json())


@_handler
async def export(request: Request) -> Response:
    ctx = _ctx(request)
    raw_count = request.query_params.get("count")
    count = DEFAULT_EXPORT_COUNT
    if raw_count is not None:
        try:
            count = int(raw_count)
        except ValueError:
            count = 0
        if count < 1:
            return _error(400, "Invalid count parameter")
        count = min(count, MAX_EXPORT_COUNT)
    after = request.query_params.get("after")
    lines: list[dict[str, Any]]
    if after is not None and after.isdigit():
        entries = await ctx.store.export_seq(int(after), count)
        lines = [e.to_sequenced_json() for e in entries]
    else:
        cursor = None
        if after:
            try:
                cursor = ExportCursor(parse_timestamp(after))
            except ValueError:
                return _error(
                    400, "Invalid after parameter: expected a sequence number or a timestamp"
                )
        entries = await ctx.store.export(count, cursor)
        lines = [e.to_json() for e in entries]
    body = "\n".join(json.dumps(line, separators=(",", ":")) for line in lines)
    return Response(body, media_type="application/jsonlines")


@_handler
async def health(request: Request) -> Response:
    ctx = _ctx(request)
    try:
        await ctx.store.ping()
    except Exception:
        log.exception("plc health check failed")
        return JSONResponse({"version": ctx.config.version, "error": "Service Unavailable"}, 503)
    return JSONResponse({"version": ctx.config.version})


# -- submissions -----------------------------------------------------------------------------


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"Request body too large (max {limit} bytes)")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise PayloadTooLarge(f"Request body too large (max {limit} bytes)")
    return bytes(body)


@_handler
async def submit(request: Request) -> Response:
    ctx = _ctx(request)
    did = request.path_params["did"]
    client = request.client.host if request.client is not None else "unknown"
    wait = ctx.ip_limiter.hit(client)
    if wait is not None:
        raise RateLimitExceeded("Too many operations submitted from this address", retry_after=wait)
    if not is_valid_plc_did(did):
        return _error(
            400, f"Improperly formatted did: {did[:100]} (expected did:plc: + 24 base32 chars)"
        )
    body = await _read_body(request, ctx.config.max_body_bytes)
    if ctx.mirror is not None:
        upstream = await ctx.mirror.forward(did, body)
        return Response(
            upstream.content,
            status_code=upstream.status_code,
            media_type=upstream.headers.get("content-type", "application/json"),
        )
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return _error(400, "Invalid JSON body: expected a signed operation")
    op = parse_op(payload)
    cid = op_cid(op)

    log_entries = await ctx.store.get_log(did)
    chain = [e for e in log_entries if not e.nullified]
    if any(e.cid == cid for e in chain):
        return JSONResponse({"did": did, "cid": cid})  # already applied: idempotent
    now = ctx.clock()
    if chain and now <= chain[-1].created_at:
        now = chain[-1].created_at + _MS  # the log's clock only moves forward
    result = validate_next_op(did, log_entries, op, now)
    if chain and not result.is_recovery:
        check_rate_limits(chain, now, ctx.config.op_rate_limits)
    entry = await ctx.store.append(
        did, op, result, expected_head=chain[-1].cid if chain else None, now=now
    )
    kind = (
        "tombstone" if isinstance(op, PlcTombstone) else "recovery" if result.is_recovery else "op"
    )
    log.info("plc accepted %s did=%s cid=%s", kind, did, cid)
    return JSONResponse({"did": did, "cid": cid, "createdAt": entry.to_json()["createdAt"]})


# -- app ------------------------------------------------------------------------------------------


def create_app(
    config: PlcConfig,
    *,
    clock: Clock | None = None,
    store: PlcStore | None = None,
    http: httpx.AsyncClient | None = None,
) -> Starlette:
    """The directory app; the store opens (and a mirror starts) in the lifespan.

    ``clock`` (UTC datetimes) and ``store`` may be injected; ``http`` is the
    client a mirror uses to reach ``config.upstream``.
    """

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        the_store: PlcStore = store if store is not None else config.open_store()
        await the_store.open()
        own_http = None
        mirror = None
        task = None
        if config.upstream is not None:
            client = http
            if client is None:
                client = own_http = httpx.AsyncClient(timeout=30.0)
            mirror = Mirror(the_store, config.upstream, client, poll_interval=config.poll_interval)
        app.state.plc = PlcContext(
            config=config,
            store=the_store,
            clock=clock or _utc_now,
            ip_limiter=IpRateLimiter(config.ip_rate_limit, config.ip_rate_window),
            mirror=mirror,
        )
        if mirror is not None:
            task = asyncio.create_task(mirror.run(), name="plc-mirror")
        try:
            yield
        finally:
            if task is not None:
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
            if own_http is not None:
                await own_http.aclose()
            await the_store.close()

    routes = [
        Route("/_health", health, methods=["GET"]),
        Route("/xrpc/_health", health, methods=["GET"]),
        Route("/export", export, methods=["GET"]),
        Route("/{did}", resolve, methods=["GET"]),
        Route("/{did}", submit, methods=["POST"]),
        Route("/{did}/data", get_data, methods=["GET"]),
        Route("/{did}/log", get_log, methods=["GET"]),
        Route("/{did}/log/audit", get_audit_log, methods=["GET"]),
        Route("/{did}/log/last", get_last_op, methods=["GET"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan)
