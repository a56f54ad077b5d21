"""The PDS as a Starlette app: ``create_app(config)``.

The lifespan opens the database, starts the writer and the sequencer, and
builds the :class:`~pds.context.PdsContext` every handler uses; shutdown
drains the writer (pending writes finish) and closes the firehose.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager, suppress
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from roost.auth import SessionAuth, SessionCredentials
from roost.errors import AccountTakedown, ExpiredToken, RoostError
from roost.lexicon import Catalog
from roost.netguard import GuardedTransport, OutboundPolicy
from roost.plc import PlcClient
from roost.xrpc import XrpcContext, XrpcRouter

from pds.api import actor, identity, importer, repo, server, sync
from pds import web
from pds.blobstore import DiskBlobStore
from pds.config import PdsConfig
from pds.context import AccountDeleted, PdsContext
from pds.proxy import ProxyHeaderMiddleware, proxy_fallback
from roost.sequencer import Sequencer
from pds.sqlite import PdsDatabase
from pds.writer import Writer

__all__ = ["create_app", "request_crawl"]

log = logging.getLogger(__name__)

#: A relay is asked to crawl this server at most this often (per relay and hostname).
CRAWL_REQUEST_INTERVAL_S = 20 * 60
#: Attempts per relay, and the delay before the first retry (then x4 each time).
CRAWL_REQUEST_ATTEMPTS = 3
CRAWL_RETRY_DELAY_S = 2.0
#: (relay url, hostname) -> time.monotonic() of the last request sent in this process.
_last_crawl_request: dict[tuple[str, str], float] = {}


async def request_crawl(
    http: httpx.AsyncClient,
    relay_urls: Sequence[str],
    hostname: str,
    *,
    retry_delay: float = CRAWL_RETRY_DELAY_S,
) -> None:
    """POST ``com.atproto.sync.requestCrawl {hostname}`` to each relay, concurrently.

    Failures are logged, never raised; each relay gets a few attempts with
    exponential backoff, and is asked at most once per
    :data:`CRAWL_REQUEST_INTERVAL_S` for a hostname.
    """

    async def one(relay: str) -> None:
        key = (relay, hostname)
        last = _last_crawl_request.get(key)
        if last is not None and time.monotonic() - last < CRAWL_REQUEST_INTERVAL_S:
            log.info("requestCrawl to %s skipped: asked recently", relay)
            return
        _last_crawl_request[key] = time.monotonic()
        url = relay.rstrip("/") + "/xrpc/com.atproto.sync.requestCrawl"
        delay = retry_delay
        for attempt in range(1, CRAWL_REQUEST_ATTEMPTS + 1):
            try:
                response = await http.post(url, json={"hostname": hostname})
            except (httpx.HTTPError, RoostError) as exc:
                problem = f"{type(exc).__name__}: {exc}"
            else:
                if response.is_success:
                    log.info("requestCrawl to %s accepted", relay)
                    return
                problem = f"HTTP {response.status_code}: {response.text[:200]}"
                if response.status_code < 500 and response.status_code != 429:
                    log.warning("requestCrawl to %s refused (%s)", relay, problem)
                    return
            if attempt == CRAWL_REQUEST_ATTEMPTS:
                log.warning("requestCrawl to %s failed, giving up (%s)", relay, problem)
                return
            log.info("requestCrawl to %s failed (%s), retrying in %.0fs", relay, problem, delay)
            await asyncio.sleep(delay)
            delay *= 4

    results = await asyncio.gather(*(one(relay) for relay in relay_urls), return_exceptions=True)
    for relay, result in zip(relay_urls, results):
        if isinstance(result, Exception):
            log.warning("requestCrawl to %s failed: %r", relay, result)


class _EventLog:
    """The sequencer's view of the event table."""

    def __init__(self, db: PdsDatabase) -> None:
        self.db = db

    async def read_after(self, seq: int, limit: int) -> list[tuple[int, bytes]]:
        return self.db.events_after(seq, limit)

    async def latest_seq(self) -> int:
        return self.db.last_seq()

    async def oldest_seq_since(self, time_ms: int) -> int | None:
        return self.db.oldest_seq_since(time_ms)


def create_app(config: PdsConfig, *, catalog: Catalog | None = None) -> Starlette:
    """A PDS app for ``config`` (secrets are loaded or created in its data dir)."""
    config = config.with_secrets()
    catalog = catalog or Catalog.load()
    router = XrpcRouter(
        catalog,
        version=config.version,
        debug=config.debug,
        fallback=proxy_fallback,
        rate_limit_bypass_ips=config.rate_limit_bypass_ips,
    )
    server.register(router)
    repo.register(router)
    sync.register(router)
    identity.register(router)
    actor.register(router)
    importer.register(router)

    @router.subscription("com.atproto.sync.subscribeRepos")
    async def subscribe_repos(ctx: XrpcContext) -> AsyncIterator[bytes]:
        # the stream is iterated in this task: the one to cancel if the client stops reading
        sequencer: Sequencer = ctx.request.app.state.pds.sequencer
        return sequencer.subscribe(ctx.params.get("cursor"), stuck_task=asyncio.current_task())

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        db = PdsDatabase(config.database_path)
        sequencer = Sequencer(_EventLog(db), replay_window_s=config.replay_window_s)
        writer = Writer(db, on_events=sequencer.publish)
        http = httpx.AsyncClient(
            transport=GuardedTransport(OutboundPolicy(allow_local=config.allow_local)),
            timeout=httpx.Timeout(10.0),
            follow_redirects=False,
        )
        secret = config.jwt_secret.encode()  # type: ignore[union-attr]

        async def check_session(creds: SessionCredentials) -> None:
            account = db.account(creds.did)
            if account is None:
                if db.deleted_at(creds.did) is not None:
                    raise AccountDeleted("Account has been deleted")
                raise ExpiredToken("Token is for an account that does not exist")
            if account.status == "takendown":
                raise AccountTakedown("Account has been taken down")
            if creds.token_type == "refresh" and db.refresh_token(creds.jti or "") is None:
                raise ExpiredToken("Token has been revoked")

        ctx = PdsContext(
            config=config,
            db=db,
            writer=writer,
            sequencer=sequencer,
            catalog=catalog,
            plc=PlcClient(config.plc_url, http=http),
            http=http,
            access=SessionAuth(secret, config.service_did, check=check_session),
            refresh=SessionAuth(
                secret, config.service_did, token_type="refresh", check=check_session
            ),
            blobs=DiskBlobStore(config.blob_dir),
        )
        app.state.pds = ctx
        await writer.start()
        blob_gc = asyncio.create_task(repo.run_blob_gc(ctx), name="pds-blob-gc")
        crawl = asyncio.create_task(
            request_crawl(http, config.relay_urls, config.crawl_hostname), name="pds-request-crawl"
        )
        try:
            yield
        finally:
            for task in (blob_gc, crawl):
                task.cancel()
                with suppress(asyncio.CancelledError):
                    await task
            sequencer.close()
            await writer.stop()
            await http.aclose()
            db.close()

    async def atproto_did(request: Request) -> Response:
        host = (request.headers.get("host") or "").split(":")[0].lower()
        account = request.app.state.pds.db.account_by_handle(host)
        if account is None or not account.active:
            return PlainTextResponse("User not found", status_code=404)
        return PlainTextResponse(account.did)

    routes: list[Any] = [
        *web.routes(config),  # the public page at / and the admin console at /admin
        Route("/.well-known/atproto-did", atproto_did),
        *router.routes,
    ]
    return Starlette(
        routes=routes, lifespan=lifespan, middleware=[Middleware(ProxyHeaderMiddleware)]
    )
