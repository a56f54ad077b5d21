"""The feed catalogue: ``GET /``, what this host serves, for people.

Every feed with its description, its request counters (requests/s over the
last few seconds, totals, the last error and when it happened; see
:mod:`feedgen.stats`) and a live preview of its first page: the feed's
algorithm is called in-process with no requester, and the posts it names
are hydrated, from the local index when the post is indexed (it holds the
text) and from the author's PDS otherwise (:mod:`feedgen.hydrate`).
Personalised feeds, which have nothing to show without a reader, say so
instead of a preview. Preview calls are not counted as requests.

Routes:

- ``GET /``: the page;
- ``GET /catalog/feeds``: the feeds part of the page alone, which the
  page's small script fetches every few seconds to stay current;
- ``GET /catalog.json``: the same facts for machines;
- ``GET /static/feedgen-catalog.js``: that script.

Read-only; no forms. Previews are kept :data:`PREVIEW_TTL_S` seconds, so
many open pages cost the algorithms one call per feed per period.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import httpx
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from roost import web
from roost.errors import RoostError
from roost.netguard import GuardedTransport, OutboundPolicy

from feedgen.hydrate import HydratedPost, Hydrator, PostCache
from feedgen.plugins import Feed, FeedRequest
from feedgen.stats import LastError

__all__ = ["PREVIEW_POSTS", "PREVIEW_TTL_S", "Preview", "catalog_routes"]

#: Posts shown in each feed's preview.
PREVIEW_POSTS: Final = 5
#: How long a preview is reused, seconds.
PREVIEW_TTL_S: Final = 2.0
#: How often the page's script refreshes the feeds, seconds.
REFRESH_S: Final = 5
#: Longest wait for one remote post (identity or record) while rendering.
PREVIEW_FETCH_TIMEOUT_S: Final = 3.0
#: Posts fetched from PDSes at once while rendering.
PREVIEW_CONCURRENCY: Final = 8
SCRIPT_PATH: Final = "/static/feedgen-catalog.js"
FEEDS_PATH: Final = "/catalog/feeds"


@dataclass(frozen=True, slots=True)
class Preview:
    """A feed's first page as the catalogue shows it.

    ``state``: ``ok`` (``posts``, possibly none), ``personal`` (the feed's
    answer depends on its reader, who is signed in or sends their languages;
    ``message`` says what it wants) or ``error`` (the algorithm failed).
    """

    state: Literal["ok", "personal", "error"]
    posts: tuple[HydratedPost, ...] = ()
    message: str = ""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"state": self.state, "posts": [p.to_json() for p in self.posts]}
        if self.message:
            out["message"] = self.message
        return out


@dataclass(slots=True)
class _CatalogState:
    """What the catalogue keeps between requests (``app.state.catalog``)."""

    posts: PostCache = field(default_factory=PostCache)
    previews: dict[str, tuple[float, Preview]] = field(default_factory=dict)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


def _state(request: Request) -> _CatalogState:
    state: _CatalogState | None = getattr(request.app.state, "catalog", None)
    if state is None:
        state = request.app.state.catalog = _CatalogState()
    return state


async def _preview(fg: Any, feed: Feed, hydrator: Hydrator) -> Preview:
    if fg.runner is None:
        return Preview("error", message="the service is starting")
    if fg.runner.stuck(feed):
        return Preview("error", message="earlier calls of its algorithm are still running past "
                       "their time limit")
    request = FeedRequest(feed=feed.uri, requester=None, limit=PREVIEW_POSTS, options=feed.options)
    try:
        body, _ = await fg.runner.run(feed, request)
    except RoostError as exc:
        if exc.status < 500:  # it wants a reader: a signed-in one, or their languages
            return Preview("personal", message=exc.message)
        return Preview("error", message=f"{exc.error}: {exc.message}")
    uris = [item["post"] for item in json.loads(body)["feed"]]
    return Preview("ok", tuple(await hydrator.hydrate(uris)))


async def previews(request: Request) -> dict[str, Preview]:
    """Each served feed's preview, by feed URI (reused for PREVIEW_TTL_S seconds)."""
    fg: Any = request.app.state.feedgen
    state = _state(request)
    async with state.lock:  # one rendering at a time; the others reuse its result
        now = time.monotonic()
        due = [feed for uri, feed in fg.feeds.items()
               if state.previews.get(uri, (0.0, None))[0] <= now]
        if due and fg.identity is not None:
            reader = fg.runner.index if fg.runner is not None else None
            transport = GuardedTransport(OutboundPolicy(allow_local=fg.config.allow_local))
            async with httpx.AsyncClient(transport=transport, follow_redirects=False,
                                         timeout=PREVIEW_FETCH_TIMEOUT_S) as http:
                hydrator = Hydrator(
                    fg.identity, http, local=reader.post if reader is not None else None,
                    cache=state.posts, concurrency=PREVIEW_CONCURRENCY,
                    timeout=PREVIEW_FETCH_TIMEOUT_S,
                )
                fresh = await asyncio.gather(*(_preview(fg, feed, hydrator) for feed in due))
            until = time.monotonic() + PREVIEW_TTL_S
            for feed, preview in zip(due, fresh):
                state.previews[feed.uri] = (until, preview)
        return {uri: state.previews[uri][1] if uri in state.previews
                else Preview("error", message="the service is starting")
                for uri in fg.feeds}


