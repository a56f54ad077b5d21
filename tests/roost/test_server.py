"""roost.server: the ready line, signals, several apps in one loop, startup failures."""

from __future__ import annotations

import asyncio
import io
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from roost.server import ServerStartupError, Service, serve_all

ROOT = Path(__file__).resolve().parents[2]
READY = re.compile(r"^(\w+) listening on (http://127\.0\.0\.1:(\d+))$")

SCRIPT = textwrap.dedent(
    """
    import sys
    from contextlib import asynccontextmanager
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route
    from roost.server import Service, run, serve_all
    import asyncio

    def make(text):
        async def hello(request):
            return PlainTextResponse(text)

        @asynccontextmanager
        async def lifespan(app):
            print(f"{text} up", file=sys.stderr, flush=True)
            yield
            print(f"{text} down", file=sys.stderr, flush=True)

        return Starlette(routes=[Route("/", hello)], lifespan=lifespan)

    if sys.argv[1] == "one":
        run(make("alpha"), "127.0.0.1", 0, name="alpha")
    else:
        asyncio.run(serve_all([
            Service(make("alpha"), name="alpha"),
            Service(make("beta"), name="beta"),
        ]))
    print("returned", file=sys.stderr, flush=True)
    """
)


def start(mode: str) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen(
        [sys.executable, "-c", SCRIPT, mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )


def ready_lines(proc: subprocess.Popen[str], count: int) -> dict[str, str]:
    urls = {}
    assert proc.stdout is not None
    for _ in range(count):
        line = proc.stdout.readline()
        match = READY.match(line.rstrip("\n"))
        assert match, f"unexpected line {line!r}"
        assert int(match.group(3)) != 0
        urls[match.group(1)] = match.group(2)
    return urls


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_run_prints_one_line_and_stops_cleanly(sig: signal.Signals) -> None:
    proc = start("one")
    try:
        urls = ready_lines(proc, 1)
        assert httpx.get(urls["alpha"] + "/").text == "alpha"
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert out == ""  # exactly one line in all
    assert "alpha up" in err and "alpha down" in err and "returned" in err
    assert "Traceback" not in err


def test_serve_all_runs_several_apps() -> None:
    proc = start("many")
    try:
        urls = ready_lines(proc, 2)
        assert set(urls) == {"alpha", "beta"}
        assert urls["alpha"] != urls["beta"]
        assert httpx.get(urls["alpha"] + "/").text == "alpha"
        assert httpx.get(urls["beta"] + "/").text == "beta"
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert out == ""
    assert "alpha down" in err and "beta down" in err and "returned" in err


def app(text: str) -> Starlette:
    async def hello(request: object) -> PlainTextResponse:
        return PlainTextResponse(text)

    return Starlette(routes=[Route("/", hello)])


async def test_in_process_with_stop_event() -> None:
    out = io.StringIO()
    stop = asyncio.Event()
    urls: dict[str, str] = {}
    both = asyncio.Event()

    def on_ready(name: str, url: str) -> None:
        urls[name] = url
        if len(urls) == 2:
            both.set()

    task = asyncio.ensure_future(
        serve_all(
            [Service(app("one"), name="one"), Service(app("two"), name="two")],
            handle_signals=False,
            stdout=out,
            on_ready=on_ready,
            stop=stop,
        )
    )
    await asyncio.wait_for(both.wait(), 10)
    async with httpx.AsyncClient() as client:
        assert (await client.get(urls["one"] + "/")).text == "one"
        assert (await client.get(urls["two"] + "/")).text == "two"
    stop.set()
    await asyncio.wait_for(task, 10)
    lines = out.getvalue().splitlines()
    assert sorted(lines) == sorted(f"{n} listening on {u}" for n, u in urls.items())


async def test_port_in_use_is_a_startup_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = io.StringIO()
        with pytest.raises(ServerStartupError, match="busy"):
            await asyncio.wait_for(
                serve_all(
                    [Service(app("ok"), name="fine"), Service(app("x"), port=port, name="busy")],
                    handle_signals=False,
                    stdout=out,
                ),
                20,
            )


async def test_nothing_to_serve() -> None:
    with pytest.raises(ValueError):
        await serve_all([])
