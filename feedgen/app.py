"""The feed generator host as a Starlette app: ``create_app(config)``.

Routes:

- ``GET /xrpc/app.bsky.feed.getFeedSkeleton``: looks the ``feed`` URI up
  (``400 UnknownFeed`` if it is not served here), checks the requester,
  runs the feed's algorithm under its time limit (:mod:`feedgen.runner`);
- ``GET /xrpc/app.bsky.feed.describeFeedGenerator``: the service DID and
  every feed URI served;
- ``GET /.well-known/did.json``: the service's did:web document with its
  ``#bsky_fg`` / ``BskyFeedGenerator`` endpoint (404 when the service DID is
  not this host's did:web);
- ``GET /xrpc/_health``: version, indexer status, plugin failures;
- ``GET /``: the feed catalogue.

Requesters are authenticated by service-auth JWTs (``Authorization: Bearer``),
checked on every request that carries one: signature by the ``#atproto``
key of the issuer's DID document, ``aud`` the service DID (bare or
``#bsky_fg``), ``lxm`` ``app.bsky.feed.getFeedSkeleton``, ``exp``, and a
``jti`` not seen before (without replay protection, a token that verified is
remembered until it expires: :mod:`feedgen.auth`). A bad token is refused with 401 even on an
anonymous feed; a request without one is served only by feeds that allow
anonymous readers.

The lifespan opens the index, starts the indexer (when a firehose is
configured), the reader keeper (:mod:`feedgen.readers`), the author-host
resolver (when a feed selects a host) and the retention sweep, and stops
them in reverse order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Final

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from roost.auth import KeyResolver, optional
from roost.crypto import PublicKey
from roost.errors import AuthRequired, RoostError
from roost.identity import IdentityDirectory, IdentityResolver
from roost.lexicon import Catalog
from roost.xrpc import Output, XrpcContext, XrpcRouter

from feedgen.algos import register_builtins
from feedgen.auth import RememberingServiceAuth
from feedgen.config import FeedgenConfig, load_feeds_file
from feedgen.indexer import HostTracker, Indexer
from feedgen.plugins import Feed, FeedConfigError, FeedRequest, Registry, check_unique, default_feeds
from feedgen.readers import ReaderKeeper
from feedgen.runner import Runner
from feedgen.stats import FeedStats
from feedgen.storage import IndexStore, open_store

__all__ = [
    "GET_FEED_SKELETON",
    "FeedgenContext",
    "UnknownFeed",
    "build_feeds",
    "build_registry",
    "create_app",
    "did_document",
]

log = logging.getLogger(__name__)

GET_FEED_SKELETON: Final = "app.bsky.feed.getFeedSkeleton"
DESCRIBE_FEED_GENERATOR: Final = "app.bsky.feed.describeFeedGenerator"
#: The service entry of a feed generator in its DID document.
SERVICE_ID: Final = "bsky_fg"
SERVICE_TYPE: Final = "BskyFeedGenerator"
#: Accept-Language codes passed to algorithms at most.
MAX_LANGUAGES: Final = 8
#: How often the retention sweep runs, seconds.
PRUNE_INTERVAL_S: Final = 3600.0


class UnknownFeed(RoostError):
    """The ``feed`` URI is not served by this generator."""

    error = "UnknownFeed"


@dataclass(slots=True)
class FeedgenContext:
    """The running service's shared objects (``app.state.feedgen``)."""

    config: FeedgenConfig
    feeds: dict[str, Feed]
    registry: Registry
    store: IndexStore | None = None
    runner: Runner | None = None
    indexer: Indexer | None = None
    hosts: HostTracker | None = None
    readers: ReaderKeeper | None = None
    identity: IdentityDirectory | None = None
    started: float = field(default_factory=time.time)
    stats: FeedStats = field(default_factory=FeedStats)


def build_registry(config: FeedgenConfig) -> Registry:
    """The built-ins, then the configured plugins, then the entry points."""
    registry = Registry()
    register_builtins(registry)
    for spec in config.plugins:
        registry.load(spec)
    if config.entry_points:
        registry.load_entry_points()
    return registry


