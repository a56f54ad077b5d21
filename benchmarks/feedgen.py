"""The feed generator: indexing throughput, and getFeedSkeleton against a bare Starlette route.

Indexing. A firehose is recorded once (real signed commits of a few hundred
accounts built with ``roost.repo``: posts, likes, reposts, follows, blocks,
deletes and some records of other collections, in the proportions of the
Bluesky network, likes first), then indexed twice into a fresh index:

- *in process*: ``roost.firehose.FirehoseDecoder`` (filters, CAR, records),
  the indexer's event mapping, ``SqliteIndex.apply`` in batches with the
  cursor, one thread;
- *over a WebSocket*: a replay server in a child process serves the recording
  as ``subscribeRepos``; the real indexer (``feedgen.indexer.Indexer`` over
  ``roost.firehose.subscribe``) reads it until its stored cursor reaches the
  last seq.

Serving. An index of at least 1,000,000 posts by 50,000 authors over three
days (plus likes, reposts, and the follows of 1,000 requesters, each following
120-300 accounts, 60 of them among the 2,000 most prolific authors) is built
through the storage API and kept between runs (later schema migrations upgrade
it in place). The requesters are kept readers of their following feed (as the
server keeps whoever reads it), so their pages come from their timelines. One
server process (``roost.server.run``, the settings every roost service uses)
serves the feed generator app (``latest``, ``whats-hot``, ``following``) and a
bare Starlette JSON route. A load generator in another process keeps N
keep-alive HTTP/1.1 connections busy; each connection reads a feed the way a
client scrolls, five pages of 50 following the cursor, then starts over.

``following`` is read by one requester per scroll (chosen at random), each
request signed by that requester (ES256K service JWTs minted before the round,
checked by the server: signature, aud, lxm, iat, exp):

- ``following``: a fresh token for every page, as the network sends them (the
  requester's PDS mints one per ``getFeed``, passed on by the AppView), so
  every request pays the full check;
- ``following-session``: one token per scroll, as a client that keeps a token
  from ``getServiceAuth`` for its pages sends them; the server checks it in
  full once and remembers it (:mod:`feedgen.auth`).

The server runs without ``jti`` replay protection (as the reference feed
generator does), or a token used twice would be refused; with it on, the
``following`` row costs one dictionary insert more per request.
``latest`` and ``whats-hot`` answer the same to everyone, so the server's page
cache (1 s) serves repeated pages; they are measured again with the cache off
(``*-uncached``). Rounds alternate between routes; the median round is
reported.

Targets: indexing >= 10,000 events/s; getFeedSkeleton >= 50% of the bare
route's requests/s with p99 < 20 ms at concurrency 16.

    python benchmarks/feedgen.py [--posts 1000000] [--events 40000] [--seconds 5]
                                 [--rounds 3] [--connections 16] [--cache DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import hashlib
import json
import os
import random
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.xrpc import read_response  # noqa: E402

SKELETON = "app.bsky.feed.getFeedSkeleton"
PUBLISHER = "did:plc:benchpublisher0000000000"
FEEDS = ("latest", "whats-hot", "following")
#: ``following`` again, one token per scroll instead of one per page (see the docstring).
SESSION = "following-session"
#: The shared feeds again, with their page cache off (every request runs the algorithm).
UNCACHED = ("latest-uncached", "whats-hot-uncached")
PAGES_PER_SCROLL = 5
PAGE = 50
VIEWERS = 1_000
_SEED = 2024
_WORDS = ("the a cat dog rust python feed roost sky blue green hello world news today "
          "music art code coffee rain sun moon train book film").split()


def _did(prefix: str, n: int) -> str:
    return "did:plc:" + hashlib.sha256(f"{prefix}{n}".encode()).hexdigest()[:24]


def _cid(*parts: object) -> bytes:
    """A well-formed dag-cbor CID for synthetic rows (no record behind it)."""
    return b"\x01\x71\x12\x20" + hashlib.sha256(repr(parts).encode()).digest()


def viewer_key(n: int) -> Any:
    from roost.crypto import PrivateKey

    return PrivateKey.from_hex(hashlib.sha256(f"viewer-key-{n}".encode()).hexdigest(), "k256")


def _now_iso(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms / 1000)) + f".{ms % 1000:03d}Z"


# -- a recorded firehose ------------------------------------------------------------------


def record_firehose(path: Path, events: int, accounts: int = 400) -> None:
    """Write ``events`` ``#commit`` frames (length-prefixed) of real signed commits."""
    from roost.blockstore import MemoryBlockStore
    from roost.crypto import PrivateKey
    from roost.frames import encode_frame
    from roost.repo import Repo, Write
    from roost.tid import TidClock

    rng = random.Random(_SEED)
    clock = TidClock()
    dids = [_did("firehose", n) for n in range(accounts)]
    keys = [PrivateKey.from_hex(hashlib.sha256(d.encode()).hexdigest(), "k256") for d in dids]
    repos = [Repo.create(MemoryBlockStore(), d, k, [], clock=clock)[0] for d, k in zip(dids, keys)]
    posts: list[tuple[str, str]] = []  # (uri, cid)
    written: list[list[tuple[str, str]]] = [[] for _ in dids]  # (collection, rkey) per account
    base_ms = int(time.time() * 1000) - 3_600_000
    with path.open("wb") as out:
        for seq in range(1, events + 1):
            n = rng.randrange(accounts)
            did, key, repo = dids[n], keys[n], repos[n]
            ms = base_ms + seq * 50
            roll = rng.random()
            rkey = clock.next_str()
            created = _now_iso(ms)
            if roll < 0.20 or not posts:
                collection = "app.bsky.feed.post"
                text = " ".join(rng.choices(_WORDS, k=rng.randrange(3, 15)))
                record: dict[str, Any] = {"$type": collection, "text": text, "createdAt": created,
                                          "langs": ["en" if rng.random() < 0.7 else "ja"]}
                if rng.random() < 0.1:
                    record["text"] += " #roost"
                    start = len(text.encode()) + 1
                    record["facets"] = [{"index": {"byteStart": start, "byteEnd": start + 6},
                                         "features": [{"$type": "app.bsky.richtext.facet#tag",
                                                       "tag": "roost"}]}]
                if rng.random() < 0.15:
                    parent = {"uri": posts[-1][0], "cid": posts[-1][1]}
                    record["reply"] = {"root": parent, "parent": parent}
                write = Write.create(collection, rkey, record)
            elif roll < 0.78:
                collection = "app.bsky.feed.like" if roll < 0.70 else "app.bsky.feed.repost"
                uri, cid = posts[max(0, len(posts) - 1 - int(rng.expovariate(1 / 300)))]
                write = Write.create(collection, rkey, {"$type": collection, "createdAt": created,
                                                        "subject": {"uri": uri, "cid": cid}})
            elif roll < 0.89:
                collection = "app.bsky.graph.follow" if roll < 0.88 else "app.bsky.graph.block"
                write = Write.create(collection, rkey, {"$type": collection, "createdAt": created,
                                                        "subject": rng.choice(dids)})
            elif roll < 0.93 and written[n]:
                collection, rkey = written[n].pop(rng.randrange(len(written[n])))
                write = Write.delete(collection, rkey)
            else:
                collection = "app.bsky.actor.status"  # not indexed: filtered before decoding
                write = Write.create(collection, rkey, {"$type": collection, "createdAt": created,
                                                        "status": "online"})
            repo, data = repo.apply_writes([write], key, clock=clock)
            repos[n] = repo
            if write.action == "create":
                written[n].append((collection, rkey))
                if collection == "app.bsky.feed.post":
                    cid = str(next(op.cid for op in data.ops))
                    posts.append((f"at://{did}/{collection}/{rkey}", cid))
            body: dict[str, Any] = {
                "seq": seq, "rebase": False, "tooBig": False, "repo": did, "commit": data.cid,
                "rev": data.rev, "since": data.since, "blocks": data.car(),
                "ops": [{"action": op.action, "path": op.path, "cid": op.cid,
                         **({"prev": op.prev} if op.prev else {})} for op in data.ops],
                "blobs": [], "time": _now_iso(ms),
            }
            if data.prev_data is not None:
                body["prevData"] = data.prev_data
            frame = encode_frame("#commit", body)
            out.write(struct.pack(">I", len(frame)) + frame)