# -- HTML ---------------------------------------------------------------------------------------

_FEED = """<section class="card feed" id="feed-$rkey" data-feed="$uri">
<div class="row-head"><h2 class="name">$name</h2>
<span class="badge">$algorithm</span> <span class="badge">$who</span></div>
<p>$description</p>
<p class="small muted"><code>$uri</code></p>
<div class="stats">
<div class="stat"><b class="rate">$rate</b><span>requests/s</span></div>
<div class="stat"><b class="requests">$requests</b><span>requests</span></div>
<div class="stat"><b class="failures">$failures</b><span>failures</span></div>
</div>
$errors
<h3>First page</h3>
$preview
</section>"""

_POST = """<li class="post"><div class="row-head"><span class="name">$author</span>$mark
<time class="small muted" datetime="$iso">$when</time></div>
<p class="pre text">$text</p></li>"""

_GONE = """<li class="post $state"><div class="row-head"><span class="badge warn">$state</span>
<span class="name">$author</span></div>
<p class="small muted">$reason<br><code>$uri</code></p></li>"""

_BODY = """<h1>Feeds</h1>
<p class="lead">Service <code>$did</code> at <code>$url</code> serves $count. Add a feed to an app
by its <code>at://</code> URI once it is published (<code>roost feedgen publish</code>);
read one from a terminal with <code>roost feed show</code>.</p>
<div id="feeds" data-refresh="$refresh" data-interval="$interval" aria-live="polite">
$feeds
</div>
<section class="card">
<h2>Indexer</h2>
<p>$indexer</p>
</section>
$failures
<script src="$script" defer></script>"""


def _when(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(at))


def _error_line(label: str, css: str, error: LastError) -> web.Markup:
    return web.render(
        '<p class="msg $css">$label $when: <strong>$name</strong> (HTTP $status) $message</p>',
        css=css, label=label, when=_when(error.at), name=error.error, status=error.status,
        message=error.message,
    )


def _render_post(post: HydratedPost) -> web.Markup:
    if post.state == "ok":
        mark = web.Markup("")
        if post.handle is None and post.claimed_handle:
            mark = web.Markup(' <span class="badge" title="the handle does not point back at this '
                              'account">unverified</span>')
        name = f"@{post.handle or post.claimed_handle}" if post.claimed_handle else post.author
        return web.render(_POST, author=name, mark=mark, iso=post.created_at or "",
                          when=post.time_label, text=post.text)
    return web.render(_GONE, state=post.state, author=post.author_label, reason=post.reason,
                      uri=post.uri)