def build_feeds(config: FeedgenConfig, registry: Registry) -> dict[str, Feed]:
    """The feeds of the feeds file, or one per option-less algorithm; by URI."""
    path = config.feeds_path
    if path is None:
        return check_unique(default_feeds(registry, config.publisher))
    publisher, specs = load_feeds_file(path)
    feeds = [
        Feed.build(
            registry.get(spec.algorithm),
            publisher=spec.publisher or publisher or config.publisher,
            rkey=spec.rkey,
            options=spec.options,
            anonymous=spec.anonymous,
            display_name=spec.display_name,
            description=spec.description,
        )
        for spec in specs
    ]
    if not feeds:
        raise FeedConfigError(f"{path} configures no feeds")
    return check_unique(feeds)


def did_document(config: FeedgenConfig) -> dict[str, Any]:
    """The did:web document of the service."""
    return {
        "@context": ["https://www.w3.org/ns/did/v1"],
        "id": config.did,
        "service": [
            {"id": f"#{SERVICE_ID}", "type": SERVICE_TYPE, "serviceEndpoint": config.url}
        ],
    }


def _languages(header: str | None) -> tuple[str, ...]:
    """Accept-Language codes, most preferred first (``*`` and q=0 dropped)."""
    if not header:
        return ()
    ranked: list[tuple[float, int, str]] = []
    for position, part in enumerate(header.split(",")[: 4 * MAX_LANGUAGES]):
        code, _, params = part.strip().partition(";")
        code = code.strip().lower()
        if not code or code == "*" or len(code) > 64:
            continue
        quality = 1.0
        params = params.strip()
        if params.startswith("q="):
            try:
                quality = float(params[2:])
            except ValueError:
                continue
        if quality > 0:
            ranked.append((-quality, position, code))
    return tuple(dict.fromkeys(code for _, _, code in sorted(ranked)))[:MAX_LANGUAGES]


def _context(ctx: XrpcContext) -> FeedgenContext:
    return ctx.request.app.state.feedgen  # type: ignore[no-any-return]


async def get_feed_skeleton(ctx: XrpcContext) -> Output:
    fg = _context(ctx)
    uri: str = ctx.params["feed"]
    feed = fg.feeds.get(uri)
    if feed is None:
        raise UnknownFeed(f"this feed generator does not serve {uri}")
    fg.stats.request(uri)
    requester = ctx.auth.did
    if requester is None and not feed.anonymous:
        refusal = AuthRequired(f"feed {feed.rkey} needs a signed-in requester (a service token)")
        fg.stats.failed(uri, refusal)
        raise refusal
    assert fg.runner is not None
    request = FeedRequest(
        feed=uri,
        requester=requester,
        limit=ctx.params.get("limit", 50),
        cursor=ctx.params.get("cursor"),
        options=feed.options,
        languages=_languages(ctx.request.headers.get("accept-language")),
    )
    try:
        body, language = await fg.runner.run(feed, request)
    except Exception as exc:
        fg.stats.failed(uri, exc)
        raise
    if language:
        ctx.response_headers["Content-Language"] = language
    return Output(body, "application/json")


async def describe_feed_generator(ctx: XrpcContext) -> dict[str, Any]:
    fg = _context(ctx)
    out: dict[str, Any] = {
        "did": fg.config.did,
        "feeds": [{"uri": uri} for uri in fg.feeds],
    }
    links = {
        k: v
        for k, v in (
            ("privacyPolicy", fg.config.privacy_policy_url),
            ("termsOfService", fg.config.terms_of_service_url),
        )
        if v
    }
    if links:
        out["links"] = links
    return out