def read_recording(path: Path) -> list[bytes]:
    data = path.read_bytes()
    frames, pos = [], 0
    while pos < len(data):
        (size,) = struct.unpack_from(">I", data, pos)
        frames.append(data[pos + 4 : pos + 4 + size])
        pos += 4 + size
    return frames


def replay_main(path: str) -> None:
    """A subscribeRepos server replaying the recording after the client's cursor."""
    from starlette.applications import Starlette
    from starlette.routing import WebSocketRoute
    from starlette.websockets import WebSocket, WebSocketDisconnect

    from roost.server import run

    frames = read_recording(Path(path))

    async def subscribe(ws: WebSocket) -> None:
        await ws.accept()
        cursor = int(ws.query_params.get("cursor") or 0)
        try:
            for frame in frames[cursor:]:
                await ws.send_bytes(frame)
            while True:
                await ws.receive_bytes()
        except WebSocketDisconnect:
            return

    app = Starlette(routes=[WebSocketRoute("/xrpc/com.atproto.sync.subscribeRepos", subscribe)])
    run(app, "127.0.0.1", 0, name="replay", log_level="warning")


def index_in_process(frames: list[bytes], db: Path) -> dict[str, float]:
    """Decode, map and store every frame in this thread; events/s and the share of each step."""
    from feedgen.indexer import Indexer
    from feedgen.records import INDEXED_COLLECTIONS
    from feedgen.storage import open_store
    from roost.firehose import FirehoseDecoder

    store = open_store(db, fulltext=False)
    indexer = Indexer(store, "ws://recording")
    decoder = FirehoseDecoder(collections=INDEXED_COLLECTIONS)
    decode_s = map_s = store_s = 0.0
    batch: list[Any] = []
    last = 0
    start = time.perf_counter()
    for n, frame in enumerate(frames, 1):
        t0 = time.perf_counter()
        event = decoder.decode(frame)
        t1 = time.perf_counter()
        if event is not None:
            batch.extend(indexer.ops_for(event))
            last = event.seq or last
        t2 = time.perf_counter()
        decode_s += t1 - t0
        map_s += t2 - t1
        if n % 2_000 == 0 or n == len(frames):
            store.apply(batch, cursor=(indexer.service, last))
            batch = []
            store_s += time.perf_counter() - t2
    total = time.perf_counter() - start
    counts = store.counts()
    store.close()
    return {"events": len(frames), "seconds": total, "rate": len(frames) / total,
            "decode": decode_s / total, "map": map_s / total, "store": store_s / total,
            "rows": sum(counts.values())}


