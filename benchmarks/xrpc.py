"""The XRPC layer vs a bare Starlette route, same server, same run.

One uvicorn server process (``roost.server.run``, the settings every roost
service uses) serves both

- ``GET /bare?name=bob&limit=7``: a plain Starlette route that reads the two
  query parameters by hand and answers ``JSONResponse``;
- ``GET /xrpc/io.roost.bench.echo?name=bob&limit=7``: the same answer through
  ``roost.xrpc``: NSID routing, parameters decoded and validated by the
  lexicon catalog (``roost.lexicon`` if importable), the global per-IP rate
  limit charged (set high enough never to refuse), CORS and rate-limit
  headers, JSON rendering.

A load generator in a separate process keeps N keep-alive HTTP/1.1
connections busy (a raw asyncio client: cheaper than the server, so the
server is what is measured) for a fixed time per round; rounds alternate
between the two routes. Prints requests/s, p50 and p99 latency per route
(median round) and the throughput ratio XRPC/bare. Target: >= 0.70.

    python benchmarks/xrpc.py [--seconds 4] [--rounds 3] [--connections 32]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

NSID = "io.roost.bench.echo"
QUERY = "name=bob&limit=7"
LEXICON: dict[str, Any] = {
    "lexicon": 1,
    "id": NSID,
    "defs": {
        "main": {
            "type": "query",
            "parameters": {
                "type": "params",
                "required": ["name"],
                "properties": {
                    "name": {"type": "string", "maxLength": 64},
                    "limit": {"type": "integer", "minimum": 1, "maximum": 100, "default": 50},
                },
            },
            "output": {
                "encoding": "application/json",
                "schema": {
                    "type": "object",
                    "required": ["name", "limit"],
                    "properties": {
                        "name": {"type": "string"},
                        "limit": {"type": "integer"},
                    },
                },
            },
        }
    },
}


# -- the server ----------------------------------------------------------------------------


def _catalog() -> tuple[Any, str]:
    try:
        from roost.lexicon import Catalog
    except ImportError:
        return _MiniCatalog(), "built-in minimal catalog (roost.lexicon not importable)"
    catalog = Catalog()
    catalog.add(LEXICON)
    return catalog, "roost.lexicon.Catalog"


class _MiniCatalog:
    """Stand-in with the same checks, used only if roost.lexicon is missing."""

    class _Def:
        nsid = NSID
        type = "query"
        parameters = LEXICON["defs"]["main"]["parameters"]
        input_encoding = None
        input_schema = None
        output_encoding = "application/json"
        output_schema = LEXICON["defs"]["main"]["output"]["schema"]

    def method(self, nsid: str) -> Any:
        return self._Def() if nsid == NSID else None

    def validate_params(self, nsid: str, params: Any) -> dict[str, Any]:
        from roost.errors import ValidationError

        name = params.get("name")
        if not isinstance(name, str) or len(name) > 64:
            raise ValidationError("bad name", "name")
        raw = params.get("limit", "50")
        if not isinstance(raw, str) or not raw.lstrip("-").isdigit():
            raise ValidationError("bad limit", "limit")
        limit = int(raw)
        if not 1 <= limit <= 100:
            raise ValidationError("limit out of range", "limit")
        return {"name": name, "limit": limit}

    def validate_input(self, nsid: str, body: Any) -> Any:
        return body

    def validate_output(self, nsid: str, body: Any) -> Any:
        return body

    def validate_message(self, nsid: str, message: Any) -> Any:
        return message


def build_app() -> tuple[Any, str]:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from roost.ratelimit import RateLimit
    from roost.xrpc import XrpcContext, XrpcRouter

    catalog, which = _catalog()
    router = XrpcRouter(
        catalog,
        version="bench",
        global_rate_limit=RateLimit("global-ip", 1_000_000_000, 300),
    )

    @router.query(NSID)
    async def echo(ctx: XrpcContext) -> dict[str, Any]:
        return {"name": ctx.params["name"], "limit": ctx.params["limit"]}

    async def bare(request: Request) -> JSONResponse:
        params = request.query_params
        return JSONResponse({"name": params["name"], "limit": int(params.get("limit", "50"))})

    app = Starlette(routes=[Route("/bare", bare), *router.routes])
    return app, which


def serve_main() -> None:
    from roost.server import run

    app, which = build_app()
    print(f"catalog: {which}", file=sys.stderr, flush=True)
    run(app, "127.0.0.1", 0, name="bench", log_level="warning")


# -- the load generator --------------------------------------------------------------------


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """Status and body of one HTTP/1.1 response with a Content-Length (keep-alive)."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
            break
    return int(head[9:12]), await reader.readexactly(length)


