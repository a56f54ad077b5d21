"""The relay under load: verified commits/s, consumer latency and memory, N = 1 and N = 50.

Setup (every piece a separate process, all on this machine):

- a roost did:plc directory (``roost plc serve``) holding every simulated account;
- ``--hosts`` simulated PDSes (one child process, one WebSocket server each):
  they serve ``subscribeRepos`` from pre-generated, correctly signed commits
  (k256 keys, sync v1.1 ``prevData`` and covering MST nodes, one record op
  each, mostly creates with some updates and deletes) of ``--dids`` accounts,
  stamping each frame's ``time`` with the wall clock as they send it;
- the relay under test (``roost relay serve``, default options, a fresh data
  directory for each consumer count), told to crawl the simulated hosts;
- N consumers (one child process) on the relay's ``subscribeRepos``. A few of
  them parse every frame and take the latency from the upstream ``time``
  stamp (the relay passes ``time`` through); the others count bytes, which
  must come out equal for everyone.

For each N: a warm-up round (the first commit of every account: the relay
resolves each DID once), then a paced phase at ``--rate`` commits/s for
``--seconds`` (sustained rate, latency p50/p99), then a burst of the rest as
fast as the hosts can push (the relay's ceiling, consumer-side rate). Peak
memory is the relay's ``VmHWM`` plus its verification workers'. CPU columns:
cores the relay used (server process plus workers), its CPU time per event
in each, and cores the load generators used (hosts plus consumers): on a
2-core machine they all share the same two cores. The same run
measures the single-core ceiling of k256 verification with coincurve (plain
``coincurve.PublicKey.verify``) and through roost's key type.

Targets (issue "Relay"): at least 5,000 verified commits/s with 50 consumers,
p99 latency under 250 ms on a 2-core machine.

    python benchmarks/relay.py                       # 1,000 accounts, 5,000/s for 8 s
    python benchmarks/relay.py --quick               # a smaller, faster run
    python benchmarks/relay.py --json results.json
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import json
import math
import multiprocessing
import os
import pickle
import random
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.pds import Children, pct, proc_cpu_s, proc_status_mb, start_plc  # noqa: E402

POST = "app.bsky.feed.post"
#: Every pre-generated frame carries this ``time``; hosts overwrite it in place when sending.
TIME_PLACEHOLDER = b"2000-01-01T00:00:00.000000Z"
TIME_KEY = b"\x64time\x78\x1b"  # "time" then a 27-byte text string, as DAG-CBOR
TARGET_RATE = 5_000.0
TARGET_P99_MS = 250.0
#: Consumers that parse every frame (the rest count bytes).
PARSERS = 5
#: Byte counts of two consumers that got the same events differ by their pings
#: (6 bytes each), far less than one event frame.
CONTROL_SLACK = 600


def _say(msg: str) -> None:
    print(f"[relay-bench] {msg}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Plan:
    dids: int
    commits_per_did: int
    hosts: int
    rate: float
    seconds: float
    consumers: tuple[int, ...]


FULL = Plan(dids=1_000, commits_per_did=70, hosts=4, rate=TARGET_RATE, seconds=8.0, consumers=(1, 50))
QUICK = Plan(dids=500, commits_per_did=50, hosts=2, rate=TARGET_RATE, seconds=3.0, consumers=(1, 50))


# -- 1. the k256 ceiling ------------------------------------------------------------------------


def k256_ceiling(seconds: float = 1.5) -> dict[str, float]:
    """Single-core k256 verifications per second: coincurve itself, and roost's PublicKey."""
    import coincurve

    from roost.crypto import PrivateKey

    keys = [PrivateKey.generate("k256") for _ in range(16)]
    messages = [os.urandom(200) for _ in range(16)]
    signed = [(k.public_key, m, k.sign(m)) for k, m in zip(keys, messages)]
    # coincurve wants DER signatures; sign with it directly for its own loop.
    cc = [coincurve.PrivateKey(k.to_bytes()) for k in keys]
    cc_signed = [(c.public_key, m, c.sign(m)) for c, m in zip(cc, messages)]

    def loop(check: Any, items: Sequence[Any]) -> float:
        count = 0
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            for item in items:
                assert check(item)
            count += len(items)
        return count / (time.perf_counter() - start)

    return {
        "coincurve_verify_per_s": loop(lambda i: i[0].verify(i[2], i[1]), cc_signed),
        "roost_verify_per_s": loop(lambda i: i[0].verify(i[1], i[2]), signed),
    }