async def index_over_websocket(recording: Path, frames: int, db: Path) -> dict[str, float]:
    from feedgen.indexer import Indexer
    from feedgen.storage import open_store

    replay = _python("replay", str(recording), stdout=subprocess.PIPE)
    try:
        url = _ready_url(replay)
        store = open_store(db, fulltext=False)
        indexer = Indexer(store, url, start_cursor=0, batch_size=2_000, batch_delay=0.1,
                          allow_local=True)
        start = time.perf_counter()
        task = asyncio.create_task(indexer.run())
        while indexer.saved_cursor != frames:  # (the store's lock belongs to the writer)
            if task.done():
                task.result()
                raise RuntimeError("the indexer stopped")
            await asyncio.sleep(0.01)
        elapsed = time.perf_counter() - start
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        store.close()
    finally:
        replay.terminate()
        replay.wait(timeout=20)
    return {"events": frames, "seconds": elapsed, "rate": frames / elapsed}


# -- the big index --------------------------------------------------------------------------


def build_index(db: Path, posts: int) -> dict[str, int]:
    """``posts`` posts over three days by 50,000 authors, likes, reposts, and 1,000 readers'
    follows, written through ``SqliteIndex.apply``."""
    from feedgen.storage import FollowRow, LikeRow, PostRow, RepostRow, open_store

    rng = random.Random(_SEED)
    store = open_store(db, fulltext=False)
    now = int(time.time() * 1000)
    authors = [_did("author", n) for n in range(50_000)]
    prolific = authors[:2_000]
    recent: list[str] = []
    batch: list[Any] = []
    counts = {"posts": 0, "likes": 0, "reposts": 0, "follows": 0}

    def flush(force: bool = False) -> None:
        nonlocal batch
        if batch and (force or len(batch) >= 20_000):
            store.apply(batch)
            batch = []

    span = 3 * 86_400_000
    for n in range(posts):
        author = rng.choice(prolific) if rng.random() < 0.4 else rng.choice(authors)
        at = now - span + int(span * n / posts)  # written in time order, as a firehose would
        uri = f"at://{author}/app.bsky.feed.post/{n:013d}"
        text = " ".join(rng.choices(_WORDS, k=8))
        batch.append(PostRow(uri, _cid("post", n), author, text, at, at,
                             ("en",) if rng.random() < 0.7 else ("ja",),
                             ("roost",) if rng.random() < 0.05 else ()))
        counts["posts"] += 1
        recent.append(uri)
        if len(recent) > 20_000:
            del recent[:10_000]
        if n % 4 == 0:  # a like for every four posts, on recent ones, skewed to the newest
            for _ in range(rng.choice((0, 1, 1, 2))):
                subject = recent[max(0, len(recent) - 1 - int(rng.expovariate(1 / 500)))]
                liker = rng.choice(authors)
                batch.append(LikeRow(f"at://{liker}/app.bsky.feed.like/{n:013d}{_}", liker,
                                     subject, at, at))
                counts["likes"] += 1
        if n % 20 == 0:
            sharer = rng.choice(authors)
            batch.append(RepostRow(f"at://{sharer}/app.bsky.feed.repost/{n:013d}",
                                   _cid("repost", n), sharer, rng.choice(recent), at, at))
            counts["reposts"] += 1
        flush()
    for v in range(VIEWERS):
        viewer = authors[v * 37 % len(authors)]
        for whom in rng.sample(prolific, 60) + rng.sample(authors, rng.randrange(60, 240)):
            batch.append(FollowRow(f"at://{viewer}/app.bsky.graph.follow/{whom[8:]}", viewer,
                                   whom, now))
            counts["follows"] += 1
        flush()
    flush(force=True)
    store.close()
    return counts


