"""The loopback test server helper itself."""

from __future__ import annotations

import httpx
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

from tests.servers import serve


def test_serve_starts_and_stops() -> None:
    events: list[str] = []

    async def hello(request):  # type: ignore[no-untyped-def]
        return JSONResponse({"ok": True})

    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app):  # type: ignore[no-untyped-def]
        events.append("start")
        yield
        events.append("stop")

    app = Starlette(routes=[Route("/", hello)], lifespan=lifespan)
    with serve(app) as url:
        assert url.startswith("http://127.0.0.1:")
        assert httpx.get(url + "/").json() == {"ok": True}
    assert events == ["start", "stop"]