def _render_preview(preview: Preview) -> web.Markup:
    if preview.state == "personal":
        return web.render(
            '<p class="muted">Personalised: this feed depends on who reads it, so it has no '
            "anonymous preview ($why).</p>", why=preview.message)
    if preview.state == "error":
        return web.render('<p class="msg bad">The preview failed: $why</p>', why=preview.message)
    if not preview.posts:
        return web.Markup('<p class="muted">No posts yet.</p>')
    return web.render('<ol class="rows posts">$items</ol>',
                      items=web.join(_render_post(post) for post in preview.posts))


def _render_feeds(fg: Any, shown: dict[str, Preview]) -> web.Markup:
    cards = []
    for uri, feed in fg.feeds.items():
        counters = fg.stats.counters(uri)
        errors = web.Markup("")
        if counters.last_error is not None:
            errors = _error_line("Last error", "bad", counters.last_error)
        elif counters.last_rejection is not None:
            errors = _error_line("No errors; last refused request", "warn",
                                 counters.last_rejection)
        cards.append(web.render(
            _FEED, rkey=feed.rkey, uri=uri, name=feed.display_name,
            algorithm=feed.algorithm.name, who="anyone" if feed.anonymous else "signed-in readers",
            description=feed.description or "", rate=f"{fg.stats.rate(uri):.1f}",
            requests=counters.requests, failures=counters.failures, errors=errors,
            preview=_render_preview(shown[uri]),
        ))
    return web.join(cards)


def _indexer_text(fg: Any) -> str:
    if fg.indexer is None:
        return "not indexing (no firehose configured)"
    status = fg.indexer.status()
    return (
        f"{status['url']}: {'connected' if status['connected'] else 'not connected'}, "
        f"cursor {status['cursor']}, {status['events']} events, "
        f"{status['eventsPerSecond']} events/s"
        + (f", error: {status['error']}" if status["error"] else "")
    )


async def catalog(request: Request) -> Response:
    fg: Any = request.app.state.feedgen
    failures = web.Markup("")
    if fg.registry.failures:
        failures = web.render(
            '<section class="card"><h2>Plugins not loaded</h2><ul>$items</ul></section>',
            items=web.join(
                web.render("<li><code>$where</code>: $why</li>", where=where, why=why)
                for where, why in fg.registry.failures
            ),
        )
    count = len(fg.feeds)
    body = web.render(
        _BODY,
        did=fg.config.did,
        url=fg.config.url,
        count=f"{count} feed" + ("" if count == 1 else "s"),
        refresh=FEEDS_PATH,
        interval=REFRESH_S,
        feeds=_render_feeds(fg, await previews(request)),
        indexer=_indexer_text(fg),
        failures=failures,
        script=SCRIPT_PATH,
    )
    return web.page("Feeds", body, site="roost feed generator")


async def feeds_fragment(request: Request) -> Response:
    fg: Any = request.app.state.feedgen
    html = _render_feeds(fg, await previews(request))
    return Response(html, media_type="text/html; charset=utf-8",
                    headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"})


async def catalog_json(request: Request) -> Response:
    fg: Any = request.app.state.feedgen
    shown = await previews(request)
    feeds = [
        {
            "uri": uri,
            "displayName": feed.display_name,
            "description": feed.description,
            "algorithm": feed.algorithm.name,
            "anonymous": feed.anonymous,
            "stats": fg.stats.snapshot(uri),
            "preview": shown[uri].to_json(),
        }
        for uri, feed in fg.feeds.items()
    ]
    return JSONResponse({"did": fg.config.did, "feeds": feeds},
                        headers={"Cache-Control": "no-store"})


def catalog_routes() -> list[Route]:
    return [
        Route("/", catalog),
        Route(FEEDS_PATH, feeds_fragment),
        Route("/catalog.json", catalog_json),
        *web.static_routes(
            (SCRIPT_PATH, "feedgen", "catalog.js", "text/javascript; charset=utf-8")
        ),
    ]