async def _worker(
    host: str, port: int, request: bytes, deadline: float, warmup_until: float, out: dict[str, Any]
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    latencies: list[float] = out["latencies"]
    try:
        while True:
            start = time.perf_counter()
            if start >= deadline:
                break
            writer.write(request)
            status, body = await read_response(reader)
            end = time.perf_counter()
            if start < warmup_until:
                continue
            if status != 200:
                out["errors"] += 1
                out["last_error"] = body[:200].decode("utf-8", "replace")
                continue
            latencies.append(end - start)
    finally:
        writer.close()
        await writer.wait_closed()


async def _load(
    url: str, path: str, connections: int, seconds: float, warmup: float
) -> dict[str, Any]:
    host, _, port = url.removeprefix("http://").partition(":")
    request = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()
    now = time.perf_counter()
    warmup_until = now + warmup
    deadline = warmup_until + seconds
    out: dict[str, Any] = {"latencies": [], "errors": 0}
    await asyncio.gather(
        *(
            _worker(host, int(port), request, deadline, warmup_until, out)
            for _ in range(connections)
        )
    )
    lat = sorted(out["latencies"])
    n = len(lat)
    return {
        "requests": n,
        "rps": n / seconds,
        "p50_ms": lat[n // 2] * 1000 if n else float("nan"),
        "p99_ms": lat[min(n - 1, int(n * 0.99))] * 1000 if n else float("nan"),
        "errors": out["errors"],
        "last_error": out.get("last_error"),
    }


def load_main(url: str, path: str, connections: int, seconds: float, warmup: float) -> None:
    print(json.dumps(asyncio.run(_load(url, path, connections, seconds, warmup))))


# -- orchestration ----------------------------------------------------------------------------


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc), or NaN."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _python(*args: str, **kwargs: Any) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), *args], text=True, env=env, **kwargs
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=4.0, help="measured seconds per round")
    parser.add_argument("--warmup", type=float, default=0.5, help="unmeasured seconds per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per route (alternating)")
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()

    server = _python("serve", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert server.stdout is not None and server.stderr is not None
        line = server.stdout.readline().strip()
        if " listening on " not in line:
            raise SystemExit(f"server did not start: {line!r} {server.stderr.read()}")
        url = line.split(" listening on ")[1]
        which = server.stderr.readline().strip()
        print(f"server {url} (uvicorn, one process; {which})")
        print(
            f"load: {args.connections} keep-alive connections, {args.seconds:g} s per round, "
            f"{args.rounds} rounds per route, separate process"
        )
        routes = {"bare": f"/bare?{QUERY}", "xrpc": f"/xrpc/{NSID}?{QUERY}"}
        results: dict[str, list[dict[str, Any]]] = {name: [] for name in routes}
        for _ in range(args.rounds):
            for name, path in routes.items():
                loader = _python(
                    "load",
                    url,
                    path,
                    str(args.connections),
                    str(args.seconds),
                    str(args.warmup),
                    stdout=subprocess.PIPE,
                )
                cpu_before = _cpu_seconds(server.pid)
                out, _ = loader.communicate(timeout=args.seconds + args.warmup + 60)
                cpu = _cpu_seconds(server.pid) - cpu_before
                result = json.loads(out)
                # Server CPU per request (warm-up requests included in both counts:
                # scale by the measured share of the round).
                total = result["requests"] * (args.seconds + args.warmup) / args.seconds
                result["cpu_us"] = cpu / total * 1e6 if total else float("nan")
                if result["errors"]:
                    raise SystemExit(
                        f"{name}: {result['errors']} errors, e.g. {result['last_error']}"
                    )
                results[name].append(result)
    finally:
        server.terminate()
        server.wait(timeout=20)

    print(
        f"\n{'route':<6} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'server CPU us/req':>18}"
        "   (median round; all rounds req/s)"
    )
    medians: dict[str, dict[str, Any]] = {}
    cpus: dict[str, float] = {}
    for name, rounds in results.items():
        best = sorted(rounds, key=lambda r: r["rps"])[len(rounds) // 2]
        medians[name] = best
        cpu = statistics.median(r["cpu_us"] for r in rounds)
        cpus[name] = cpu
        every = ", ".join(f"{r['rps']:.0f}" for r in rounds)
        print(
            f"{name:<6} {best['rps']:>9.0f} {best['p50_ms']:>8.2f} {best['p99_ms']:>8.2f} "
            f"{cpu:>18.0f}   [{every}]"
        )
    ratio = medians["xrpc"]["rps"] / medians["bare"]["rps"]
    cpu_ratio = cpus["bare"] / cpus["xrpc"]
    verdict = "meets" if ratio >= 0.70 else "MISSES"
    print(f"\nthroughput ratio xrpc/bare: {ratio:.2f}; {verdict} the 0.70 target")
    print(
        f"server CPU per request, bare/xrpc: {cpu_ratio:.2f} "
        "(throughput ratio if CPU-bound; steadier on a busy machine)"
    )


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "serve":
        serve_main()
    elif len(sys.argv) > 1 and sys.argv[1] == "load":
        load_main(
            sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5]), float(sys.argv[6])
        )
    else:
        main()
