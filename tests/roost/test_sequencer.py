"""roost.sequencer: cursors, replay window, gap-free cutover, slow consumers, shutdown.

Every stream test talks to a real uvicorn server on a loopback port (its own
thread and event loop) through the ``websockets`` client. The event log is
an in-memory fake of :class:`roost.sequencer.EventLog`; events are appended
and published *on the server's loop*, as the PDS writer would do it.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest
from starlette.applications import Starlette
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from roost.sequencer import (
    PAGE_SIZE,
    SUBSCRIBE_REPOS,
    ConsumerTooSlow,
    FutureCursor,
    Sequencer,
)
from roost.frames import decode_frame, encode_frame
from roost.lexicon import Catalog
from roost.xrpc import XrpcRouter
from tests.servers import serve

T = TypeVar("T")

NOW = 1_700_000_000.0  # the fake clock, in seconds
WINDOW_S = 3600.0
RECENT_MS = int(NOW * 1000) - 1000  # inside the window
OLD_MS = int((NOW - WINDOW_S) * 1000) - 60_000  # a minute before the window
DID = "did:plc:ewvi7nxzyoun6zhxrhs64oiz"


# -- a fake event log ----------------------------------------------------------------------


class MemoryLog:
    """The :class:`EventLog` protocol over a list; ``on_read`` runs before each read."""

    def __init__(self) -> None:
        self.events: list[tuple[int, int, bytes]] = []  # (seq, time_ms, frame)
        self.on_read: Callable[[], None] | None = None
        self.reads = 0

    def append(self, seq: int, time_ms: int = RECENT_MS, pad: int = 0) -> tuple[int, bytes]:
        assert not self.events or seq > self.events[-1][0]
        body: dict[str, Any] = {"seq": seq, "did": DID, "time": "2023-11-14T22:13:20.000Z"}
        if pad:
            body["pad"] = os.urandom(pad)
        frame = encode_frame("#identity", body)
        self.events.append((seq, time_ms, frame))
        return seq, frame

    @property
    def latest(self) -> int:
        return self.events[-1][0] if self.events else 0

    async def read_after(self, seq: int, limit: int) -> list[tuple[int, bytes]]:
        await asyncio.sleep(0)  # a real database awaits: let publishers interleave
        self.reads += 1
        if self.on_read is not None:
            self.on_read()
        return [(s, f) for s, _, f in self.events if s > seq][:limit]

    async def latest_seq(self) -> int:
        await asyncio.sleep(0)
        return self.latest

    async def oldest_seq_since(self, time_ms: int) -> int | None:
        await asyncio.sleep(0)
        return next((s for s, t, _ in self.events if t >= time_ms), None)


def fill(log: MemoryLog, seqs: range, time_ms: int = RECENT_MS) -> None:
    for seq in seqs:
        log.append(seq, time_ms)


# -- a served sequencer ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return Catalog.load()


@dataclass
class Served:
    url: str
    loop: asyncio.AbstractEventLoop
    log: MemoryLog
    sequencer: Sequencer

    async def on_server(self, fn: Callable[[], Awaitable[T]]) -> T:
        """Run ``fn()`` on the server's event loop and wait for its result."""

        async def run() -> T:
            return await fn()

        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(run(), self.loop))

    async def write(self, count: int = 1, pad: int = 0) -> list[int]:
        """Commit ``count`` new events to the log, then publish them (the writer's order)."""

        async def write() -> list[int]:
            events = [self.log.append(self.log.latest + 1, pad=pad) for _ in range(count)]
            self.sequencer.publish(events)
            return [seq for seq, _ in events]

        return await self.on_server(write)

    def ws_url(self, cursor: int | str | None = None) -> str:
        url = self.url.replace("http", "ws", 1) + "/xrpc/" + SUBSCRIBE_REPOS
        return url if cursor is None else f"{url}?cursor={cursor}"

    @asynccontextmanager
    async def client(
        self, cursor: int | str | None = None, **options: Any
    ) -> AsyncIterator[ClientConnection]:
        async with connect(
            self.ws_url(cursor), compression=None, proxy=None, close_timeout=2, **options
        ) as ws:
            yield ws


@contextmanager
def served(catalog: Catalog, log: MemoryLog, **options: Any) -> Iterator[Served]:
    options.setdefault("replay_window_s", WINDOW_S)
    options.setdefault("clock", lambda: NOW)
    sequencer = Sequencer(log, **options)
    router = XrpcRouter(catalog)
    sequencer.register(router)
    loops: list[asyncio.AbstractEventLoop] = []

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        loops.append(asyncio.get_running_loop())
        yield
        sequencer.close()

    with serve(Starlette(routes=router.routes, lifespan=lifespan)) as url:
        yield Served(url, loops[0], log, sequencer)


