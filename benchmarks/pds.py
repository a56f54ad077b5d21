"""roost's PDS against the reference PDS (``@atproto/pds``), same machine, same run.

One roost did:plc directory (``roost plc serve``) is started in a child
process; both PDSes point at it. Each PDS runs alone in its own process while
it is measured (the other is stopped), and this process is the load
generator: a small asyncio HTTP/1.1 client with keep-alive connections, plus
a ``websockets`` client for the firehose. For each PDS:

1. create an account and log in (``createSession``);
2. ``createRecord`` (``app.bsky.feed.post``): throughput, p50 and p99 at
   concurrency 1 and 16, after a warm-up;
3. ``getRecord`` throughput at concurrency 16;
4. fill the repo to N records with ``applyWrites`` batches of 200, then time
   a full ``sync.getRepo`` download (best of 3);
5. write-to-firehose latency: subscribe to ``subscribeRepos``, create records
   one at a time, time from sending the request to receiving its ``#commit``;
6. firehose replay from cursor 0 (every frame decoded with
   ``roost.frames.decode_frame``), events/s;
7. the server's RSS (``VmRSS``) idle after start and after the run, and its
   peak (``VmHWM``), from ``/proc/<pid>/status``.

Server CPU per request (from ``/proc/<pid>/stat``) is printed alongside the
throughput figures, to tell a CPU-bound server from a waiting one.

Rate limits are off on both sides for a fair throughput comparison: the
reference runs with ``PDS_RATE_LIMITS_ENABLED=false``; roost's PDS runs as
``roost pds serve`` with ``ROOST_RATE_LIMIT_BYPASS_IPS`` set to loopback. The
reference runs with dev mode off (dev mode
validates every response), handles under ``pds.test``, bound to 127.0.0.1.

    python benchmarks/pds.py [--quick] [--skip-reference] [--json FILE]

The reference is skipped, with the reason printed, when node/npm is missing
or its install (``benchmarks/.peers/node``, see ``benchmarks/peers.py``) or
the better-sqlite3 native build fails. Every child process and temporary
directory is cleaned up on exit, Ctrl-C included.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

HOSTNAME = "pds.test"
PASSWORD = "bench-password-123"
POST = "app.bsky.feed.post"
BATCH = 200  # applyWrites: the most writes one commit may hold
HANDLE_NAME = "bench"
READY_TIMEOUT_S = 120.0


@dataclass(frozen=True, slots=True)
class Plan:
    """How much work each phase does (each phase also stops at ``budget_s``)."""

    warmup: int
    create_c1: int
    create_c16: int
    get_c16: int
    repo_records: int
    firehose_writes: int
    budget_s: float


FULL = Plan(
    warmup=40,
    create_c1=400,
    create_c16=2000,
    get_c16=5000,
    repo_records=10_000,
    firehose_writes=200,
    budget_s=120.0,
)
QUICK = Plan(
    warmup=20,
    create_c1=100,
    create_c16=400,
    get_c16=1000,
    repo_records=2_000,
    firehose_writes=50,
    budget_s=40.0,
)


def _say(msg: str) -> None:
    print(f"[pds-bench] {msg}", file=sys.stderr, flush=True)


# -- /proc -----------------------------------------------------------------------------------------


def proc_status_mb(pid: int, field_name: str) -> float:
    """``VmRSS``/``VmHWM`` of another process in MB (NaN when unreadable)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return math.nan


_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads), NaN when unreadable."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / _TICKS
    except (OSError, ValueError, IndexError):
        return math.nan


# -- child processes -------------------------------------------------------------------------------


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Linux: the child gets SIGTERM if this process dies without cleaning up."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    url: str
    out_path: Path
    err_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stderr_tail(self, lines: int = 12) -> str:
        try:
            text = self.err_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.strip().splitlines()[-lines:])


