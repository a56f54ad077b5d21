"""The PDS's web pages: the public page at ``/`` and the admin console at ``/admin``.

Server-rendered HTML forms on the shared layout of :mod:`roost.web`; no build
step and no assets from elsewhere. :func:`routes` gives the Starlette routes
for one app.
"""

from __future__ import annotations

from starlette.routing import BaseRoute

from pds.config import PdsConfig
from pds.web import console, public
from pds.web.site import WebState
from roost.web import static_routes

__all__ = ["routes"]


def routes(config: PdsConfig) -> list[BaseRoute]:
    """The pages of a PDS with ``config`` (its secrets already loaded)."""
    state = WebState.create(config)
    return [*static_routes(), *public.routes(state), *console.routes(state)]