def viewers() -> list[str]:
    authors = [_did("author", n) for n in range(50_000)]
    return [authors[v * 37 % len(authors)] for v in range(VIEWERS)]


# -- the server --------------------------------------------------------------------------------


def serve_main(db: str) -> None:
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from feedgen.algos import register_builtins
    from feedgen.app import create_app
    from feedgen.config import FeedgenConfig
    from feedgen.plugins import Feed, Registry
    from roost.server import run

    keys = {did: viewer_key(n).public_key for n, did in enumerate(viewers())}

    async def resolve_key(did: str, *, force_refresh: bool) -> Any:
        from roost.errors import DidNotFound

        if did not in keys:
            raise DidNotFound(did)
        return keys[did]

    registry = Registry()
    register_builtins(registry)
    feeds = [Feed.build(registry.get(name), publisher=PUBLISHER, rkey=name) for name in FEEDS]
    for name in UNCACHED:
        base = Feed.build(registry.get(name.removesuffix("-uncached")), publisher=PUBLISHER,
                          rkey=name)
        feeds.append(dataclasses.replace(base, shared=False))
    config = FeedgenConfig(port=0, database=db, data_dir=Path(db).parent, hostname="feeds.bench",
                           entry_points=False, fulltext=False, replay_protection=False)
    app = create_app(config, registry=registry, feeds=feeds, resolve_key=resolve_key)

    async def bare(request: Request) -> JSONResponse:
        return JSONResponse({"feed": [], "cursor": request.query_params.get("cursor", "x")})

    app.router.routes.append(Route("/bare", bare))
    print(config.did, file=sys.stderr, flush=True)
    run(app, "127.0.0.1", 0, name="feedgen", log_level="warning")


# -- the load generator ---------------------------------------------------------------------------


def _scrolls(service_did: str, count: int, per_scroll: int) -> list[list[str]]:
    """Tokens for ``count`` scrolls: ``per_scroll`` tokens of one random requester each."""
    from roost.jwt import create_service_jwt

    who = viewers()
    keys = [viewer_key(n) for n in range(VIEWERS)]
    rng = random.Random()
    out = []
    for _ in range(count):
        n = rng.randrange(VIEWERS)
        out.append([create_service_jwt(keys[n], iss=who[n], aud=service_did, lxm=SKELETON,
                                       exp_seconds=600) for _ in range(per_scroll)])
    return out


