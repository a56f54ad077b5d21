"""Run ASGI apps with uvicorn: one per process, or several in one event loop.

Every roost service starts through here::

    run(app, "127.0.0.1", 2583, name="pds")          # blocks until SIGINT/SIGTERM

    await serve_all([                                 # `roost up`: one process, one loop
        Service(plc_app, port=2582, name="plc"),
        Service(pds_app, port=2583, name="pds"),
    ])

Once a server accepts connections it prints exactly one line to stdout,
``<name> listening on http://HOST:PORT`` (port 0 is replaced by the port the
OS chose), and flushes it: scripts and tests wait for that line. SIGINT or
SIGTERM asks every server to finish (stop accepting, let open requests end
within ``graceful_timeout`` seconds, run the apps' lifespan shutdown) and
``run`` returns normally; a second signal forces the exit. A server that
cannot start (port taken, lifespan startup failure) stops the others and
raises :class:`ServerStartupError`.

uvicorn runs with the ``websockets-sansio`` WebSocket implementation and
without its own logging configuration (only the CLI configures logging);
:func:`run` uses uvloop's event loop when it is installed.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

import uvicorn

__all__ = ["ServerStartupError", "Service", "run", "run_command", "serve", "serve_all"]

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class ServerStartupError(RuntimeError):
    """A server could not start listening or its lifespan startup failed."""


@dataclass(frozen=True, slots=True)
class Service:
    """One app to serve: where, and the name printed in its ready line."""

    app: Any
    host: str = "127.0.0.1"
    port: int = 0
    name: str = "roost"
    options: dict[str, Any] = field(default_factory=dict)


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class _Server(uvicorn.Server):
    """A uvicorn server that leaves signals to us and announces readiness."""

    def __init__(
        self, config: uvicorn.Config, name: str, on_ready: Callable[[_Server], None]
    ) -> None:
        super().__init__(config)
        self.name = name
        self.url = ""
        self._on_ready = on_ready

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield  # serve_all owns the signal handlers

    async def startup(self, sockets: Any = None) -> None:
        await super().startup(sockets)
        if self.started and not self.should_exit:
            sock = self.servers[0].sockets[0]
            host, port = sock.getsockname()[:2]
            self.url = _url(self.config.host if self.config.host not in (None, "") else host, port)
            self._on_ready(self)


def _config(service: Service, log_level: str | None, graceful_timeout: float) -> uvicorn.Config:
    options: dict[str, Any] = {
        "ws": "websockets-sansio",
        "log_config": None,
        "log_level": log_level,
        "access_log": False,
        "timeout_graceful_shutdown": graceful_timeout,
        "lifespan": "auto",
    }
    options.update(service.options)
    return uvicorn.Config(service.app, host=service.host, port=service.port, **options)


async def serve_all(
    services: Sequence[Service],
    *,
    log_level: str | None = None,
    graceful_timeout: float = 10.0,
    handle_signals: bool = True,
    stdout: TextIO | None = None,
    on_ready: Callable[[str, str], None] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve every service in this event loop until a signal (or ``stop`` is set).

    ``on_ready(name, url)`` is called for each server once it listens, after
    its line is printed. ``handle_signals=False`` leaves SIGINT/SIGTERM alone
    (for embedding); set ``stop`` to shut down instead.
    """
    if not services:
        raise ValueError("nothing to serve")
    out = stdout if stdout is not None else sys.stdout

    def ready(server: _Server) -> None:
        print(f"{server.name} listening on {server.url}", file=out, flush=True)
        if on_ready is not None:
            on_ready(server.name, server.url)

    servers = [_Server(_config(s, log_level, graceful_timeout), s.name, ready) for s in services]

    def request_exit(*_: object) -> None:
        for server in servers:
            if server.should_exit:
                server.force_exit = True
            server.should_exit = True

    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    if handle_signals:
        for sig in _SIGNALS:
            try:
                loop.add_signal_handler(sig, request_exit)
                installed.append(sig)
            except (NotImplementedError, RuntimeError, ValueError):  # pragma: no cover
                pass

    failures: list[str] = []

    async def run_one(server: _Server) -> None:
        try:
            await server.serve()
        except SystemExit:
            # uvicorn exits the process when it cannot bind or the lifespan fails.
            failures.append(server.name)
            for other in servers:
                other.should_exit = True

    watcher: asyncio.Task[None] | None = None
    if stop is not None:

        async def watch() -> None:
            await stop.wait()
            request_exit()

        watcher = asyncio.ensure_future(watch())
    try:
        await asyncio.gather(*(run_one(s) for s in servers))
    finally:
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        for sig in installed:
            loop.remove_signal_handler(sig)
    if failures:
        raise ServerStartupError(f"could not start: {', '.join(failures)}")


async def serve(
    app: Any,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    name: str,
    log_level: str | None = None,
    **options: Any,
) -> None:
    """Serve one app in the running event loop until SIGINT/SIGTERM."""
    await serve_all([Service(app, host, port, name, options)], log_level=log_level)


def run(
    app: Any,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    name: str,
    log_level: str | None = None,
    **options: Any,
) -> None:
    """Serve one app in a new event loop; returns after a clean shutdown.

    The loop is uvloop's when it is installed (libuv: cheaper socket I/O and
    scheduling than the stdlib selector loop), else asyncio's own.
    """
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(serve(app, host, port, name=name, log_level=log_level, **options))


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop  # noqa: PLC0415 (optional)
    except ImportError:
        return None
    return uvloop.new_event_loop  # type: ignore[no-any-return]


def run_command(
    command: str, name: str, build: Callable[[], tuple[Any, str, int]], **options: Any
) -> int:
    """A ``roost ... serve`` command: build ``(app, host, port)``, serve it; its exit status.

    A bad flag or environment value, or a data folder that cannot be made
    (``ValueError``/``OSError`` from ``build``), is exit status 2; a server
    that cannot start listening is 1. Both print ``command: reason``.
    """
    try:
        app, host, port = build()
    except (ValueError, OSError) as exc:
        print(f"{command}: {exc}", file=sys.stderr)
        return 2
    try:
        run(app, host, port, name=name, **options)
    except ServerStartupError as exc:
        print(f"{command}: {exc}", file=sys.stderr)
        return 1
    return 0
