"""Run real ASGI apps on loopback ports for tests.

``serve(app)`` starts uvicorn on 127.0.0.1 with an OS-chosen port in a
background thread (its own event loop), waits until it accepts connections,
yields the base URL and shuts the server down afterwards, running the app's
lifespan on both ends.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn

__all__ = ["ServerThread", "free_port", "serve"]


def free_port() -> int:
    """A port that was free a moment ago on 127.0.0.1 (for apps that must know their URL)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerThread:
    """One uvicorn server on 127.0.0.1, in a thread."""

    def __init__(self, app: Any, *, ws: str = "websockets-sansio", port: int = 0) -> None:
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,
            log_level="warning",
            lifespan="on",
            ws=ws,
            access_log=False,
        )
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._run, name="test-server", daemon=True)
        self._error: BaseException | None = None
        self.url = ""

    def _run(self) -> None:
        try:
            asyncio.run(self.server.serve())
        except BaseException as exc:  # noqa: BLE001 - reported to the test thread
            self._error = exc

    def start(self, timeout: float = 15.0) -> str:
        self._thread.start()
        deadline = threading.Event()
        waited = 0.0
        while not self.server.started:
            if self._error is not None or not self._thread.is_alive():
                raise RuntimeError(f"test server failed to start: {self._error!r}")
            deadline.wait(0.01)
            waited += 0.01
            if waited > timeout:
                raise RuntimeError("test server did not start in time")
        sock = self.server.servers[0].sockets[0]
        host, port = sock.getsockname()[:2]
        self.url = f"http://{host}:{port}"
        return self.url

    def stop(self, timeout: float = 15.0) -> None:
        self.server.should_exit = True
        self._thread.join(timeout)
        if self._thread.is_alive():
            self.server.force_exit = True
            self._thread.join(timeout)


@contextmanager
def serve(app: Any) -> Iterator[str]:
    """Serve ``app`` on a free loopback port; yields its base URL."""
    thread = ServerThread(app)
    url = thread.start()
    try:
        yield url
    finally:
        thread.stop()
