"""The feed catalogue: ``GET /``, what this host serves, for people.

Lists every feed (URI, algorithm, whether it needs a signed-in reader), the
indexer's state and plugins that failed to load. Read-only; no forms.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from roost import web

__all__ = ["catalog_routes"]

_ROW = """<tr><td><strong>$name</strong><br><code>$uri</code></td><td>$algorithm</td>
<td>$who</td><td>$description</td></tr>"""

_BODY = """<h1>Feed generator</h1>
<p>Service <code>$did</code> at <code>$url</code>. Add a feed to an app by its
<code>at://</code> URI once it is published (<code>roost feedgen publish</code>).</p>
<table>
<thead><tr><th>feed</th><th>algorithm</th><th>readers</th><th>about</th></tr></thead>
<tbody>
$rows
</tbody>
</table>
<h2>Indexer</h2>
<p>$indexer</p>
$failures"""


async def catalog(request: Request) -> Response:
    fg: Any = request.app.state.feedgen
    rows = web.join(
        web.render(
            _ROW,
            name=feed.display_name,
            uri=feed.uri,
            algorithm=feed.algorithm.name,
            who="anyone" if feed.anonymous else "signed-in",
            description=feed.description,
        )
        for feed in fg.feeds.values()
    )
    if fg.indexer is None:
        indexer = "not indexing (no firehose configured)"
    else:
        status = fg.indexer.status()
        indexer = (
            f"{status['url']}: {'connected' if status['connected'] else 'not connected'}, "
            f"cursor {status['cursor']}, {status['events']} events, "
            f"{status['eventsPerSecond']} events/s"
            + (f", error: {status['error']}" if status["error"] else "")
        )
    failures = web.Markup("")
    if fg.registry.failures:
        failures = web.render(
            "<h2>Plugins not loaded</h2><ul>$items</ul>",
            items=web.join(
                web.render("<li><code>$where</code>: $why</li>", where=where, why=why)
                for where, why in fg.registry.failures
            ),
        )
    body = web.render(
        _BODY,
        did=fg.config.did,
        url=fg.config.url,
        rows=rows,
        indexer=indexer,
        failures=failures,
    )
    return web.page("Feeds", body, site="roost feed generator")


def catalog_routes() -> list[Route]:
    return [Route("/", catalog), *web.static_routes()]
