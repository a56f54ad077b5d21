"""Relay frontends on PostgreSQL: consumers served at a p99 budget, one frontend vs several.

What is measured is the serving tier of a scaled-out relay: ``--frontends``
processes (``roost relay serve --role frontend``) following one shared event
log in PostgreSQL and fanning it out to ``subscribeRepos`` consumers. The
ingest is replaced by a paced writer in this process that appends to the log
through the relay's own :class:`~relay.eventlog.EventWriter` and
:class:`~relay.postgres.PostgresStore` (the same transaction, seq numbering and
``NOTIFY`` an ingest uses), so verification cost does not hide the frontends'.
Each event is a ``#commit`` frame of about ``--frame-bytes`` bytes whose
``time`` is the wall clock when it was submitted; latency is taken by the
consumers (the same consumer processes as ``benchmarks/relay.py``: a few parse
every frame, the others count bytes) from that stamp to arrival.

For 1 and then ``--frontends`` frontends, consumer counts from ``--consumers``
are tried in turn (spread evenly over the frontends; the same number of
consumer processes in both configurations), each for ``--seconds`` at
``--rate`` events/s. A count is *served* when every consumer got every event
and the p99 latency is within ``--p99-ms``. The result is the largest count
served with N frontends over the largest served with one. Target (issue
"Past one machine"): at least 1.7x with two frontends. On one small machine
the frontends, the database, the writer and the consumers all share the same
cores, which caps what extra frontends can add.

Without ``--database`` a PostgreSQL server is started from the machine's
binaries (as the tests do) in a temporary folder, and stopped afterwards.

    python benchmarks/relay.py --frontends 2            # through benchmarks/relay.py
    python benchmarks/relay_frontends.py --frontends 2 --consumers 50,100,200
    python benchmarks/relay_frontends.py --database postgresql://user@host/db
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.pds import Children, pct, proc_cpu_s  # noqa: E402
from benchmarks.relay import CONTROL_SLACK, consumers_main  # noqa: E402

#: Consumers per frontend configuration tried by default, in order.
DEFAULT_CONSUMERS = (50, 100, 200, 400, 800)
DEFAULT_RATE = 500.0
DEFAULT_SECONDS = 5.0
DEFAULT_P99_MS = 250.0
DEFAULT_FRAME_BYTES = 1_000
TARGET_RATIO = 1.7
#: Writer ticks per second (events are submitted in one batch per tick).
TICKS_PER_S = 200
DID = "did:plc:ewvi7nxzyoun6zhxrhs64oiz"


def _say(msg: str) -> None:
    print(f"[relay-frontends-bench] {msg}", file=sys.stderr, flush=True)


class _NoFanout:
    """The writer's sequencer: nobody listens in this process."""

    def publish(self, events: Any) -> None:
        pass


async def write_paced(dsn: str, rate: float, seconds: float, frame_bytes: int) -> int:
    """Append ``rate * seconds`` events to the shared log at ``rate``; how many."""
    from relay.eventlog import EventWriter, OutEvent, Submission
    from relay.postgres import PostgresStore

    store = PostgresStore(dsn)
    await asyncio.to_thread(store.open)
    writer = EventWriter(store, _NoFanout())  # type: ignore[arg-type]
    await writer.start()
    blocks = os.urandom(frame_bytes)
    total = int(rate * seconds)
    sent = 0
    futures = []
    start = time.monotonic()
    try:
        while sent < total:
            due = min(total, int((time.monotonic() - start) * rate) + 1)
            if due > sent:
                stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
                events = [
                    OutEvent("#commit", {
                        "repo": DID, "rev": "3l3qo2vutsw2b", "since": None, "commit": None,
                        "blocks": blocks, "ops": [], "blobs": [], "rebase": False, "tooBig": False,
                        "time": stamp,
                    }, 1)
                    for _ in range(due - sent)
                ]
                futures.append(writer.submit(Submission(events=events)))
                sent = due
            await asyncio.sleep(1 / TICKS_PER_S)
        await asyncio.gather(*futures)
    finally:
        await writer.stop()
        await asyncio.to_thread(store.close)
    return sent


