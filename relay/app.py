"""The relay as a Starlette app: ``create_app(config)``, and how to serve it.

Routes: the ``com.atproto.sync.*`` methods (:mod:`relay.api`) and
``subscribeRepos`` (:mod:`relay.fanout`) under ``/xrpc/``, ``/xrpc/_health``,
the operator's ``/admin/`` API (:mod:`relay.admin`), the dashboard at
``/`` (:mod:`relay.web`), and, when :mod:`roost.jetstream` is installed, a Jetstream
endpoint at ``/subscribe`` fed by the same sequencer and log.

Serve it with :data:`SERVER_OPTIONS` (``roost relay serve`` does): they
select :class:`~relay.fanout.FanoutWebSocketProtocol` for bulk writes to
consumers and replace uvicorn's ``Server`` header with one naming the relay
as an atproto relay, which other relays read to avoid subscribing to each
other in a loop.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Final

from starlette.applications import Starlette

from roost import __version__
from roost.lexicon import Catalog
from roost.xrpc import XrpcRouter

from relay import admin, api, web
from relay.config import RelayConfig
from relay.core import Relay
from relay.fanout import FanoutWebSocketProtocol
from relay.frontend import create_relay

__all__ = ["SERVER_HEADER", "SERVER_OPTIONS", "create_app"]

log = logging.getLogger(__name__)

SERVER_HEADER: Final = f"roost-relay/{__version__} (atproto-relay)"
#: Options for :func:`roost.server.run` / :class:`roost.server.Service`.
SERVER_OPTIONS: Final[dict[str, Any]] = {
    "ws": FanoutWebSocketProtocol,
    "server_header": False,
    "headers": [("server", SERVER_HEADER)],
}


def create_app(config: RelayConfig, *, catalog: Catalog | None = None) -> Starlette:
    """A relay app for ``config`` (its state lives in ``config.data_dir``)."""
    relay = create_relay(config)

    async def health() -> dict[str, Any]:
        return relay.health()

    router = XrpcRouter(
        catalog or Catalog.load(), version=config.version, debug=config.debug, health=health
    )
    api.register(router)
    relay.fanout.register(router)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        app.state.relay = relay
        await relay.start()
        try:
            yield
        finally:
            await relay.stop()

    routes: list[Any] = [*web.routes(relay), *admin.routes(), *router.routes]
    jetstream = _jetstream_route(relay)
    if jetstream is not None:
        routes.insert(1, jetstream)
    return Starlette(routes=routes, lifespan=lifespan)


def _jetstream_route(relay: Relay) -> Any:
    """The Jetstream endpoint at ``/subscribe``, if this roost has one."""
    try:
        from roost.jetstream import jetstream_route
    except ImportError:
        return None
    return jetstream_route(relay.sequencer, relay.log, path="/subscribe")