class Children:
    """Every server this run started, stopped in reverse order by :meth:`stop_all`."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.running: list[Child] = []

    def start(
        self, name: str, cmd: Sequence[str], env: dict[str, str], cwd: Path | None = None
    ) -> Child:
        """Start ``cmd`` and wait for its ``... listening on URL`` line."""
        out_path = self.workdir / f"{name}.stdout"
        err_path = self.workdir / f"{name}.stderr"
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            proc = subprocess.Popen(
                list(cmd),
                cwd=cwd or REPO_ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,  # Ctrl-C reaches us only; we stop children in order
                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
            )
        child = Child(name, proc, "", out_path, err_path)
        self.running.append(child)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            text = out_path.read_text(errors="replace")
            for line in text.splitlines():
                if " listening on " in line:
                    child.url = line.rsplit(" listening on ", 1)[1].strip().rstrip("/")
                    return child
            if proc.poll() is not None:
                self.stop(child)
                raise RuntimeError(
                    f"{name} exited with {proc.returncode} before it was ready:\n"
                    + child.stderr_tail()
                )
            time.sleep(0.05)
        self.stop(child)
        raise RuntimeError(f"{name} was not ready after {READY_TIMEOUT_S:.0f} s")

    def stop(self, child: Child, timeout: float = 15.0) -> None:
        proc = child.proc
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait(5)
        if child in self.running:
            self.running.remove(child)

    def stop_all(self) -> None:
        for child in reversed(list(self.running)):
            try:
                self.stop(child)
            except Exception as exc:  # keep stopping the others
                _say(f"could not stop {child.name} (pid {child.pid}): {exc}")


# -- the roost PDS child ---------------------------------------------------------------------------


def start_plc(children: Children) -> Child:
    env = dict(os.environ)
    env.update(
        ROOST_DATA_DIR=str(children.workdir / "plc"),
        ROOST_IP_RATE_LIMIT="0",
        PYTHONPATH=str(REPO_ROOT),
    )
    cmd = [sys.executable, "-m", "roost.cli", "plc", "serve", "--port", "0"]
    return children.start("plc", cmd, env)


def start_roost_pds(children: Children, plc_url: str) -> Child:
    env = dict(os.environ)
    env.update(
        ROOST_DATA_DIR=str(children.workdir / "roost-pds"),
        ROOST_HOSTNAME=HOSTNAME,
        ROOST_PLC_URL=plc_url,
        ROOST_ALLOW_LOCAL="1",
        ROOST_PORT="0",
        # the counterpart of the reference's PDS_RATE_LIMITS_ENABLED=false
        ROOST_RATE_LIMIT_BYPASS_IPS="127.0.0.1,::1",
        PYTHONPATH=str(REPO_ROOT),
    )
    cmd = [sys.executable, "-m", "roost.cli", "pds", "serve", "--port", "0"]
    return children.start("roost-pds", cmd, env)


# -- the reference PDS -----------------------------------------------------------------------------


def ensure_better_sqlite3(where: Path) -> str | None:
    """Make sure better-sqlite3's native module loads there (rebuild once if not).

    Returns None when it works, else the reason it does not.
    """
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        return "node or npm is not on PATH"
    probe = [node, "-e", "new (require('better-sqlite3'))(':memory:').close()"]

    def loads() -> tuple[bool, str]:
        try:
            p = subprocess.run(probe, cwd=where, capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return False, str(exc)
        return p.returncode == 0, (p.stderr.strip().splitlines() or [""])[-1]

    ok, why = loads()
    if ok:
        return None
    _say(f"better-sqlite3 does not load ({why}); running `npm rebuild better-sqlite3` (~1 min)")
    try:
        p = subprocess.run(
            [npm, "rebuild", "better-sqlite3", "--loglevel=error"],
            cwd=where,
            capture_output=True,
            text=True,
            timeout=900,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"npm rebuild better-sqlite3 failed: {exc}"
    if p.returncode != 0:
        tail = (p.stderr or p.stdout).strip().splitlines()[-3:]
        return f"npm rebuild better-sqlite3 exited {p.returncode}: {' | '.join(tail)}"
    ok, why = loads()
    return None if ok else f"better-sqlite3 still does not load after rebuild: {why}"


def reference_pds_dir() -> tuple[Path | None, str]:
    """The installed node peers folder with a working @atproto/pds, or (None, reason)."""
    from benchmarks.peers import ensure_node_peers

    where = ensure_node_peers()
    if where is None:
        return None, "node peers could not be installed (reason printed above)"
    if not (where / "node_modules" / "@atproto" / "pds").is_dir():
        return None, f"@atproto/pds is not installed in {where}"
    if not (where / "pds_server.mjs").exists():
        return None, f"pds_server.mjs is missing from {where}"
    reason = ensure_better_sqlite3(where)
    if reason is not None:
        return None, reason
    return where, ""


def reference_version(where: Path) -> str:
    try:
        meta = json.loads((where / "node_modules/@atproto/pds/package.json").read_text())
        return f"@atproto/pds {meta['version']}"
    except (OSError, ValueError, KeyError):
        return "@atproto/pds"


def start_reference_pds(children: Children, where: Path, plc_url: str) -> Child:
    from roost.crypto import PrivateKey

    data = children.workdir / "reference-pds"
    (data / "blobs").mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.update(
        NODE_ENV="production",
        LOG_ENABLED="false",
        PDS_HOSTNAME=HOSTNAME,
        PDS_PORT="0",
        PDS_DATA_DIRECTORY=str(data),
        PDS_BLOBSTORE_DISK_LOCATION=str(data / "blobs"),
        PDS_DID_PLC_URL=plc_url,
        PDS_JWT_SECRET=secrets.token_hex(16),
        PDS_DPOP_SECRET=secrets.token_hex(32),
        PDS_ADMIN_PASSWORD=secrets.token_hex(8),
        PDS_PLC_ROTATION_KEY_K256_PRIVATE_KEY_HEX=PrivateKey.generate("k256").to_hex(),
        PDS_INVITE_REQUIRED="false",
        PDS_RATE_LIMITS_ENABLED="false",
        PDS_DISABLE_SSRF_PROTECTION="true",
        PDS_DEV_MODE="false",
    )
    node = shutil.which("node")
    assert node is not None
    return children.start("reference-pds", [node, str(where / "pds_server.mjs")], env, cwd=where)


# -- a minimal keep-alive HTTP/1.1 client ----------------------------------------------------------


class HttpError(RuntimeError):
    pass


class Conn:
    """One keep-alive HTTP/1.1 connection (Content-Length and chunked bodies)."""

    IDLE_REOPEN_S = 3.0  # servers drop idle keep-alive connections after ~5 s

    def __init__(self, url: str) -> None:
        hostport = url.removeprefix("http://")
        host, _, port = hostport.rpartition(":")
        self.host, self.port = host, int(port)
        self.hostport = hostport
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.last_used = 0.0

    async def open(self) -> None:
        await self.close()
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        self.last_used = time.monotonic()

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(Exception):
                await self.writer.wait_closed()
        self.reader = self.writer = None

    def build(
        self, method: str, path: str, token: str | None = None, body: bytes | None = None
    ) -> bytes:
        head = [f"{method} {path} HTTP/1.1", f"Host: {self.hostport}"]
        if token:
            head.append(f"Authorization: Bearer {token}")
        if body is not None:
            head.append("Content-Type: application/json")
            head.append(f"Content-Length: {len(body)}")
        return ("\r\n".join(head) + "\r\n\r\n").encode() + (body or b"")

    async def send(self, request: bytes) -> tuple[int, bytes]:
        """Send one prepared request; ``(status, body)``. Reconnects a stale connection once."""
        if self.writer is None or time.monotonic() - self.last_used > self.IDLE_REOPEN_S:
            await self.open()
        try:
            return await self._exchange(request)
        except (ConnectionError, asyncio.IncompleteReadError):
            await self.open()
            return await self._exchange(request)

    async def _exchange(self, request: bytes) -> tuple[int, bytes]:
        assert self.reader is not None and self.writer is not None
        self.writer.write(request)
        reader = self.reader
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        length: int | None = None
        chunked = False
        close = False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
            elif name == b"connection" and value.strip().lower() == b"close":
                close = True
        if chunked:
            parts = []
            while True:
                size_line = await reader.readuntil(b"\r\n")
                size = int(size_line.split(b";")[0], 16)
                if size == 0:
                    # trailers end with an empty line
                    while (await reader.readuntil(b"\r\n")) != b"\r\n":
                        pass
                    break
                parts.append(await reader.readexactly(size))
                await reader.readexactly(2)
            body = b"".join(parts)
        elif length is not None:
            body = await reader.readexactly(length)
        else:
            body = await reader.read()
            close = True
        self.last_used = time.monotonic()
        if close:
            await self.close()
        return status, body

    async def call(
        self, method: str, path: str, token: str | None = None, payload: Any = None
    ) -> Any:
        body = None if payload is None else json.dumps(payload).encode()
        status, data = await self.send(self.build(method, path, token, body))
        if status != 200:
            raise HttpError(f"{method} {path.split('?')[0]} -> {status}: {data[:300]!r}")
        return json.loads(data) if data else None


# -- measurement helpers ---------------------------------------------------------------------------


def pct(sorted_values: Sequence[float], q: float) -> float:
    if not sorted_values:
        return math.nan
    index = min(len(sorted_values) - 1, max(0, math.ceil(q * len(sorted_values)) - 1))
    return sorted_values[index]


@dataclass
class Phase:
    ok: int = 0
    errors: int = 0
    elapsed_s: float = 0.0
    latencies: list[float] = field(default_factory=list)
    server_cpu_s: float = math.nan
    client_cpu_s: float = math.nan
    last_error: str = ""

    def summary(self) -> dict[str, float]:
        lat = sorted(self.latencies)
        rps = self.ok / self.elapsed_s if self.elapsed_s > 0 else math.nan
        return {
            "n": self.ok,
            "errors": self.errors,
            "rps": rps,
            "p50_ms": pct(lat, 0.50) * 1000,
            "p99_ms": pct(lat, 0.99) * 1000,
            "server_cpu_ms": self.server_cpu_s / self.ok * 1000 if self.ok else math.nan,
            "server_cpu_util": self.server_cpu_s / self.elapsed_s if self.elapsed_s else math.nan,
            "client_cpu_util": self.client_cpu_s / self.elapsed_s if self.elapsed_s else math.nan,
        }


async def closed_loop(
    url: str,
    pid: int,
    concurrency: int,
    total: int,
    budget_s: float,
    make: Callable[[Conn, int], bytes],
    on_ok: Callable[[int, bytes], None] | None = None,
) -> Phase:
    """``total`` requests over ``concurrency`` connections, each sending its next when answered."""
    conns = [Conn(url) for _ in range(concurrency)]
    await asyncio.gather(*(c.open() for c in conns))  # connect before the clock starts
    phase = Phase()
    counter = iter(range(total))
    deadline = time.monotonic() + budget_s

    async def worker(conn: Conn) -> None:
        for i in counter:
            if time.monotonic() > deadline:
                break
            request = make(conn, i)
            start = time.perf_counter()
            try:
                status, body = await conn.send(request)
            except (ConnectionError, asyncio.IncompleteReadError, ValueError) as exc:
                phase.errors += 1
                phase.last_error = repr(exc)
                continue
            took = time.perf_counter() - start
            if status != 200:
                phase.errors += 1
                phase.last_error = f"{status}: {body[:200]!r}"
                continue
            phase.ok += 1
            phase.latencies.append(took)
            if on_ok is not None:
                on_ok(i, body)

    cpu0, ccpu0, t0 = proc_cpu_s(pid), time.process_time(), time.perf_counter()
    try:
        await asyncio.gather(*(worker(c) for c in conns))
    finally:
        phase.elapsed_s = time.perf_counter() - t0
        phase.server_cpu_s = proc_cpu_s(pid) - cpu0
        phase.client_cpu_s = time.process_time() - ccpu0
        await asyncio.gather(*(c.close() for c in conns))
    if phase.errors:
        _say(f"  {phase.errors} failed requests; last: {phase.last_error}")
    return phase


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def ws_url(url: str, cursor: int | None = None) -> str:
    base = "ws://" + url.removeprefix("http://") + "/xrpc/com.atproto.sync.subscribeRepos"
    return base if cursor is None else f"{base}?cursor={cursor}"


# -- the suite -------------------------------------------------------------------------------------


class Bench:
    """Runs every phase against one PDS; results go into ``self.r``."""

    def __init__(self, label: str, url: str, pid: int, plan: Plan) -> None:
        self.label = label
        self.url = url
        self.pid = pid
        self.plan = plan
        self.r: dict[str, Any] = {"label": label}
        self.did = ""
        self.token = ""
        self.rkeys: list[str] = []
        self.records = 0
        self.last_seq = 0

    # requests -----------------------------------------------------------------

    def _create_request(self, conn: Conn, i: int, rkey: str | None = None) -> bytes:
        payload: dict[str, Any] = {
            "repo": self.did,
            "collection": POST,
            "record": {"$type": POST, "text": f"benchmark post {i}", "createdAt": now_iso()},
        }
        if rkey is not None:
            payload["rkey"] = rkey
        body = json.dumps(payload).encode()
        return conn.build("POST", "/xrpc/com.atproto.repo.createRecord", self.token, body)

    def _on_created(self, i: int, body: bytes) -> None:
        self.records += 1
        self.rkeys.append(json.loads(body)["uri"].rsplit("/", 1)[1])

    # phases -------------------------------------------------------------------

    async def account(self) -> None:
        conn = Conn(self.url)
        try:
            await conn.call("GET", "/xrpc/_health")
            handle = f"{HANDLE_NAME}.{HOSTNAME}"
            created = await conn.call(
                "POST",
                "/xrpc/com.atproto.server.createAccount",
                payload={"handle": handle, "email": "bench@example.com", "password": PASSWORD},
            )
            self.did = created["did"]
            session = await conn.call(
                "POST",
                "/xrpc/com.atproto.server.createSession",
                payload={"identifier": handle, "password": PASSWORD},
            )
            self.token = session["accessJwt"]
        finally:
            await conn.close()

    async def warmup(self) -> None:
        n = self.plan.warmup
        await closed_loop(self.url, self.pid, 1, n, 60, self._create_request, self._on_created)
        await closed_loop(self.url, self.pid, 4, 4 * n, 60, self._create_request, self._on_created)
        await closed_loop(self.url, self.pid, 4, 4 * n, 60, self._get_request)

    async def create(self, concurrency: int, total: int) -> None:
        phase = await closed_loop(
            self.url,
            self.pid,
            concurrency,
            total,
            self.plan.budget_s,
            self._create_request,
            self._on_created,
        )
        self.r[f"create_c{concurrency}"] = phase.summary()

    def _get_request(self, conn: Conn, i: int) -> bytes:
        rkey = self.rkeys[(i * 7919) % len(self.rkeys)]
        path = (
            f"/xrpc/com.atproto.repo.getRecord?repo={quote(self.did)}"
            f"&collection={POST}&rkey={rkey}"
        )
        return conn.build("GET", path)

    async def get_records(self) -> None:
        phase = await closed_loop(
            self.url, self.pid, 16, self.plan.get_c16, self.plan.budget_s, self._get_request
        )
        self.r["get_c16"] = phase.summary()

    async def fill_repo(self) -> None:
        conn = Conn(self.url)
        started = time.perf_counter()
        batches = 0
        try:
            while self.records < self.plan.repo_records:
                n = min(BATCH, self.plan.repo_records - self.records)
                created = now_iso()
                writes = [
                    {
                        "$type": "com.atproto.repo.applyWrites#create",
                        "collection": POST,
                        "value": {
                            "$type": POST,
                            "text": f"filler post {self.records + k}",
                            "createdAt": created,
                        },
                    }
                    for k in range(n)
                ]
                await conn.call(
                    "POST",
                    "/xrpc/com.atproto.repo.applyWrites",
                    self.token,
                    {"repo": self.did, "writes": writes},
                )
                self.records += n
                batches += 1
        finally:
            await conn.close()
        took = time.perf_counter() - started
        self.r["fill"] = {
            "batches": batches,
            "s": took,
            "records_per_s": (batches * BATCH) / took if batches else math.nan,
        }

    async def get_repo(self) -> None:
        conn = Conn(self.url)
        path = f"/xrpc/com.atproto.sync.getRepo?did={quote(self.did)}"
        times: list[float] = []
        size = 0
        try:
            for _ in range(3):
                request = conn.build("GET", path)
                cpu0 = proc_cpu_s(self.pid)
                start = time.perf_counter()
                status, body = await conn.send(request)
                times.append(time.perf_counter() - start)
                cpu = proc_cpu_s(self.pid) - cpu0
                if status != 200:
                    raise HttpError(f"getRepo -> {status}: {body[:200]!r}")
                size = len(body)
        finally:
            await conn.close()
        blocks = _count_car_blocks(body)
        self.r["get_repo"] = {
            "records": self.records,
            "best_s": min(times),
            "times_s": times,
            "mb": size / 1e6,
            "blocks": blocks,
            "server_cpu_s_last": cpu,
        }

    async def firehose_latency(self) -> None:
        import websockets

        from roost.frames import decode_frame
        from roost.tid import TidClock

        loop = asyncio.get_running_loop()
        waiting: dict[str, asyncio.Future[float]] = {}
        seen: Counter[str] = Counter()

        async with websockets.connect(
            ws_url(self.url), compression=None, max_size=None, ping_interval=None
        ) as ws:

            async def read() -> None:
                async for message in ws:
                    arrived = time.perf_counter()
                    header, body = decode_frame(message)  # type: ignore[arg-type]
                    t = header.get("t", "?")
                    seen[t] += 1
                    if isinstance(body.get("seq"), int):
                        self.last_seq = max(self.last_seq, body["seq"])
                    if t == "#commit":
                        for op in body.get("ops", ()):
                            fut = waiting.pop(op.get("path", ""), None)
                            if fut is not None and not fut.done():
                                fut.set_result(arrived)

            reader = asyncio.create_task(read())
            conn = Conn(self.url)
            clock = TidClock()
            lat: list[float] = []
            http_lat: list[float] = []
            missed = 0
            total = self.plan.firehose_writes
            warm = 5
            try:
                await conn.open()
                for i in range(total + warm):
                    rkey = clock.next_str()
                    fut: asyncio.Future[float] = loop.create_future()
                    waiting[f"{POST}/{rkey}"] = fut
                    request = self._create_request(conn, i, rkey)
                    start = time.perf_counter()
                    status, body = await conn.send(request)
                    answered = time.perf_counter()
                    if status != 200:
                        raise HttpError(f"createRecord -> {status}: {body[:200]!r}")
                    self.records += 1
                    self.rkeys.append(rkey)
                    try:
                        arrived = await asyncio.wait_for(fut, 5.0)
                    except TimeoutError:
                        missed += 1
                        waiting.pop(f"{POST}/{rkey}", None)
                        continue
                    if i >= warm:
                        lat.append(arrived - start)
                        http_lat.append(answered - start)
            finally:
                await conn.close()
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await reader
        lat.sort()
        http_lat.sort()
        self.r["firehose"] = {
            "n": len(lat),
            "missed": missed,
            "p50_ms": pct(lat, 0.5) * 1000,
            "p99_ms": pct(lat, 0.99) * 1000,
            "max_ms": (lat[-1] * 1000) if lat else math.nan,
            "http_p50_ms": pct(http_lat, 0.5) * 1000,
            "frame_types": dict(seen),
        }

    async def replay(self) -> None:
        import websockets

        from roost.frames import decode_frame

        target = self.last_seq
        frames = 0
        nbytes = 0
        kinds: Counter[str] = Counter()
        reached = False
        cpu0, ccpu0 = proc_cpu_s(self.pid), time.process_time()
        start = time.perf_counter()
        deadline = time.monotonic() + self.plan.budget_s
        async with websockets.connect(
            ws_url(self.url, 0), compression=None, max_size=None, ping_interval=None
        ) as ws:
            while time.monotonic() < deadline:
                try:
                    message = await asyncio.wait_for(ws.recv(), 10.0)
                except TimeoutError:
                    break
                header, body = decode_frame(message)  # type: ignore[arg-type]
                frames += 1
                nbytes += len(message)
                kinds[header.get("t", "error")] += 1
                seq = body.get("seq")
                if isinstance(seq, int) and seq >= target:
                    reached = True
                    break
        took = time.perf_counter() - start
        self.r["replay"] = {
            "events": frames,
            "target_seq": target,
            "complete": reached,
            "s": took,
            "events_per_s": frames / took if took else math.nan,
            "mb": nbytes / 1e6,
            "types": dict(kinds),
            "server_cpu_util": (proc_cpu_s(self.pid) - cpu0) / took if took else math.nan,
            "client_cpu_util": (time.process_time() - ccpu0) / took if took else math.nan,
        }

    async def run(self) -> dict[str, Any]:
        plan = self.plan
        steps: list[tuple[str, Callable[[], Any]]] = [
            ("createAccount + createSession", self.account),
            ("warm-up", self.warmup),
            (f"createRecord c1 x{plan.create_c1}", lambda: self.create(1, plan.create_c1)),
            (f"createRecord c16 x{plan.create_c16}", lambda: self.create(16, plan.create_c16)),
            (f"getRecord c16 x{plan.get_c16}", self.get_records),
            (f"applyWrites fill to {plan.repo_records} records", self.fill_repo),
            ("getRepo x3", self.get_repo),
            (f"write-to-firehose x{plan.firehose_writes}", self.firehose_latency),
            ("firehose replay from cursor 0", self.replay),
        ]
        for name, step in steps:
            _say(f"{self.label}: {name}")
            t0 = time.perf_counter()
            await step()
            _say(f"{self.label}:   done in {time.perf_counter() - t0:.1f} s")
        return self.r


def _count_car_blocks(data: bytes) -> int:
    """Blocks in a CARv1 (varint-length sections after the header); -1 if malformed."""

    def varint(pos: int) -> tuple[int, int]:
        value = shift = 0
        while True:
            b = data[pos]
            value |= (b & 0x7F) << shift
            pos += 1
            if not b & 0x80:
                return value, pos
            shift += 7

    try:
        n, pos = varint(0)
        pos += n
        count = 0
        while pos < len(data):
            n, pos = varint(pos)
            pos += n
            count += 1
        return count if pos == len(data) else -1
    except IndexError:
        return -1


def measure_server(label: str, child: Child, plan: Plan) -> dict[str, Any]:
    time.sleep(2.0)  # let start-up work settle before reading the idle figure
    idle_rss = proc_status_mb(child.pid, "VmRSS")
    bench = Bench(label, child.url, child.pid, plan)
    result = asyncio.run(bench.run())
    time.sleep(2.0)
    result["mem"] = {
        "idle_start_mb": idle_rss,
        "after_run_mb": proc_status_mb(child.pid, "VmRSS"),
        "peak_mb": proc_status_mb(child.pid, "VmHWM"),
    }
    return result


# -- report ----------------------------------------------------------------------------------------

#: (label, path into the result, unit, digits, higher is better)
METRICS: list[tuple[str, tuple[str, ...], str, int, bool]] = [
    ("createRecord c1 throughput", ("create_c1", "rps"), "req/s", 1, True),
    ("createRecord c1 p50", ("create_c1", "p50_ms"), "ms", 2, False),
    ("createRecord c1 p99", ("create_c1", "p99_ms"), "ms", 2, False),
    ("createRecord c1 server CPU", ("create_c1", "server_cpu_ms"), "ms/req", 2, False),
    ("createRecord c16 throughput", ("create_c16", "rps"), "req/s", 1, True),
    ("createRecord c16 p50", ("create_c16", "p50_ms"), "ms", 2, False),
    ("createRecord c16 p99", ("create_c16", "p99_ms"), "ms", 2, False),
    ("createRecord c16 server CPU", ("create_c16", "server_cpu_ms"), "ms/req", 2, False),
    ("createRecord c16 server CPU use", ("create_c16", "server_cpu_util"), "cores", 2, False),
    ("getRecord c16 throughput", ("get_c16", "rps"), "req/s", 0, True),
    ("getRecord c16 p50", ("get_c16", "p50_ms"), "ms", 2, False),
    ("getRecord c16 p99", ("get_c16", "p99_ms"), "ms", 2, False),
    ("getRecord c16 server CPU", ("get_c16", "server_cpu_ms"), "ms/req", 3, False),
    ("applyWrites fill (200/commit)", ("fill", "records_per_s"), "rec/s", 0, True),
    ("getRepo records", ("get_repo", "records"), "", 0, True),
    ("getRepo CAR size", ("get_repo", "mb"), "MB", 2, False),
    ("getRepo time (best of 3)", ("get_repo", "best_s"), "s", 3, False),
    ("write-to-firehose p50", ("firehose", "p50_ms"), "ms", 2, False),
    ("write-to-firehose p99", ("firehose", "p99_ms"), "ms", 2, False),
    ("firehose replay (cursor 0)", ("replay", "events_per_s"), "ev/s", 0, True),
    ("firehose replay events", ("replay", "events"), "", 0, True),
    ("RSS idle after start", ("mem", "idle_start_mb"), "MB", 1, False),
    ("RSS after the run", ("mem", "after_run_mb"), "MB", 1, False),
    ("RSS peak (VmHWM)", ("mem", "peak_mb"), "MB", 1, False),
]


def _get(result: dict[str, Any] | None, path: tuple[str, ...]) -> float:
    value: Any = result
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return math.nan
        value = value[key]
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _fmt(value: float, digits: int) -> str:
    if math.isnan(value):
        return "-"
    return f"{value:,.{digits}f}"


def print_one(result: dict[str, Any], title: str) -> None:
    print(f"\n== {title} ==")
    for label, path, unit, digits, _ in METRICS:
        print(f"  {label:<34} {_fmt(_get(result, path), digits):>12} {unit}")
    for name in ("create_c1", "create_c16", "get_c16"):
        phase = result.get(name, {})
        if phase.get("errors"):
            print(f"  ! {name}: {phase['errors']} failed requests")
    fh = result.get("firehose", {})
    if fh.get("missed"):
        print(f"  ! write-to-firehose: {fh['missed']} commits never arrived within 5 s")
    rp = result.get("replay", {})
    if rp and not rp.get("complete"):
        print(f"  ! replay stopped before seq {rp.get('target_seq')}")
    gr = result.get("get_repo", {})
    if gr:
        times = ", ".join(f"{t:.3f}" for t in gr.get("times_s", []))
        print(f"  getRepo runs: {times} s; {gr.get('blocks')} blocks in the CAR")
    phases = (
        ("createRecord c16", "create_c16"), ("getRecord c16", "get_c16"), ("replay", "replay")
    )
    uses = [(name, result.get(key, {}).get("client_cpu_util", math.nan)) for name, key in phases]
    print("  load generator CPU use: " + ", ".join(f"{n} {u:.2f} cores" for n, u in uses))
    if rp:
        print(f"  server CPU use during replay: {rp.get('server_cpu_util', math.nan):.2f} cores")


def print_comparison(roost: dict[str, Any], ref: dict[str, Any] | None, ref_name: str) -> None:
    print(f"\n== roost vs reference ({ref_name}) ==")
    print(f"  {'metric':<34} {'roost':>12} {'reference':>12} {'roost/ref':>10}  unit")
    for label, path, unit, digits, _ in METRICS:
        a, b = _get(roost, path), _get(ref, path)
        ratio = a / b if b and not math.isnan(a) and not math.isnan(b) else math.nan
        print(
            f"  {label:<34} {_fmt(a, digits):>12} {_fmt(b, digits):>12} "
            f"{_fmt(ratio, 2) + 'x' if not math.isnan(ratio) else '-':>10}  {unit}"
        )


def targets(roost: dict[str, Any], ref: dict[str, Any] | None) -> list[tuple[str, str, str]]:
    def ratio(path: tuple[str, ...], invert: bool = False) -> float:
        a, b = _get(roost, path), _get(ref, path)
        if math.isnan(a) or math.isnan(b) or a == 0 or b == 0:
            return math.nan
        return b / a if invert else a / b

    rows: list[tuple[str, float, float, str]] = [
        ("createRecord c16 >= 10x reference", ratio(("create_c16", "rps")), 10, "x"),
        ("createRecord c1 >= 5x reference", ratio(("create_c1", "rps")), 5, "x"),
        ("createRecord c16 p99 < 50 ms", _get(roost, ("create_c16", "p99_ms")), 50, "ms"),
        ("getRecord c16 >= 3x reference", ratio(("get_c16", "rps")), 3, "x"),
        ("getRepo >= 10x reference", ratio(("get_repo", "best_s"), invert=True), 10, "x"),
        ("write-to-firehose p99 < 20 ms", _get(roost, ("firehose", "p99_ms")), 20, "ms"),
        ("idle memory < 100 MB", _get(roost, ("mem", "idle_start_mb")), 100, "MB"),
    ]
    out = []
    for name, value, bound, unit in rows:
        if math.isnan(value):
            out.append((name, "-", "n/a (no reference)" if unit == "x" else "n/a"))
            continue
        ok = value >= bound if unit == "x" else value < bound
        shown = f"{value:.2f}x" if unit == "x" else f"{value:.1f} {unit}"
        out.append((name, shown, "MET" if ok else "MISSED"))
    return out


def print_targets(rows: list[tuple[str, str, str]]) -> None:
    print("\n== targets (roost) ==")
    for name, shown, verdict in rows:
        print(f"  {name:<36} {shown:>10}  {verdict}")


# -- main ------------------------------------------------------------------------------------------


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smaller counts (a few minutes)")
    parser.add_argument("--skip-reference", action="store_true", help="measure roost only")
    parser.add_argument("--json", metavar="FILE", help="also write every figure to FILE")
    parser.add_argument("--keep-data", action="store_true", help="keep the temp data dir")
    args = parser.parse_args(argv)

    plan = QUICK if args.quick else FULL
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started ignoring it
    signal.signal(signal.SIGTERM, _raise_interrupt)
    workdir = Path(tempfile.mkdtemp(prefix="roost-bench-pds-"))
    children = Children(workdir)
    results: dict[str, Any] = {"plan": {k: getattr(plan, k) for k in plan.__dataclass_fields__}}
    roost_result: dict[str, Any] | None = None
    ref_result: dict[str, Any] | None = None
    ref_name = "@atproto/pds"
    ref_skip = ""
    try:
        plc = start_plc(children)
        _say(f"PLC directory at {plc.url} (pid {plc.pid}); data in {workdir}")

        pds = start_roost_pds(children, plc.url)
        _say(f"roost PDS at {pds.url} (pid {pds.pid})")
        try:
            roost_result = measure_server("roost", pds, plan)
        finally:
            children.stop(pds)
        print_one(roost_result, f"roost PDS (Python {sys.version.split()[0]})")

        if args.skip_reference:
            ref_skip = "--skip-reference"
        else:
            where, ref_skip = reference_pds_dir()
            if where is not None:
                ref_name = reference_version(where)
                try:
                    ref = start_reference_pds(children, where, plc.url)
                except RuntimeError as exc:
                    ref_skip = f"the reference PDS did not start: {exc}"
                else:
                    _say(f"{ref_name} at {ref.url} (pid {ref.pid})")
                    try:
                        ref_result = measure_server("reference", ref, plan)
                    finally:
                        children.stop(ref)
                    print_one(ref_result, f"reference PDS ({ref_name}, node {_node_version()})")
        if ref_skip:
            print(f"\nreference PDS skipped: {ref_skip}")
        print_comparison(roost_result, ref_result, ref_name)
        rows = targets(roost_result, ref_result)
        print_targets(rows)
        results.update(roost=roost_result, reference=ref_result, reference_skipped=ref_skip)
        results["targets"] = [{"target": n, "value": v, "verdict": s} for n, v, s in rows]
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2, default=str) + "\n")
        return 0
    except KeyboardInterrupt:
        _say("interrupted; stopping servers")
        return 130
    finally:
        children.stop_all()
        if args.keep_data:
            _say(f"data kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def _node_version() -> str:
    try:
        out = subprocess.run(["node", "--version"], capture_output=True, text=True, timeout=30)
        return out.stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "?"


if __name__ == "__main__":
    sys.exit(main())