async def _worker(host: str, port: int, route: str, scrolls: list[list[str]], deadline: float,
                  warmup_until: float, out: dict[str, Any]) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    rkey = "following" if route == SESSION else route
    feed = quote(f"at://{PUBLISHER}/app.bsky.feed.generator/{rkey}", safe="")
    cursor: str | None = None
    page = 0
    tokens: list[str] = []
    try:
        while True:
            if route == "bare":
                path = "/bare"
            else:
                if page % PAGES_PER_SCROLL == 0:
                    cursor = None
                    if scrolls:
                        tokens = scrolls.pop()  # the next scroll: another requester
                path = f"/xrpc/{SKELETON}?feed={feed}&limit={PAGE}"
                if cursor:
                    path += "&cursor=" + quote(cursor, safe="")
            head = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
            if tokens:
                token = tokens[page % len(tokens)]
                head += f"Authorization: Bearer {token}\r\n"
            request = (head + "\r\n").encode()
            start = time.perf_counter()
            if start >= deadline:
                break
            writer.write(request)
            status, body = await read_response(reader)
            end = time.perf_counter()
            if status != 200:
                out["errors"] += 1
                out["last_error"] = body[:200].decode("utf-8", "replace")
                page = 0
                continue
            if route != "bare":
                parsed = json.loads(body)
                out["items"] += len(parsed["feed"])
                cursor = parsed.get("cursor")
                page = page + 1 if cursor else 0
            if start >= warmup_until:
                out["latencies"].append(end - start)
    finally:
        writer.close()
        await writer.wait_closed()


async def _load(url: str, route: str, service_did: str, connections: int, seconds: float,
                warmup: float, expected_rps: float) -> dict[str, Any]:
    host, _, port = url.removeprefix("http://").partition(":")
    scrolls: list[list[str]] = []
    if route in ("following", SESSION):
        count = int(expected_rps * (seconds + warmup) * 1.5 / PAGES_PER_SCROLL) + 500
        scrolls = _scrolls(service_did, count, PAGES_PER_SCROLL if route == "following" else 1)
    now = time.perf_counter()
    out: dict[str, Any] = {"latencies": [], "errors": 0, "items": 0}
    await asyncio.gather(*(
        _worker(host, int(port), route, scrolls, now + warmup + seconds, now + warmup, out)
        for _ in range(connections)
    ))
    lat = sorted(out["latencies"])
    n = len(lat)
    return {
        "requests": n, "rps": n / seconds,
        "p50_ms": lat[n // 2] * 1000 if n else float("nan"),
        "p99_ms": lat[min(n - 1, int(n * 0.99))] * 1000 if n else float("nan"),
        "errors": out["errors"], "last_error": out.get("last_error"),
        "items": out["items"],
    }


def load_main(url: str, route: str, service_did: str, connections: str, seconds: str,
              warmup: str, expected: str) -> None:
    result = asyncio.run(_load(url, route, service_did, int(connections), float(seconds),
                               float(warmup), float(expected)))
    print(json.dumps(result))


# -- orchestration ------------------------------------------------------------------------------------


def _python(*args: str, **kwargs: Any) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), *args], text=True, env=env, **kwargs
    )


def _ready_url(process: subprocess.Popen[str]) -> str:
    assert process.stdout is not None
    line = process.stdout.readline().strip()
    if " listening on " not in line:
        raise SystemExit(f"child did not start: {line!r}")
    return line.split(" listening on ")[1]