def machine_busy_s() -> float:
    """CPU seconds all cores spent busy since boot (``/proc/stat``), NaN when unreadable."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return math.nan
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


class ConsumerGroup:
    """Consumer processes (``benchmarks.relay.consumers_main``), each on one frontend."""

    def __init__(self, ports: list[int], counts: list[int]) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conns = []
        self.procs = []
        for port, count in zip(ports, counts):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=consumers_main, args=(child, "127.0.0.1", port, count), daemon=True)
            proc.start()
            self.conns.append(parent)
            self.procs.append(proc)
        for conn in self.conns:
            conn.recv()  # ("ready", parsers)

    def ask(self, command: str) -> list[Any]:
        for conn in self.conns:
            conn.send((command,))
        return [conn.recv() for conn in self.conns]

    def delivered(self, expected: int) -> bool:
        return all(frames >= expected and high - low < CONTROL_SLACK
                   for frames, low, high in self.ask("progress"))

    def cpu_s(self) -> float:
        return sum(proc_cpu_s(p.pid or 0) for p in self.procs)

    def stop(self) -> None:
        for conn in self.conns:
            with contextlib.suppress(Exception):
                conn.send(("stop",))
        for proc in self.procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()


def measure(
    dsn: str, frontends: list[Any], consumers: int, processes: int, args: argparse.Namespace
) -> dict[str, Any]:
    """One paced run with ``consumers`` spread over ``frontends``."""
    ports = [int(f.url.rsplit(":", 1)[1]) for f in frontends]
    counts = [consumers // processes + (1 if i < consumers % processes else 0) for i in range(processes)]
    group = ConsumerGroup([ports[i % len(ports)] for i in range(processes)], counts)
    try:
        group.ask("reset")
        cpu0 = [proc_cpu_s(f.pid) for f in frontends]
        load0, busy0 = group.cpu_s(), machine_busy_s()
        t0 = time.monotonic()
        sent = asyncio.run(write_paced(dsn, args.rate, args.seconds, args.frame_bytes))
        deadline = time.monotonic() + args.seconds + 60
        while not group.delivered(sent) and time.monotonic() < deadline:
            time.sleep(0.1)
        elapsed = time.monotonic() - t0
        cpu = sum(proc_cpu_s(f.pid) for f in frontends) - sum(cpu0)
        load, busy = group.cpu_s() - load0, machine_busy_s() - busy0
        rows = [row for stats in group.ask("stats") for row in stats]
    finally:
        group.stop()
    latencies = sorted(x for r in rows if r["parse"] for x in r["latencies"])
    # parsers count frames; the others count bytes, which must match a parser's that got all
    full = [r["bytes"] for r in rows if r["parse"] and r["frames"] >= sent]
    reference = max(full, default=-1)
    complete = sum(
        1 for r in rows if abs(r["bytes"] - reference) < CONTROL_SLACK and not r["closed"]
    )
    p99 = pct(latencies, 0.99) * 1000
    return {
        "consumers": consumers,
        "events": sent,
        "complete": complete,
        "p50_ms": pct(latencies, 0.50) * 1000,
        "p99_ms": p99,
        "frontend_cpu_s_per_s": cpu / max(1e-9, elapsed),
        "consumers_cpu_s_per_s": load / max(1e-9, elapsed),
        "machine_busy_cores": busy / max(1e-9, elapsed),
        "served": complete == consumers and p99 <= args.p99_ms,
    }


def run_configuration(
    count: int, dsn: str, children: Children, workdir: Path, args: argparse.Namespace
) -> list[dict[str, Any]]:
    """Try each consumer count on ``count`` fresh frontends until one is not served.

    The frontends are restarted for every count: each limits connections per
    client address (all consumers here come from 127.0.0.1).
    """
    env = dict(os.environ)
    env.update(
        ROOST_DATABASE=dsn,
        ROOST_ROLE="frontend",
        ROOST_PLC_URL="http://127.0.0.1:9",
        PYTHONPATH=str(REPO_ROOT),
    )
    rows = []
    for consumers in args.consumer_counts:
        frontends = []
        try:
            for i in range(count):
                name = f"frontend-{count}-{i}-{consumers}"
                env["ROOST_DATA_DIR"] = str(workdir / name)
                frontends.append(children.start(
                    name, [sys.executable, "-m", "roost.cli", "relay", "serve", "--port", "0"],
                    dict(env),
                ))
            row = measure(dsn, frontends, consumers, args.processes, args)
        finally:
            for child in frontends:
                children.stop(child)
        _say(f"{count} frontend(s): {json.dumps(row)}")
        rows.append(row)
        if not row["served"]:
            break
    return rows


def capacity(rows: list[dict[str, Any]]) -> int:
    return max((r["consumers"] for r in rows if r["served"]), default=0)


def run(args: argparse.Namespace) -> int:
    """The benchmark for parsed arguments (also called by ``benchmarks/relay.py``)."""
    args.frontends = max(2, args.frontends or 2)
    args.rate = args.rate or DEFAULT_RATE
    args.seconds = args.seconds or DEFAULT_SECONDS
    args.p99_ms = getattr(args, "p99_ms", None) or DEFAULT_P99_MS
    args.frame_bytes = getattr(args, "frame_bytes", None) or DEFAULT_FRAME_BYTES
    consumers = getattr(args, "consumers", None)
    args.consumer_counts = (
        tuple(int(x) for x in consumers.split(",")) if consumers else DEFAULT_CONSUMERS
    )
    args.processes = args.frontends
    workdir = Path(tempfile.mkdtemp(prefix="roost-relay-frontends-"))
    children = Children(workdir)
    server = None
    results: dict[str, Any] = {
        "rate": args.rate, "seconds": args.seconds, "p99_budget_ms": args.p99_ms,
        "frame_bytes": args.frame_bytes, "cpus": os.cpu_count(), "runs": {},
    }
    try:
        if args.database:
            databases = [args.database, args.database]
        else:
            from tests.postgres import PostgresServer

            server = PostgresServer()
            server.start()
            databases = [server.new_database(), server.new_database()]
        for count, dsn in zip((1, args.frontends), databases):
            results["runs"][str(count)] = run_configuration(count, dsn, children, workdir, args)
    finally:
        children.stop_all()
        if server is not None:
            server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    print_table(results, args.frontends)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


def print_table(results: dict[str, Any], frontends: int) -> None:
    print()
    print(f"relay frontends on PostgreSQL: {results['rate']:.0f} events/s of ~{results['frame_bytes']} B "
          f"for {results['seconds']:.0f} s, p99 budget {results['p99_budget_ms']:.0f} ms, "
          f"{results['cpus']} CPUs")
    header = (
        f"{'frontends':>9} | {'consumers':>9} | {'complete':>8} | {'p50 ms':>7} | {'p99 ms':>7} | "
        f"{'fe CPU':>6} | {'load CPU':>8} | {'machine':>7} | served"
    )
    print(header)
    print("-" * len(header))
    for count, rows in results["runs"].items():
        for r in rows:
            print(f"{count:>9} | {r['consumers']:>9} | {r['complete']:>8} | {r['p50_ms']:>7.1f} | "
                  f"{r['p99_ms']:>7.1f} | {r['frontend_cpu_s_per_s']:>5.2f}c | "
                  f"{r['consumers_cpu_s_per_s']:>7.2f}c | {r['machine_busy_cores']:>6.2f}c | "
                  f"{'yes' if r['served'] else 'no'}")
    one = capacity(results["runs"]["1"])
    many = capacity(results["runs"][str(frontends)])
    ratio = many / one if one else math.nan
    print()
    print(f"target: {frontends} frontends serve >= {TARGET_RATIO}x the consumers of one at the same p99 "
          f"budget -> one: {one}, {frontends}: {many} ({ratio:.2f}x)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    add_arguments(parser)
    parser.add_argument("--rate", type=float, help=f"events/s (default {DEFAULT_RATE:.0f})")
    parser.add_argument("--seconds", type=float, help=f"per run (default {DEFAULT_SECONDS:.0f})")
    parser.add_argument("--consumers", help="comma-separated consumer counts to try")
    parser.add_argument("--json", help="also write the results here")
    return run(parser.parse_args(argv))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of this mode (``benchmarks/relay.py`` adds them to its own)."""
    parser.add_argument("--database", help="postgresql:// URL (default: start a server)")
    parser.add_argument("--frontends", type=int, help="frontends compared with one (default 2)")
    parser.add_argument("--p99-ms", type=float, help=f"latency budget (default {DEFAULT_P99_MS:.0f})")
    parser.add_argument("--frame-bytes", type=int, help=f"event size (default {DEFAULT_FRAME_BYTES})")


if __name__ == "__main__":
    sys.exit(main())