# -- 2. pre-generated accounts and commits ------------------------------------------------------


def _record(rng: random.Random, i: int) -> dict[str, Any]:
    words = " ".join(rng.choice(("relay", "firehose", "commit", "roost", "atproto", "sync")) for _ in range(12))
    return {"$type": POST, "text": f"{words} #{i}", "createdAt": "2024-11-18T20:11:09.123Z", "langs": ["en"]}


def generate_account(args: tuple[int, int, str]) -> tuple[str, dict[str, Any], list[bytes]]:
    """One account: its DID, genesis PLC op (JSON) and commit bodies (DAG-CBOR, ``seq`` 0)."""
    from roost import cbor
    from roost.blockstore import MemoryBlockStore
    from roost.crypto import PrivateKey
    from roost.plc import build_genesis, did_for_genesis, sign_op
    from roost.repo import Repo, Write
    from roost.tid import TidClock

    index, commits, endpoint = args
    rng = random.Random(index)
    key = PrivateKey.generate("k256")
    op = sign_op(
        build_genesis(rotation_keys=[key], signing_key=key, handle=None, pds_endpoint=endpoint), key
    )
    did = did_for_genesis(op)
    clock = TidClock(clock_id=index % 1024)
    live: list[str] = []
    bodies: list[bytes] = []
    repo: Repo | None = None
    for n in range(commits):
        roll = rng.random()
        if repo is None or not live or roll < 0.85:
            rkey = clock.next_str()
            write = Write.create(POST, rkey, _record(rng, n))
            live.append(rkey)
        elif roll < 0.95:
            write = Write.update(POST, rng.choice(live), _record(rng, n))
        else:
            rkey = live.pop(rng.randrange(len(live)))
            write = Write.delete(POST, rkey)
        if repo is None:
            repo, data = Repo.create(MemoryBlockStore(), did, key, [write], clock=clock)
        else:
            repo, data = repo.apply_writes([write], key, clock=clock)
        body: dict[str, Any] = {
            "seq": 0,
            "repo": did,
            "rev": data.rev,
            "since": data.since,
            "commit": data.cid,
            "blocks": data.car(),
            "ops": [
                {"action": o.action, "path": o.path, "cid": o.cid, **({"prev": o.prev} if o.prev else {})}
                for o in data.ops
            ],
            "blobs": [],
            "rebase": False,
            "tooBig": False,
            "time": TIME_PLACEHOLDER.decode(),
        }
        if data.prev_data is not None:
            body["prevData"] = data.prev_data
        bodies.append(cbor.encode(body))
    return did, op.to_json(), bodies


def generate(plan: Plan, ports: list[int], workdir: Path) -> tuple[list[tuple[str, dict[str, Any]]], list[Path]]:
    """Every account (DID, genesis op) and one frame file per host (frames by round)."""
    from roost import cbor
    from roost.frames import encode_frame

    jobs = [
        (i, plan.commits_per_did, f"http://127.0.0.1:{ports[i % plan.hosts]}") for i in range(plan.dids)
    ]
    t0 = time.perf_counter()
    with ProcessPoolExecutor(os.cpu_count() or 1, mp_context=multiprocessing.get_context("spawn")) as pool:
        accounts = list(pool.map(generate_account, jobs, chunksize=8))
    _say(f"generated {plan.dids * plan.commits_per_did} commits in {time.perf_counter() - t0:.1f} s")
    files = []
    for h in range(plan.hosts):
        mine = [bodies for i, (_, _, bodies) in enumerate(accounts) if i % plan.hosts == h]
        frames: list[bytes] = []
        for r in range(plan.commits_per_did):  # round r: commit r of every account
            for bodies in mine:
                body = cbor.decode(bodies[r])
                body["seq"] = len(frames) + 1
                frames.append(encode_frame("#commit", body))
        path = workdir / f"host-{h}.frames"
        path.write_bytes(pickle.dumps(frames, protocol=pickle.HIGHEST_PROTOCOL))
        files.append(path)
    return [(did, op) for did, op, _ in accounts], files