def _cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class PostgresPlaces:
    """The benchmark's indexes as databases on a PostgreSQL server: ``postgres`` starts a
    throwaway one from the local binaries (the tests' helper), a URL names a server where
    databases may be created. The big index is kept between runs on a named server."""

    def __init__(self, spec: str) -> None:
        self.server: Any = None
        if spec == "postgres":
            from tests.postgres import PostgresServer

            self.server = PostgresServer()
            self.server.start()
            spec = self.server.dsn()
        self.url = spec
        self.made: list[str] = []
        import atexit
        import signal

        atexit.register(self.close)  # also when the run fails half-way, or is stopped
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    def _dsn(self, name: str) -> str:
        from urllib.parse import urlsplit

        return urlsplit(self.url)._replace(path="/" + name).geturl()

    def _sql(self, sql: str, *args: Any, database: str | None = None) -> Any:
        import asyncpg

        async def go() -> Any:
            conn = await asyncpg.connect(self._dsn(database) if database else self.url)
            try:
                return await conn.fetchval(sql, *args)
            finally:
                await conn.close()

        return asyncio.run(go())

    def fresh(self) -> str:
        """A new empty database, dropped by :meth:`close`."""
        name = f"roost_bench_{os.getpid()}_{len(self.made)}"
        self._sql(f'CREATE DATABASE "{name}"')
        self.made.append(name)
        return self._dsn(name)

    def big_index(self, posts: int) -> str:
        from feedgen.postgres import MIGRATIONS

        schema = hashlib.sha256(MIGRATIONS[0][1].encode()).hexdigest()[:8]
        name = f"roost_bench_index_{posts}_{schema}"
        if not self._sql("SELECT 1 FROM pg_database WHERE datname = $1", name):
            print(f"building an index of {posts} posts on PostgreSQL through the storage API...",
                  flush=True)
            started = time.perf_counter()
            building = name + "_building"
            self._sql(f'DROP DATABASE IF EXISTS "{building}"')
            self._sql(f'CREATE DATABASE "{building}"')
            counts = build_index(self._dsn(building), posts)  # type: ignore[arg-type]
            self._sql("VACUUM ANALYZE", database=building)  # what autovacuum does in time
            self._sql(f'ALTER DATABASE "{building}" RENAME TO "{name}"')
            print(f"  {counts} in {time.perf_counter() - started:.0f} s", flush=True)
        return self._dsn(name)

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()  # the databases go with it
            self.server = None
        else:
            for name in self.made:
                self._sql(f'DROP DATABASE IF EXISTS "{name}"')
        self.made = []


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--posts", type=int, default=1_000_000)
    parser.add_argument("--events", type=int, default=40_000, help="recorded firehose events")
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per round")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--cache", type=Path,
                        default=Path(tempfile.gettempdir()) / "roost-bench-feedgen",
                        help="keeps the recording and the big index between runs")
    parser.add_argument("--database", metavar="postgresql://...|postgres",
                        help="index on PostgreSQL: a server where the benchmark may create "
                        "databases, or 'postgres' for a throwaway one from the local binaries "
                        "(default: SQLite files)")
    args = parser.parse_args()
    postgres = PostgresPlaces(args.database) if args.database else None
    args.cache.mkdir(parents=True, exist_ok=True)

    # indexing
    recording = args.cache / f"firehose-{args.events}.bin"
    if not recording.exists():
        print(f"recording a firehose of {args.events} commits (once)...", flush=True)
        started = time.perf_counter()
        record_firehose(recording.with_suffix(".tmp"), args.events)
        recording.with_suffix(".tmp").rename(recording)
        print(f"  {time.perf_counter() - started:.0f} s", flush=True)
    frames = read_recording(recording)
    work = Path(tempfile.mkdtemp(prefix="feedgen-bench-"))
    try:
        local = index_in_process(frames, postgres.fresh() if postgres else work / "a.sqlite")
        remote = asyncio.run(index_over_websocket(
            recording, len(frames), postgres.fresh() if postgres else work / "b.sqlite"))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    # the big index (named after the schema it was built with; later migrations upgrade it)
    from feedgen.sqlite import MIGRATIONS
    from feedgen.storage import open_store

    schema = hashlib.sha256(MIGRATIONS[0].encode()).hexdigest()[:8]
    db = args.cache / f"index-{args.posts}-{schema}.sqlite"
    if postgres:
        db = postgres.big_index(args.posts)  # type: ignore[assignment]
    elif not db.exists():
        print(f"building an index of {args.posts} posts through the storage API (once)...",
              flush=True)
        started = time.perf_counter()
        tmp = db.with_suffix(".building")
        for suffix in ("", "-wal", "-shm"):
            Path(str(tmp) + suffix).unlink(missing_ok=True)
        counts = build_index(tmp, args.posts)
        tmp.rename(db)
        for suffix in ("-wal", "-shm"):
            Path(str(tmp) + suffix).unlink(missing_ok=True)
        print(f"  {counts} in {time.perf_counter() - started:.0f} s", flush=True)
    # the 1,000 readers read their following feed regularly: the index keeps them
    # (a first read by a new reader is answered the slow way while the writer keeps them)
    store = open_store(db)
    started = time.perf_counter()
    kept = store.register_readers(viewers(), int(time.time() * 1000))
    if kept:
        print(f"  kept {kept} new readers of the following feed in "
              f"{time.perf_counter() - started:.0f} s", flush=True)
    store.close()

    server = _python("serve", str(db), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    routes = ("bare", *FEEDS, SESSION, *UNCACHED)
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in routes}
    try:
        assert server.stderr is not None
        service_did = server.stderr.readline().strip()
        url = _ready_url(server)
        print(f"index on {'PostgreSQL' if postgres else 'SQLite'}; "
              f"server {url} (uvicorn, one process); load: {args.connections} keep-alive "
              f"connections, separate process, {args.seconds:g} s x {args.rounds} rounds per route")
        expected = 5_000.0
        for _ in range(args.rounds):
            for route in results:
                loader = _python("load", url, route, service_did, str(args.connections),
                                 str(args.seconds), str(args.warmup), str(expected),
                                 stdout=subprocess.PIPE)
                cpu_before = _cpu_seconds(server.pid)
                out, _ = loader.communicate(timeout=args.seconds + args.warmup + 300)
                cpu = _cpu_seconds(server.pid) - cpu_before
                result = json.loads(out)
                total = result["requests"] * (args.seconds + args.warmup) / args.seconds
                result["cpu_us"] = cpu / total * 1e6 if total else float("nan")
                if result["errors"]:
                    raise SystemExit(f"{route}: {result['errors']} errors, e.g. {result['last_error']}")
                results[route].append(result)
                expected = max(expected, result["rps"])
    finally:
        server.terminate()
        server.wait(timeout=20)

    print(f"\nindexing, {len(frames)} recorded commits (~70% indexed collections):")
    print(f"  in process (decode + map + store, one thread): {local['rate']:>8.0f} events/s"
          f"  [decode {local['decode']:.0%}, map {local['map']:.0%}, store {local['store']:.0%}]")
    print(f"  over a WebSocket (roost.firehose -> Indexer):  {remote['rate']:>8.0f} events/s")
    verdict = "meets" if remote["rate"] >= 10_000 else "MISSES"
    print(f"  {verdict} the 10,000 events/s target")
    print(f"\ngetFeedSkeleton over {args.posts:,} posts, {args.connections} connections "
          "(median round):")
    print(f"{'route':<19} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'CPU us/req':>11} "
          f"{'vs bare':>8}   all rounds req/s")
    bare = statistics.median(r["rps"] for r in results["bare"])
    ok = True
    for route, rounds in results.items():
        best = sorted(rounds, key=lambda r: r["rps"])[len(rounds) // 2]
        ratio = best["rps"] / bare
        cpu = statistics.median(r["cpu_us"] for r in rounds)
        every = ", ".join(f"{r['rps']:.0f}" for r in rounds)
        mark = ""
        if route != "bare":
            good = ratio >= 0.5 and best["p99_ms"] < 20
            if route in FEEDS or route == SESSION:
                ok = ok and good
            mark = "ok" if good else "MISS"
        print(f"{route:<19} {best['rps']:>8.0f} {best['p50_ms']:>8.2f} {best['p99_ms']:>8.2f} "
              f"{cpu:>11.0f} {ratio:>8.2f}   [{every}] {mark}")
    print(f"\ntargets (latest, whats-hot, following, {SESSION} >= 0.50 of bare, p99 < 20 ms): "
          f"{'all met' if ok else 'NOT all met'}")
    print("(*-uncached: the same feeds with the page cache off; the index does not change "
          "during the run, so the cached rows show the cache at its best)")
    print(f"(following: a fresh token per page, each checked in full; {SESSION}: one token "
          "per five-page scroll, checked once)")


if __name__ == "__main__":
    command = sys.argv[1] if len(sys.argv) > 1 else None
    if command == "serve":
        serve_main(sys.argv[2])
    elif command == "replay":
        replay_main(sys.argv[2])
    elif command == "load":
        load_main(*sys.argv[2:9])
    else:
        main()