async def until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait (polling briefly) until ``predicate()`` holds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.002)


async def recv(ws: ClientConnection) -> tuple[dict[str, Any], dict[str, Any]]:
    message = await asyncio.wait_for(ws.recv(), 5)
    assert isinstance(message, bytes), "text frames are not part of the protocol"
    return decode_frame(message)


async def recv_seqs(ws: ClientConnection, count: int) -> list[int]:
    seqs = []
    for _ in range(count):
        header, body = await recv(ws)
        assert header == {"op": 1, "t": "#identity"}
        seqs.append(body["seq"])
    return seqs


async def recv_until(ws: ClientConnection, last: int) -> list[int]:
    """Seqs received up to and including ``last``."""
    seqs: list[int] = []
    while not seqs or seqs[-1] < last:
        seqs += await recv_seqs(ws, 1)
    return seqs


async def read_to_close(
    ws: ClientConnection,
) -> tuple[list[tuple[dict[str, Any], dict[str, Any]]], ConnectionClosed]:
    frames = []
    while True:
        try:
            frames.append(await recv(ws))
        except ConnectionClosed as closed:
            return frames, closed


# -- cursor rules ----------------------------------------------------------------------------


async def test_live_only_without_cursor(catalog: Catalog) -> None:
    log = MemoryLog()
    fill(log, range(1, 6))
    with served(catalog, log) as srv:
        async with srv.client() as ws:
            await until(lambda: srv.sequencer.live_subscriber_count == 1)
            assert await srv.write(3) == [6, 7, 8]
            assert await recv_seqs(ws, 3) == [6, 7, 8]
        await until(lambda: srv.sequencer.subscriber_count == 0)
    assert log.reads == 0  # no replay at all


async def test_cursor_inside_window_replays_then_goes_live(catalog: Catalog) -> None:
    log = MemoryLog()
    fill(log, range(1, 21))
    with served(catalog, log) as srv:
        async with srv.client(cursor=12) as ws:
            assert await recv_seqs(ws, 8) == list(range(13, 21))
            await until(lambda: srv.sequencer.live_subscriber_count == 1)
            await srv.write(2)
            assert await recv_seqs(ws, 2) == [21, 22]
        # A cursor at the latest seq replays nothing and goes live.
        async with srv.client(cursor=22) as ws:
            await until(lambda: srv.sequencer.live_subscriber_count == 1)
            await srv.write(1)
            assert await recv_seqs(ws, 1) == [23]


async def test_gap_free_cutover_under_concurrent_publishing(catalog: Catalog) -> None:
    """Events are committed and published while subscribers page through the log.

    A background writer commits, yields to the loop, then publishes (the
    window where an event is in the log but not yet live), and every log read
    also commits and publishes two more events on the spot (so events land in
    both the final log read and the live queue). Each subscriber must see
    exactly ``cursor+1 .. final``, in order, once each.
    """
    log = MemoryLog()
    initial = 3 * PAGE_SIZE + 120
    final = initial + 900
    fill(log, range(1, initial + 1))
    with served(catalog, log) as srv:
        seq = srv.sequencer

        committed: list[tuple[int, bytes]] = []  # committed, not yet published

        def publish() -> None:
            # Like the writer: publish whatever is committed, in seq order.
            events = committed[:]
            committed.clear()
            seq.publish(events)

        def commit_and_publish() -> None:
            for _ in range(2):
                if log.latest < final:
                    committed.append(log.append(log.latest + 1))
            publish()

        async def writer() -> None:
            while log.latest < final:
                committed.append(log.append(log.latest + 1))
                await asyncio.sleep(0)  # committed, not yet published
                publish()
                await asyncio.sleep(0.0005)

        async def start() -> None:
            log.on_read = commit_and_publish
            asyncio.get_running_loop().create_task(writer())

        cursors = [0, 1, 100, PAGE_SIZE + 7, initial - 300, initial - 1, initial]

        async def subscriber(cursor: int) -> list[int]:
            async with srv.client(cursor=cursor) as ws:
                return await recv_until(ws, final)

        tasks = [asyncio.ensure_future(subscriber(c)) for c in cursors]
        await srv.on_server(start)
        results = await asyncio.gather(*tasks)
        for cursor, seqs in zip(cursors, results, strict=True):
            assert seqs == list(range(cursor + 1, final + 1)), cursor
        assert seq.dropped_too_slow == 0
        assert seq.events_published == final - initial