async def register_dids(plc_url: str, accounts: list[tuple[str, dict[str, Any]]]) -> None:
    import httpx

    gate = asyncio.Semaphore(16)
    async with httpx.AsyncClient(timeout=30) as http:

        async def one(did: str, op: dict[str, Any]) -> None:
            async with gate:
                r = await http.post(f"{plc_url}/{did}", json=op)
                if r.status_code != 200:
                    raise RuntimeError(f"PLC refused {did}: {r.status_code} {r.text[:200]}")

        await asyncio.gather(*(one(did, op) for did, op in accounts))


# -- WebSocket framing for the simulated hosts and consumers ------------------------------------


def _ws_header(length: int, *, masked: bool = False, opcode: int = 0x2) -> bytes:
    first = 0x80 | opcode
    mask = 0x80 if masked else 0
    if length < 126:
        return bytes((first, mask | length))
    if length < 65_536:
        return bytes((first, mask | 126)) + length.to_bytes(2, "big")
    return bytes((first, mask | 127)) + length.to_bytes(8, "big")


def _parse_frames(buf: bytearray) -> tuple[list[tuple[int, bytes]], int]:
    """Complete frames at the start of ``buf``: [(opcode, payload)], bytes used (unmasks)."""
    out = []
    pos = 0
    n = len(buf)
    while n - pos >= 2:
        b0, b1 = buf[pos], buf[pos + 1]
        length = b1 & 0x7F
        head = 2
        if length == 126:
            if n - pos < 4:
                break
            length = int.from_bytes(buf[pos + 2 : pos + 4], "big")
            head = 4
        elif length == 127:
            if n - pos < 10:
                break
            length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
            head = 10
        mask = b""
        if b1 & 0x80:
            mask = bytes(buf[pos + head : pos + head + 4])
            head += 4
        if n - pos < head + length:
            break
        payload = bytes(buf[pos + head : pos + head + length])
        if mask:
            payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        out.append((b0 & 0x0F, payload))
        pos += head + length
    return out, pos


def _accept_key(key: str) -> str:
    digest = hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()
    return base64.b64encode(digest).decode()


# -- 3. simulated hosts (child process) ----------------------------------------------------------


class _SimHost:
    def __init__(self, index: int, frames: list[bytes]) -> None:
        self.index = index
        self.frames = frames
        self.offsets = [f.find(TIME_KEY + TIME_PLACEHOLDER) + len(TIME_KEY) for f in frames]
        assert all(o >= len(TIME_KEY) for o in self.offsets), "a frame without the time stamp"
        self.writer: asyncio.StreamWriter | None = None
        self.position = 0
        self.connections = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        path = lines[0].split(" ")[1]
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
        if path.startswith("/xrpc/com.atproto.server.describeServer"):
            body = json.dumps({"did": "did:web:sim.test", "availableUserDomains": []}).encode()
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode() + body
            )
            await writer.drain()
            writer.close()
            return
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            + f"Sec-WebSocket-Accept: {_accept_key(headers['sec-websocket-key'])}\r\n\r\n".encode()
        )
        self.writer = writer
        self.position = 0
        self.connections += 1
        buf = bytearray()
        try:
            while True:
                data = await reader.read(65_536)
                if not data:
                    break
                buf += data
                frames, used = _parse_frames(buf)
                del buf[:used]
                for opcode, payload in frames:
                    if opcode == 0x9:  # ping -> pong
                        writer.write(_ws_header(len(payload), opcode=0xA) + payload)
                    elif opcode == 0x8:
                        writer.write(_ws_header(len(payload), opcode=0x8) + payload)
                        return
        finally:
            if self.writer is writer:
                self.writer = None
            writer.close()

    async def send(self, count: int, rate: float) -> int:
        """Send the next ``count`` frames at ``rate``/s (0: as fast as the socket drains)."""
        writer = self.writer
        if writer is None:
            return 0
        end = min(len(self.frames), self.position + count)
        start_pos = self.position
        start = time.perf_counter()
        while self.position < end:
            if rate > 0:
                due = start_pos + int((time.perf_counter() - start) * rate) + 1
                upto = min(end, due)
            else:
                upto = min(end, self.position + 256)
            parts = []
            stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ").encode()
            for i in range(self.position, upto):
                frame, off = self.frames[i], self.offsets[i]
                parts.append(_ws_header(len(frame)))
                parts.append(frame[:off])
                parts.append(stamp)
                parts.append(frame[off + len(stamp) :])
            self.position = upto
            if parts:
                writer.write(b"".join(parts))
                await writer.drain()
            if rate > 0:
                await asyncio.sleep(0.004)
        return self.position - start_pos