def create_app(
    config: FeedgenConfig,
    *,
    catalog: Catalog | None = None,
    registry: Registry | None = None,
    feeds: Sequence[Feed] | None = None,
    store: IndexStore | None = None,
    resolve_key: KeyResolver | None = None,
) -> Starlette:
    """A feed generator app for ``config``.

    ``registry`` / ``feeds`` replace the configured algorithms and feeds;
    ``store`` an index the caller owns (it is not closed on shutdown);
    ``resolve_key`` the requester-key lookup (default: DID resolution with
    caching). Configuration mistakes raise ``FeedConfigError``/``ValueError`` here.
    """
    registry = registry if registry is not None else build_registry(config)
    served = check_unique(feeds) if feeds is not None else build_feeds(config, registry)
    fg = FeedgenContext(config=config, feeds=dict(served), registry=registry)

    async def keys(did: str, *, force_refresh: bool) -> PublicKey:
        if resolve_key is not None:
            return await resolve_key(did, force_refresh=force_refresh)
        assert fg.identity is not None
        return await fg.identity.resolve_key(did, force_refresh=force_refresh)

    auth = optional(
        RememberingServiceAuth(
            (config.did, f"{config.did}#{SERVICE_ID}"),
            keys,
            replay_cache=config.replay_protection,
        )
    )

    async def health() -> Mapping[str, Any]:
        extra: dict[str, Any] = {"did": config.did, "feeds": len(fg.feeds)}
        if fg.indexer is not None:
            extra["indexer"] = fg.indexer.status()
        if registry.failures:
            extra["pluginFailures"] = [f"{where}: {why}" for where, why in registry.failures]
        return extra

    router = XrpcRouter(
        catalog or Catalog.load(),
        version=config.version,
        debug=config.debug,
        health=health,
        global_rate_limit=None,
    )
    if config.serves:  # an indexer-only process serves no feeds
        router.query(GET_FEED_SKELETON, auth=auth, global_rate_limit=False)(get_feed_skeleton)
    router.query(DESCRIBE_FEED_GENERATOR, global_rate_limit=False)(describe_feed_generator)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        owned = store is None
        fulltext = config.fulltext
        if fulltext is None:
            fulltext = any(feed.algorithm.name == "keyword" for feed in fg.feeds.values())
        fg.store = store if store is not None else open_store(
            config.database_location, fulltext=fulltext
        )
        fg.runner = Runner(
            fg.store.reader(),
            timeout=config.algorithm_timeout_s,
            threads=config.algorithm_threads,
            cache_ttl=config.page_cache_s,
        )
        resolver = IdentityResolver.create(plc_url=config.plc_url, allow_local=config.allow_local)
        fg.identity = IdentityDirectory(resolver)
        tasks: list[asyncio.Task[None]] = []
        reader: Any = fg.runner.index  # the SQLite reader reports following-feed readers
        if hasattr(reader, "on_reader"):
            fg.readers = ReaderKeeper(fg.store)
            reader.on_reader = fg.readers.note
            tasks.append(asyncio.create_task(fg.readers.run(), name="feedgen-readers"))
        if config.relay_url and config.indexes:
            fg.indexer = Indexer(
                fg.store,
                config.relay_url,
                batch_size=config.batch_size,
                batch_delay=config.batch_delay_s,
                start_cursor=config.start_cursor,
                verify=config.verify_firehose,
                plc_url=config.plc_url,
                allow_local=config.allow_local,
            )
            tasks.append(asyncio.create_task(fg.indexer.run(), name="feedgen-indexer"))
        if config.indexes and any(feed.options.get("host") for feed in fg.feeds.values()):
            fg.hosts = HostTracker(fg.store, fg.identity)
            tasks.append(asyncio.create_task(fg.hosts.run(), name="feedgen-hosts"))
        if config.indexes and config.retention_days > 0:
            tasks.append(asyncio.create_task(_prune_forever(fg), name="feedgen-retention"))
        app.state.feedgen = fg
        try:
            yield
        finally:
            for task in reversed(tasks):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            fg.runner.close()
            if fg.readers is not None:
                reader.on_reader = None
            await fg.identity.aclose()
            await resolver.aclose()
            if owned:
                fg.store.close()

    async def well_known_did(request: Request) -> Response:
        if config.did != config.web_did:
            return JSONResponse({"error": "NotFound", "message": "not a did:web service"}, 404)
        return JSONResponse(did_document(config))

    from feedgen.catalog import catalog_routes

    routes: list[Any] = [
        Route("/.well-known/did.json", well_known_did),
        *catalog_routes(),
        *router.routes,
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.feedgen = fg
    return app


async def _prune_forever(fg: FeedgenContext) -> None:
    assert fg.store is not None
    while True:
        cutoff = int((time.time() - fg.config.retention_days * 86400) * 1000)
        try:
            removed = await asyncio.to_thread(fg.store.prune, cutoff)
            if removed:
                log.info("retention sweep removed %d rows older than %s days",
                         removed, fg.config.retention_days)
        except Exception:  # noqa: BLE001 - the sweep retries next time
            log.exception("retention sweep failed")
        await asyncio.sleep(PRUNE_INTERVAL_S)