async def test_cursor_zero_replays_the_window(catalog: Catalog) -> None:
    log = MemoryLog()
    fill(log, range(1, 11), OLD_MS)  # outside the window
    fill(log, range(11, 31))
    with served(catalog, log) as srv:
        async with srv.client(cursor=0) as ws:
            assert await recv_seqs(ws, 20) == list(range(11, 31))
            await until(lambda: srv.sequencer.live_subscriber_count == 1)
            await srv.write(1)
            assert await recv_seqs(ws, 1) == [31]


async def test_cursor_zero_on_an_empty_log(catalog: Catalog) -> None:
    with served(catalog, MemoryLog()) as srv:
        async with srv.client(cursor=0) as ws:
            await until(lambda: srv.sequencer.live_subscriber_count == 1)
            await srv.write(2)
            assert await recv_seqs(ws, 2) == [1, 2]


async def test_outdated_cursor_gets_info_then_the_window(catalog: Catalog) -> None:
    log = MemoryLog()
    fill(log, range(1, 11), OLD_MS)
    fill(log, range(11, 31))
    with served(catalog, log) as srv:
        async with srv.client(cursor=3) as ws:
            header, body = await recv(ws)
            assert header == {"op": 1, "t": "#info"}
            assert body["name"] == "OutdatedCursor" and body["message"]
            assert "seq" not in body
            assert await recv_seqs(ws, 20) == list(range(11, 31))
            await until(lambda: srv.sequencer.live_subscriber_count == 1)
            await srv.write(1)
            assert await recv_seqs(ws, 1) == [31]
        # The last event before the window: nothing was missed, no notice.
        async with srv.client(cursor=10) as ws:
            assert await recv_seqs(ws, 21) == list(range(11, 32))


async def test_outdated_cursor_when_the_whole_log_is_old(catalog: Catalog) -> None:
    log = MemoryLog()
    fill(log, range(1, 11), OLD_MS)
    with served(catalog, log) as srv:
        async with srv.client(cursor=4) as ws:
            header, body = await recv(ws)
            assert header["t"] == "#info" and body["name"] == "OutdatedCursor"
            await until(lambda: srv.sequencer.live_subscriber_count == 1)
            await srv.write(1)
            assert await recv_seqs(ws, 1) == [11]  # nothing old replayed


async def test_future_cursor_is_an_error_frame_then_close(catalog: Catalog) -> None:
    log = MemoryLog()
    fill(log, range(1, 6))
    with served(catalog, log) as srv:
        async with srv.client(cursor=6) as ws:
            frames, closed = await read_to_close(ws)
        assert frames == [
            ({"op": -1}, {"error": "FutureCursor", "message": "Cursor in the future."})
        ]
        assert closed.rcvd is not None
        assert closed.rcvd.code == 1008 and closed.rcvd.reason == "FutureCursor"
        assert srv.sequencer.subscriber_count == 0


async def test_malformed_cursor_is_rejected_by_the_xrpc_layer(catalog: Catalog) -> None:
    with served(catalog, MemoryLog()) as srv:
        async with srv.client(cursor="abc") as ws:
            frames, closed = await read_to_close(ws)
        assert len(frames) == 1
        header, body = frames[0]
        assert header == {"op": -1} and body["error"] == "InvalidRequest"
        assert closed.rcvd is not None and closed.rcvd.code == 1008


# -- fan-out, slow consumers, shutdown ------------------------------------------------------


async def test_fan_out_to_many_subscribers(catalog: Catalog) -> None:
    log = MemoryLog()
    fill(log, range(1, 4))
    count = 40
    with served(catalog, log) as srv:
        clients = [connect(srv.ws_url(), compression=None, proxy=None) for _ in range(count)]
        sockets = await asyncio.gather(*clients)
        try:
            await until(lambda: srv.sequencer.live_subscriber_count == count)
            assert srv.sequencer.subscriber_count == count
            for _ in range(5):
                await srv.write(4)
            results = await asyncio.gather(*(recv_seqs(ws, 20) for ws in sockets))
            assert all(seqs == list(range(4, 24)) for seqs in results)
            assert srv.sequencer.events_published == 20
            assert srv.sequencer.last_published_seq == 23
        finally:
            await asyncio.gather(*(ws.close() for ws in sockets))
        await until(lambda: srv.sequencer.subscriber_count == 0)