def host_sim_main(conn: Any, ports: list[int], files: list[str]) -> None:
    async def main() -> None:
        hosts = [_SimHost(i, pickle.loads(Path(f).read_bytes())) for i, f in enumerate(files)]
        servers = [await asyncio.start_server(h.handle, "127.0.0.1", p) for h, p in zip(hosts, ports)]
        loop = asyncio.get_running_loop()
        conn.send(("ready", [len(h.frames) for h in hosts]))
        while True:
            command = await loop.run_in_executor(None, conn.recv)
            if command[0] == "stop":
                break
            if command[0] == "connections":
                conn.send([h.connections if h.writer is not None else 0 for h in hosts])
            elif command[0] == "send":
                _, per_host, rate = command
                t0 = time.time()
                sent = await asyncio.gather(*(h.send(per_host, rate / len(hosts)) for h in hosts))
                conn.send(("sent", sent, t0, time.time()))
        for s in servers:
            s.close()

    asyncio.run(main())


# -- 4. consumers (child process) ----------------------------------------------------------------


def _parse_time(text: bytes, cache: dict[bytes, float]) -> float:
    minute = text[:16]
    base = cache.get(minute)
    if base is None:
        base = cache[minute] = datetime.strptime(minute.decode(), "%Y-%m-%dT%H:%M").replace(tzinfo=UTC).timestamp()
    return base + int(text[17:19]) + int(text[20:26]) / 1e6


class _Consumer(asyncio.Protocol):
    def __init__(self, parse: bool, ready: asyncio.Future[None], request: bytes) -> None:
        self.parse = parse
        self.ready = ready
        self.request = request
        self.buf = bytearray()
        self.upgraded = False
        self.frames = 0
        self.bytes = 0
        self.latencies: list[float] = []
        self.last_at = 0.0
        self.first_at = 0.0
        self.cache: dict[bytes, float] = {}
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.tail = b""

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        transport.write(self.request)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.ready.done():
            self.ready.set_exception(ConnectionError("closed before the upgrade"))

    def _answer_pings(self, data: bytes) -> None:
        """Byte counters do not walk frames: they answer anything that looks like a ping.

        uvicorn pings with a 4-byte payload (``89 04``). A false match in frame
        data only sends an unsolicited pong, which the server ignores.
        """
        window = self.tail + data
        at = window.find(b"\x89\x04")
        while at >= 0:
            payload = window[at + 2 : at + 6]
            if len(payload) < 4:
                break
            if self.transport is not None:
                self.transport.write(_ws_header(4, masked=True, opcode=0xA) + b"\0\0\0\0" + payload)
            at = window.find(b"\x89\x04", at + 2)
        self.tail = window[-5:]

    def reset(self) -> None:
        self.frames = self.bytes = 0
        self.latencies = []
        self.first_at = self.last_at = 0.0

    def data_received(self, data: bytes) -> None:
        now = time.time()
        if not self.upgraded:
            self.buf += data
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            if not self.buf.startswith(b"HTTP/1.1 101"):
                self.ready.set_exception(ConnectionError(self.buf[:200].decode("latin-1")))
                return
            data = bytes(self.buf[end + 4 :])
            self.buf = bytearray()
            self.upgraded = True
            self.ready.set_result(None)
        self.bytes += len(data)
        if not self.first_at:
            self.first_at = now
        self.last_at = now
        if not self.parse:
            self._answer_pings(data)
            return
        self.buf += data
        buf = self.buf
        pos = 0
        n = len(buf)
        while n - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            length = b1 & 0x7F
            head = 2
            if length == 126:
                if n - pos < 4:
                    break
                length = (buf[pos + 2] << 8) | buf[pos + 3]
                head = 4
            elif length == 127:
                if n - pos < 10:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                head = 10
            if n - pos < head + length:
                break
            opcode = b0 & 0x0F
            start = pos + head
            if opcode == 0x2:
                self.frames += 1
                if self.parse:
                    at = buf.find(TIME_KEY, start, start + length)
                    if at >= 0:
                        stamp = bytes(buf[at + 7 : at + 34])
                        self.latencies.append(now - _parse_time(stamp, self.cache))
            elif opcode == 0x9 and self.transport is not None:  # ping: answer a masked pong
                payload = bytes(buf[start : start + length])
                self.transport.write(_ws_header(len(payload), masked=True, opcode=0xA) + b"\0\0\0\0" + payload)
            pos = start + length
        del buf[:pos]


