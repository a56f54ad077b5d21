"""Fan-out pieces: WebSocket framing done once, and the sequencer's catch-up policy.

With ``stall_s`` set, a subscriber whose queue overflows while it is still
reading goes back to replaying from the log (it loses nothing and is not
dropped); one that has stopped taking batches is dropped with
ConsumerTooSlow.
"""

from __future__ import annotations

import asyncio

import pytest
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from relay.fanout import Fanout, ws_message_header, ws_messages
from roost.frames import decode_frame
from roost.sequencer import ConsumerTooSlow, Sequencer
from tests.roost.test_sequencer import NOW, MemoryLog, until


def parse(data: bytes, count: int) -> list[Frame]:
    """``count`` frames read with the websockets parser; nothing may be left over."""
    reader = StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    frames = []
    for _ in range(count):
        parser = Frame.parse(reader.read_exact, mask=False)
        try:
            while True:
                next(parser)
        except StopIteration as done:
            frames.append(done.value)
    assert not reader.buffer
    return frames


def test_ws_messages_are_unmasked_binary_frames() -> None:
    payloads = [b"x" * 10, b"y" * 200, b"z" * 70_000]
    frames = parse(ws_messages(payloads), len(payloads))
    assert [(f.opcode, f.fin, f.data) for f in frames] == [(Opcode.BINARY, True, p) for p in payloads]
    assert ws_message_header(125) == b"\x82\x7d" and ws_message_header(126) == b"\x82\x7e\x00\x7e"


def test_a_batch_is_framed_once_for_every_consumer() -> None:
    fanout = Fanout(Sequencer(MemoryLog()), stall_s=1.0)
    frames = [b"a" * 50, b"b" * 60, b"c" * 70]
    one = fanout.framed(list(frames))
    two = fanout.framed(list(frames))  # another consumer's list, same frames
    assert one is two and fanout.framed_hits == 1
    other = fanout.framed(list(frames[1:]))
    assert other == ws_messages(frames[1:]) and fanout.framed_hits == 1


async def test_a_reader_that_falls_behind_is_sent_back_to_the_log() -> None:
    log = MemoryLog()
    sequencer = Sequencer(log, buffer_size=4, clock=lambda: NOW, stall_s=5.0)
    stream = sequencer.subscribe_batches(None)
    first = asyncio.ensure_future(anext(stream))
    await until(lambda: sequencer.live_subscriber_count == 1)
    got: list[int] = []
    for round_ in range(3):  # each round overflows its queue before it reads again
        sequencer.publish([log.append(log.latest + 1) for _ in range(10)])
        batch = await first if round_ == 0 else await anext(stream)
        got += [decode_frame(f)[1]["seq"] for f in batch]
        while got[-1] < log.latest:
            got += [decode_frame(f)[1]["seq"] for f in await anext(stream)]
        first = None  # type: ignore[assignment]
    assert got == list(range(1, 31))  # everything, once, in order
    assert sequencer.sent_back_to_replay >= 2 and sequencer.dropped_too_slow == 0
    assert sequencer.queued_events <= 4
    await stream.aclose()


async def test_a_reader_that_stopped_is_dropped() -> None:
    log = MemoryLog()
    now = [NOW]
    sequencer = Sequencer(log, buffer_size=4, clock=lambda: now[0], stall_s=5.0)
    stream = sequencer.subscribe_batches(None)
    waiting = asyncio.ensure_future(anext(stream))
    await until(lambda: sequencer.live_subscriber_count == 1)
    sequencer.publish([log.append(1)])
    assert len(await waiting) == 1
    now[0] += 6  # it takes nothing more for longer than stall_s
    sequencer.publish([log.append(n) for n in range(2, 8)])
    assert sequencer.dropped_too_slow == 1 and sequencer.sent_back_to_replay == 0
    with pytest.raises(ConsumerTooSlow):
        await anext(stream)