async def test_slow_consumer_is_dropped_others_keep_receiving(catalog: Catalog) -> None:
    """A client that stops reading fills the socket, then its queue: ConsumerTooSlow."""
    with served(catalog, MemoryLog(), buffer_size=4) as srv:
        seq = srv.sequencer
        async with srv.client(max_queue=1) as slow, srv.client() as fast:
            await until(lambda: seq.live_subscriber_count == 2)
            written: list[int] = []
            while seq.dropped_too_slow == 0:
                assert len(written) < 2000, "the slow consumer was never dropped"
                written += await srv.write(1, pad=64 * 1024)
                assert await recv_seqs(fast, 1) == written[-1:]
            assert seq.live_subscriber_count == 1
            written += await srv.write(3, pad=64 * 1024)
            assert await recv_seqs(fast, 3) == written[-3:]

            frames, closed = await read_to_close(slow)
            *events, error = frames
            assert error == (
                {"op": -1},
                {"error": "ConsumerTooSlow", "message": "Stream consumer too slow"},
            )
            seqs = [body["seq"] for _, body in events]
            assert seqs == written[: len(seqs)]  # in order, no gaps, then cut off
            assert len(seqs) < len(written)
            assert closed.rcvd is not None
            assert closed.rcvd.code == 1008 and closed.rcvd.reason == "ConsumerTooSlow"
            assert seq.dropped_too_slow == 1

            # It reconnects with its cursor and catches up.
            async with srv.client(cursor=seqs[-1]) as again:
                assert await recv_until(again, written[-1]) == written[len(seqs) :]


async def test_stuck_consumer_is_cancelled_after_the_grace_period(catalog: Catalog) -> None:
    """A client that never reads cannot even take its error frame: its task is cancelled."""
    with served(catalog, MemoryLog(), buffer_size=2, slow_grace_s=0.05) as srv:
        seq = srv.sequencer
        async with srv.client(max_queue=1) as stuck:
            await until(lambda: seq.live_subscriber_count == 1)
            while seq.dropped_too_slow == 0:
                assert seq.events_published < 2000, "the consumer was never dropped"
                await srv.write(1, pad=64 * 1024)
            await until(lambda: seq.subscriber_count == 0)
            frames, closed = await read_to_close(stuck)
            assert all(header["op"] == 1 for header, _ in frames)  # the error frame never fit


async def test_close_ends_every_stream(catalog: Catalog) -> None:
    log = MemoryLog()
    fill(log, range(1, 4))
    with served(catalog, log) as srv:
        async with srv.client() as live, srv.client(cursor=1) as replayed:
            assert await recv_seqs(replayed, 2) == [2, 3]
            await until(lambda: srv.sequencer.live_subscriber_count == 2)

            async def close() -> None:
                srv.sequencer.close()

            await srv.on_server(close)
            for ws in (live, replayed):
                frames, closed = await read_to_close(ws)
                assert frames == []
                assert closed.rcvd is not None and closed.rcvd.code == 1000
            assert srv.sequencer.subscriber_count == 0
        # After shutdown a new stream ends at once.
        async with srv.client(cursor=0) as late:
            frames, closed = await read_to_close(late)
            assert frames == [] and closed.rcvd is not None and closed.rcvd.code == 1000


# -- the stream without a server -------------------------------------------------------------


async def test_future_cursor_raises_before_yielding() -> None:
    log = MemoryLog()
    fill(log, range(1, 4))
    stream = Sequencer(log, clock=lambda: NOW).subscribe(4)
    with pytest.raises(FutureCursor) as info:
        await anext(stream)
    assert info.value.error == "FutureCursor"
    assert ConsumerTooSlow("x").error == "ConsumerTooSlow"


async def test_negative_cursor_counts_as_zero() -> None:
    log = MemoryLog()
    fill(log, range(1, 4))
    sequencer = Sequencer(log, clock=lambda: NOW)
    stream = sequencer.subscribe(-5)
    frames = [await anext(stream) for _ in range(3)]
    assert [decode_frame(f)[1]["seq"] for f in frames] == [1, 2, 3]
    waiting = asyncio.ensure_future(anext(stream))
    await until(lambda: sequencer.live_subscriber_count == 1)
    sequencer.publish([log.append(4)])
    assert decode_frame(await waiting)[1]["seq"] == 4
    await stream.aclose()
    assert sequencer.subscriber_count == 0 and sequencer.live_subscriber_count == 0


async def test_a_batch_larger_than_the_buffer_drops_the_subscriber() -> None:
    log = MemoryLog()
    sequencer = Sequencer(log, buffer_size=3, clock=lambda: NOW)
    stream = sequencer.subscribe(None)
    waiting = asyncio.ensure_future(anext(stream))
    await until(lambda: sequencer.live_subscriber_count == 1)
    sequencer.publish([log.append(n) for n in range(1, 5)])
    with pytest.raises(ConsumerTooSlow):
        await waiting
    assert sequencer.dropped_too_slow == 1 and sequencer.subscriber_count == 0


def test_limits_are_checked() -> None:
    with pytest.raises(ValueError):
        Sequencer(MemoryLog(), buffer_size=0)
    with pytest.raises(ValueError):
        Sequencer(MemoryLog(), replay_window_s=-1)