def consumers_main(conn: Any, host: str, port: int, count: int) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            f"GET /xrpc/com.atproto.sync.subscribeRepos HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\nUser-Agent: roost-relay-bench\r\n\r\n"
        ).encode()
        parsers = {round(i * (count - 1) / max(1, PARSERS - 1)) for i in range(PARSERS)} if count > 1 else {0}
        consumers = []
        for i in range(count):
            ready: asyncio.Future[None] = loop.create_future()
            _, proto = await loop.create_connection(
                lambda: _Consumer(i in parsers, ready, request), host, port
            )
            await ready
            consumers.append(proto)
        conn.send(("ready", sorted(parsers)))
        while True:
            command = await loop.run_in_executor(None, conn.recv)
            if command[0] == "stop":
                break
            if command[0] == "reset":
                for c in consumers:
                    c.reset()
                conn.send("ok")
            elif command[0] == "progress":
                sizes = [c.bytes for c in consumers if not c.closed]
                conn.send((consumers[0].frames, min(sizes, default=-1), max(sizes, default=-1)))
            elif command[0] == "stats":
                conn.send(
                    [
                        {
                            "parse": c.parse,
                            "frames": c.frames,
                            "bytes": c.bytes,
                            "latencies": c.latencies,
                            "first_at": c.first_at,
                            "last_at": c.last_at,
                            "closed": c.closed,
                        }
                        for c in consumers
                    ]
                )
        for c in consumers:
            if c.transport is not None:
                c.transport.close()

    asyncio.run(main())


# -- 5. the driver --------------------------------------------------------------------------------


