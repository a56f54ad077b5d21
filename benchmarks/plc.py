"""did:plc directory throughput over HTTP on loopback.

Starts ``plc.app`` under uvicorn in a child process (fresh SQLite file, rate
limits off), then from this process, with a few concurrent clients:

1. submits genesis ops for many new DIDs (ops signed beforehand, so only the
   directory's work is timed: parse, verify, validate, durable append);
2. submits one update for each of those DIDs;
3. resolves DIDs (``GET /:did``, random order).

Each phase stops at its op count or its time budget, whichever comes first,
and prints ops/s and latency percentiles. Also prints the in-process rate of
the pure validator (``validate_next_op``) for comparison.

    python benchmarks/plc.py [--dids 2000] [--resolves 5000] [--clients 8] [--seconds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx

from roost.crypto import PrivateKey
from roost.plc import (
    PlcOperation,
    build_genesis,
    build_update,
    did_for_genesis,
    op_cid,
    sign_op,
    validate_next_op,
)


def serve(port: int, data_dir: str) -> None:
    """Child process: run the directory until killed."""
    import uvicorn

    from plc.app import create_app
    from plc.config import PlcConfig

    config = PlcConfig(data_dir=Path(data_dir), port=port, ip_rate_limit=0)
    uvicorn.run(
        create_app(config), host="127.0.0.1", port=port, log_level="warning", access_log=False
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def make_ops(n: int) -> tuple[list[tuple[str, PlcOperation]], list[tuple[str, PlcOperation]]]:
    """n (did, genesis) and n (did, update) pairs, k256 and p256 rotation keys mixed."""
    rotation = [
        PrivateKey.from_hex(f"{i + 1:02x}" * 32, "k256" if i % 2 else "p256") for i in range(4)
    ]
    signing = PrivateKey.from_hex("77" * 32, "k256")
    geneses, updates = [], []
    for i in range(n):
        key = rotation[i % len(rotation)]
        g = sign_op(
            build_genesis(
                rotation_keys=[key, rotation[(i + 1) % len(rotation)]],
                signing_key=signing,
                handle=f"user{i}.bench.test",
                pds_endpoint="https://pds.bench.test",
            ),
            key,
        )
        did = did_for_genesis(g)
        geneses.append((did, g))
        updates.append(
            (did, sign_op(build_update(g, op_cid(g), handle=f"renamed{i}.bench.test"), key))
        )
    return geneses, updates


async def run_phase(
    name: str,
    http: httpx.AsyncClient,
    jobs: list[tuple[str, str, Any]],
    clients: int,
    seconds: float,
) -> list[str]:
    """Run (method, path, json) jobs with ``clients`` workers; returns the paths that got 200."""
    queue = list(reversed(jobs))
    latencies: list[float] = []
    done: list[str] = []
    errors: dict[int, int] = {}
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        while queue and time.perf_counter() < deadline:
            method, path, body = queue.pop()
            start = time.perf_counter()
            response = await http.request(method, path, json=body)
            latencies.append(time.perf_counter() - start)
            if response.status_code == 200:
                done.append(path)
            else:
                errors[response.status_code] = errors.get(response.status_code, 0) + 1

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(clients)))
    elapsed = time.perf_counter() - start
    latencies.sort()
    p50 = statistics.median(latencies) * 1000 if latencies else 0.0
    p99 = latencies[int(len(latencies) * 0.99) - 1] * 1000 if latencies else 0.0
    print(
        f"{name:<28} {len(latencies):>7} req in {elapsed:6.2f}s  {len(latencies) / elapsed:9.0f}/s"
        f"   p50 {p50:6.2f} ms  p99 {p99:6.2f} ms" + (f"   errors {errors}" if errors else "")
    )
    return done


def validator_rate(ops: list[tuple[str, PlcOperation]], seconds: float = 1.0) -> float:
    now = datetime.now(UTC)
    n = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        did, op = ops[n % len(ops)]
        validate_next_op(did, [], op, now + timedelta(milliseconds=n))
        n += 1
    return n / (time.perf_counter() - start)


async def load(base: str, args: argparse.Namespace) -> None:
    t = time.perf_counter()
    geneses, updates = make_ops(args.dids)
    print(f"signed {2 * args.dids} ops offline in {time.perf_counter() - t:.2f}s")
    print(
        f"in-process validate_next_op (genesis, verify + DID hash): {validator_rate(geneses):,.0f}/s"
    )
    limits = httpx.Limits(max_connections=args.clients, max_keepalive_connections=args.clients)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=30) as http:
        print(
            f"{args.clients} concurrent clients, server in a separate process, SQLite synchronous=FULL"
        )
        await run_phase(
            "GET /_health (HTTP floor)", http, [("GET", "/_health", None)] * args.resolves,
            args.clients, args.seconds,
        )  # fmt: skip
        created = await run_phase(
            "submit genesis (new DIDs)",
            http,
            [("POST", f"/{did}", op.to_json()) for did, op in geneses],
            args.clients,
            args.seconds,
        )
        created_set = set(created)
        await run_phase(
            "submit update",
            http,
            [("POST", f"/{did}", op.to_json()) for did, op in updates if f"/{did}" in created_set],
            args.clients,
            args.seconds,
        )
        rng = random.Random(1)
        paths = [rng.choice(created) for _ in range(args.resolves)]
        await run_phase(
            "resolve GET /:did", http, [("GET", p, None) for p in paths], args.clients, args.seconds
        )
        await run_phase(
            "GET /:did/log/audit", http, [("GET", p + "/log/audit", None) for p in paths[: args.resolves // 2]],
            args.clients, args.seconds,
        )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--dids", type=int, default=2000, help="DIDs to create (and update once each)"
    )
    parser.add_argument("--resolves", type=int, default=5000, help="GET /:did requests")
    parser.add_argument("--clients", type=int, default=8, help="concurrent HTTP clients")
    parser.add_argument("--seconds", type=float, default=20.0, help="time budget per phase")
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.data_dir)
        return

    port = free_port()
    with tempfile.TemporaryDirectory(prefix="roost-plc-bench-") as data_dir:
        child = subprocess.Popen(
            [sys.executable, __file__, "--serve", str(port), "--data-dir", data_dir],
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
        )
        try:
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 30
            while True:
                try:
                    if httpx.get(base + "/_health", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline or child.poll() is not None:
                    raise SystemExit("directory did not start")
                time.sleep(0.1)
            print(f"directory pid {child.pid} at {base}")
            asyncio.run(load(base, args))
        finally:
            child.terminate()
            child.wait(10)


if __name__ == "__main__":
    main()