def _free_ports(n: int) -> list[int]:
    import socket

    socks = []
    ports = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def _relay_memory_mb(pid: int) -> tuple[float, float]:
    """(relay VmHWM, relay + verification workers VmHWM) in MB."""
    main = proc_status_mb(pid, "VmHWM")
    total = main
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii") as f:
                ppid = int(f.read().rpartition(")")[2].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == pid:
            value = proc_status_mb(int(entry), "VmHWM")
            if not math.isnan(value):
                total += value
    return main, total


def _relay_cpu_s(pid: int) -> tuple[float, float]:
    """CPU seconds of the relay process, and of its verification workers."""
    workers = 0.0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", encoding="ascii") as f:
                    ppid = int(f.read().rpartition(")")[2].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if ppid == pid:
                workers += proc_cpu_s(int(entry))
    return proc_cpu_s(pid), workers


def _wait(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)


def run_phase(
    n: int,
    plan: Plan,
    children: Children,
    plc_url: str,
    ports: list[int],
    hosts_conn: Any,
    hosts_pid: int,
    per_host_total: list[int],
) -> dict[str, Any]:
    import httpx

    env = dict(os.environ)
    env.update(
        ROOST_DATA_DIR=str(children.workdir / f"relay-{n}"),
        ROOST_PLC_URL=plc_url,
        ROOST_ALLOW_LOCAL="1",
        ROOST_CRAWL=",".join(f"http://127.0.0.1:{p}" for p in ports),
        ROOST_TRUSTED_HOSTS="127.0.0.1:*",
        ROOST_ADMIN_PASSWORD="bench",
        PYTHONPATH=str(REPO_ROOT),
    )
    relay = children.start(f"relay-{n}", [sys.executable, "-m", "roost.cli", "relay", "serve", "--port", "0"], env)
    port = int(relay.url.rsplit(":", 1)[1])

    def connected() -> bool:
        hosts_conn.send(("connections",))
        return all(c > 0 for c in hosts_conn.recv())

    _wait(connected, 30, "the relay to subscribe to every host")
    cons_parent, cons_child = multiprocessing.get_context("spawn").Pipe()
    consumer_proc = multiprocessing.get_context("spawn").Process(
        target=consumers_main, args=(cons_child, "127.0.0.1", port, n), daemon=True
    )
    consumer_proc.start()
    try:
        cons_parent.recv()  # ("ready", parser indexes)
        per_host_dids = [len(range(h, plan.dids, plan.hosts)) for h in range(plan.hosts)]

        def send(per_host: int, rate: float) -> tuple[float, float]:
            hosts_conn.send(("send", per_host, rate))
            _, sent, t0, t1 = hosts_conn.recv()
            return t0, t1

        def delivered(expected: int, timeout: float) -> None:
            def first_done() -> bool:
                cons_parent.send(("progress",))
                return bool(cons_parent.recv()[0] >= expected)

            def all_done() -> bool:  # the others have caught up with the first
                cons_parent.send(("progress",))
                frames, low, high = cons_parent.recv()
                return bool(high - low < CONTROL_SLACK)

            try:
                _wait(first_done, timeout, f"{expected} events at the consumers")
                with contextlib.suppress(RuntimeError):  # a dropped consumer shows in the stats
                    _wait(all_done, 60, "every consumer to catch up")
            except RuntimeError:
                with contextlib.suppress(Exception):
                    listing = httpx.get(f"{relay.url}/admin/pds/list", auth=("admin", "bench"), timeout=10)
                    _say(f"relay hosts: {listing.text[:3000]}")
                raise

        def reset() -> None:
            cons_parent.send(("reset",))
            cons_parent.recv()

        def stats() -> list[dict[str, Any]]:
            cons_parent.send(("stats",))
            rows: list[dict[str, Any]] = cons_parent.recv()
            return rows

        # warm-up: one commit per account (each DID resolved once)
        warm = max(per_host_dids)
        send(warm, 0)
        delivered(plan.dids, 120)
        reset()

        # paced
        paced_per_host = int(plan.rate * plan.seconds / plan.hosts)
        cpu0 = _relay_cpu_s(relay.pid)
        load0 = proc_cpu_s(consumer_proc.pid or 0) + proc_cpu_s(hosts_pid)
        t_send0, t_send1 = send(paced_per_host, plan.rate)
        delivered(paced_per_host * plan.hosts, plan.seconds + 60)
        cpu1 = _relay_cpu_s(relay.pid)
        cpu_paced = (cpu1[0] - cpu0[0], cpu1[1] - cpu0[1])
        load_paced = proc_cpu_s(consumer_proc.pid or 0) + proc_cpu_s(hosts_pid) - load0
        paced = stats()
        reset()

        # burst: the rest, unpaced
        burst_per_host = min(per_host_total) - warm - paced_per_host
        cpu0 = _relay_cpu_s(relay.pid)
        load0 = proc_cpu_s(consumer_proc.pid or 0) + proc_cpu_s(hosts_pid)
        b_send0, b_send1 = send(burst_per_host, 0)
        delivered(burst_per_host * plan.hosts, 300)
        cpu1 = _relay_cpu_s(relay.pid)
        cpu_burst = (cpu1[0] - cpu0[0], cpu1[1] - cpu0[1])
        load_burst = proc_cpu_s(consumer_proc.pid or 0) + proc_cpu_s(hosts_pid) - load0
        burst = stats()

        mem_main, mem_total = _relay_memory_mb(relay.pid)
        counters = httpx.get(f"{relay.url}/admin/pds/list", auth=("admin", "bench"), timeout=10).json()
        fanout = httpx.get(f"{relay.url}/admin/consumers/list", auth=("admin", "bench"), timeout=10).json()
    finally:
        with contextlib.suppress(Exception):
            cons_parent.send(("stop",))
        consumer_proc.join(10)
        if consumer_proc.is_alive():
            consumer_proc.kill()
        children.stop(relay)

    def summarise(rows: list[dict[str, Any]], t_send0: float, expected: int) -> dict[str, Any]:
        lat = sorted(x for r in rows if r["parse"] for x in r["latencies"])
        first = rows[0]
        span = max(1e-9, first["last_at"] - t_send0)
        complete = sum(
            1 for r in rows if abs(r["bytes"] - first["bytes"]) < CONTROL_SLACK and not r["closed"]
        )
        return {
            "consumers_complete": complete,
            "events": first["frames"],
            "expected": expected,
            "rate": first["frames"] / span,
            "p50_ms": pct(lat, 0.50) * 1000,
            "p99_ms": pct(lat, 0.99) * 1000,
            "max_ms": (lat[-1] * 1000) if lat else math.nan,
            "all_consumers_equal": complete == len(rows),
        }

    invalid: dict[str, int] = {}
    for host in counters["hosts"]:
        for name, value in host["counters"].items():
            if not name.startswith(("accepted", "connects")):
                invalid[name] = invalid.get(name, 0) + value
    return {
        "consumers": n,
        "paced": {**summarise(paced, t_send0, paced_per_host * plan.hosts), "offered_rate": plan.rate,
                  **_cpu(cpu_paced, paced[0]["last_at"] - t_send0, paced[0]["frames"]),
                  "load_cpu_s_per_s": load_paced / max(1e-9, paced[0]["last_at"] - t_send0)},
        "burst": {**summarise(burst, b_send0, burst_per_host * plan.hosts),
                  **_cpu(cpu_burst, burst[0]["last_at"] - b_send0, burst[0]["frames"]),
                  "load_cpu_s_per_s": load_burst / max(1e-9, burst[0]["last_at"] - b_send0)},
        "sent_back_to_replay": fanout["sentBackToReplay"],
        "dropped_too_slow": fanout["droppedTooSlow"],
        "peak_rss_mb": mem_main,
        "peak_rss_with_workers_mb": mem_total,
        "drops": invalid,
    }


def _cpu(cpu: tuple[float, float], seconds: float, events: int) -> dict[str, float]:
    """The relay's CPU use: cores busy, and microseconds per event (server process, workers)."""
    per = 1e6 / max(1, events)
    return {
        "relay_cpu_s_per_s": (cpu[0] + cpu[1]) / max(1e-9, seconds),
        "server_us_per_event": cpu[0] * per,
        "workers_us_per_event": cpu[1] * per,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--dids", type=int)
    parser.add_argument("--commits-per-did", type=int)
    parser.add_argument("--hosts", type=int)
    parser.add_argument("--rate", type=float)
    parser.add_argument("--seconds", type=float)
    parser.add_argument("--consumers", help="comma-separated consumer counts (default 1,50)")
    parser.add_argument("--json", help="also write the results here")
    from benchmarks.relay_frontends import add_arguments as add_frontend_arguments

    add_frontend_arguments(parser)  # --database, --frontends: the PostgreSQL frontends mode
    args = parser.parse_args(argv)
    if args.frontends or args.database:
        from benchmarks.relay_frontends import run as run_frontends

        return run_frontends(args)
    base = QUICK if args.quick else FULL
    plan = Plan(
        dids=args.dids or base.dids,
        commits_per_did=args.commits_per_did or base.commits_per_did,
        hosts=args.hosts or base.hosts,
        rate=args.rate or base.rate,
        seconds=args.seconds or base.seconds,
        consumers=tuple(int(x) for x in args.consumers.split(",")) if args.consumers else base.consumers,
    )
    needed = plan.rate * plan.seconds / plan.dids + 2
    if plan.commits_per_did < needed:
        parser.error(f"--commits-per-did must be at least {math.ceil(needed)} for this rate and duration")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    _say(f"plan: {asdict(plan)}")
    results: dict[str, Any] = {"plan": asdict(plan), "cpus": os.cpu_count()}
    results["k256"] = k256_ceiling()
    _say(f"k256 single core: {results['k256']}")
    workdir = Path(tempfile.mkdtemp(prefix="roost-relay-bench-"))
    children = Children(workdir)
    hosts_proc = None
    try:
        plc = start_plc(children)
        ports = _free_ports(plan.hosts)
        accounts, files = generate(plan, ports, workdir)
        asyncio.run(register_dids(plc.url, accounts))
        _say(f"registered {len(accounts)} DIDs")
        ctx = multiprocessing.get_context("spawn")
        hosts_conn, child_conn = ctx.Pipe()
        hosts_proc = ctx.Process(
            target=host_sim_main, args=(child_conn, ports, [str(f) for f in files]), daemon=True
        )
        hosts_proc.start()
        _, per_host_total = hosts_conn.recv()
        results["frame_bytes_avg"] = sum(Path(f).stat().st_size for f in files) / (plan.dids * plan.commits_per_did)
        results["runs"] = []
        for n in plan.consumers:
            _say(f"run with {n} consumer(s)")
            run = run_phase(n, plan, children, plc.url, ports, hosts_conn, hosts_proc.pid or 0, per_host_total)
            results["runs"].append(run)
            _say(json.dumps(run))
    finally:
        if hosts_proc is not None:
            with contextlib.suppress(Exception):
                hosts_conn.send(("stop",))
            hosts_proc.join(5)
            if hosts_proc.is_alive():
                hosts_proc.kill()
        children.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
    print_table(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


def print_table(results: dict[str, Any]) -> None:
    k = results["k256"]
    plan = results["plan"]
    print()
    print(f"relay benchmark: {plan['dids']} accounts on {plan['hosts']} hosts, "
          f"{results['cpus']} CPUs, ~{results['frame_bytes_avg']:.0f} B per frame")
    print(f"k256 verify, one core: coincurve {k['coincurve_verify_per_s']:,.0f}/s, "
          f"roost PublicKey {k['roost_verify_per_s']:,.0f}/s")
    header = (
        f"{'consumers':>9} | {'phase':<17} | {'commits/s':>9} | {'p50 ms':>7} | {'p99 ms':>7} | "
        f"{'relay CPU':>9} | {'us/event srv+wrk':>16} | {'load CPU':>8} | {'peak MB':>8} | ok"
    )
    print(header)
    print("-" * len(header))
    for run in results["runs"]:
        for phase, label in (("paced", f"paced {plan['rate']:.0f}/s"), ("burst", "burst (ceiling)")):
            p = run[phase]
            ok = p["all_consumers_equal"] and p["events"] == p["expected"]
            print(
                f"{run['consumers']:>9} | {label:<17} | {p['rate']:>9,.0f} | {p['p50_ms']:>7.1f} | "
                f"{p['p99_ms']:>7.1f} | {p['relay_cpu_s_per_s']:>8.2f}c | "
                f"{p['server_us_per_event']:>7.0f} + {p['workers_us_per_event']:>6.0f} | "
                f"{p['load_cpu_s_per_s']:>7.2f}c | "
                f"{run['peak_rss_with_workers_mb']:>8.0f} | {'yes' if ok else 'NO'}"
            )
        print(
            f"{'':>9}   consumers complete: paced {run['paced']['consumers_complete']}/{run['consumers']}, "
            f"burst {run['burst']['consumers_complete']}/{run['consumers']}; sent back to replay "
            f"{run['sent_back_to_replay']}, dropped {run['dropped_too_slow']}"
        )
        if run["drops"]:
            print(f"{'':>9}   relay drop counters: {run['drops']}")
    last = results["runs"][-1]
    print()
    print(
        f"target: >= {TARGET_RATE:,.0f} commits/s with 50 consumers, p99 < {TARGET_P99_MS:.0f} ms -> "
        f"sustained {last['paced']['rate']:,.0f}/s ({last['paced']['rate'] / TARGET_RATE:.2f}x), "
        f"ceiling {last['burst']['rate']:,.0f}/s ({last['burst']['rate'] / TARGET_RATE:.2f}x), "
        f"p99 {last['paced']['p99_ms']:.0f} ms ({TARGET_P99_MS / max(1e-9, last['paced']['p99_ms']):.2f}x headroom)"
    )


if __name__ == "__main__":
    sys.exit(main())
