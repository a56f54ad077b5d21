"""Serving ``subscribeRepos`` to many consumers: frames encoded once, written in bulk.

The :class:`~roost.sequencer.Sequencer` decides *what* each consumer gets
(cursor replay from the log, the gap-free switch to live events, bounded
queues, sending a lagging consumer back to the log, ``ConsumerTooSlow`` for
a stalled one). This module decides *how it is written*, and also drops a
consumer whose socket has taken nothing for ``stall_s`` while it was
replaying (the sequencer cannot see those). A server-to-client
WebSocket message is not masked, so its bytes are the same for every
consumer: the 2-10 byte message header plus the stored frame. For each
batch the sequencer hands over (a replay page or everything queued since
the last write) the consumer's task joins those into one buffer and writes
it to the socket in one call, instead of one framing and one system call
per event per consumer.

That needs the raw transport, which ASGI does not expose. The relay is
therefore served with :class:`FanoutWebSocketProtocol`, uvicorn's own
sans-I/O WebSocket protocol plus one ASGI scope extension,
``roost.raw_frames``, through which a handler writes pre-framed messages
(after the handshake the app completed; pings, close frames and error
frames still go through uvicorn). Under any other server the same handler
falls back to one ``send`` per frame.

:class:`Fanout` also keeps the registry of connected consumers (address,
user agent, cursor, events sent) for the admin API.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Final

from starlette.websockets import WebSocketDisconnect
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from roost.frames import encode_error_frame
from roost.sequencer import SUBSCRIBE_REPOS, Sequencer
from roost.xrpc import XrpcContext, XrpcRouter

__all__ = [
    "RAW_FRAMES",
    "WRITE_BUFFER_BYTES",
    "Consumer",
    "ConsumerStalled",
    "Fanout",
    "FanoutWebSocketProtocol",
    "RawFrames",
    "ws_message_header",
    "ws_messages",
]

#: The ASGI scope extension carrying a :class:`RawFrames`.
RAW_FRAMES: Final = "roost.raw_frames"
#: Bytes a consumer's socket buffer may hold before its writer waits for it to drain.
WRITE_BUFFER_BYTES: Final = 1 << 20
#: Recently framed batches kept for the next consumers to take the same batch.
FRAMED_BATCHES: Final = 256
_TOO_SLOW: Final = encode_error_frame("ConsumerTooSlow", "Stream consumer too slow")

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=65_536)
def ws_message_header(length: int) -> bytes:
    """The header of an unmasked, final, binary WebSocket frame of ``length`` bytes."""
    if length < 126:
        return bytes((0x82, length))
    if length < 65_536:
        return b"\x82\x7e" + length.to_bytes(2, "big")
    return b"\x82\x7f" + length.to_bytes(8, "big")


def ws_messages(frames: list[bytes]) -> bytes:
    """``frames`` as consecutive binary WebSocket messages (server side: unmasked)."""
    parts: list[bytes] = []
    append = parts.append
    for frame in frames:
        append(ws_message_header(len(frame)))
        append(frame)
    return b"".join(parts)


class ConsumerStalled(Exception):
    """The consumer's socket took nothing for the stall timeout."""


class RawFrames:
    """Writes pre-framed WebSocket messages straight to a connection's transport."""

    def __init__(self, protocol: WebSocketsSansIOProtocol) -> None:
        self._protocol = protocol
        protocol.transport.set_write_buffer_limits(high=WRITE_BUFFER_BYTES)

    @property
    def closed(self) -> bool:
        p = self._protocol
        return p.disconnected or p.close_sent or p.transport.is_closing()

    async def write(self, data: bytes, stall_s: float) -> None:
        """Write ``data`` in chunks, never holding much more than :data:`WRITE_BUFFER_BYTES`.

        Raises :class:`ConsumerStalled` if the socket does not drain for
        ``stall_s`` seconds, ``WebSocketDisconnect`` if the client is gone.
        """
        p = self._protocol
        view = memoryview(data)
        for start in range(0, len(view), WRITE_BUFFER_BYTES):
            if self.closed:
                raise WebSocketDisconnect(1006)
            p.transport.write(view[start : start + WRITE_BUFFER_BYTES])
            if not p.writable.is_set():
                try:
                    await asyncio.wait_for(p.writable.wait(), stall_s)
                except TimeoutError:
                    raise ConsumerStalled from None
            if p.disconnected:
                raise WebSocketDisconnect(1006)

    def abort(self, last_words: bytes) -> None:
        """Queue a final frame (it may never leave the full buffer) and drop the connection."""
        p = self._protocol
        if not p.transport.is_closing():
            p.transport.write(ws_message_header(len(last_words)) + last_words)
            p.transport.abort()


class FanoutWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's sans-I/O WebSocket protocol with the ``roost.raw_frames`` extension."""

    def handle_connect(self, event: Any) -> None:
        super().handle_connect(event)
        scope = getattr(self, "scope", None)
        if isinstance(scope, dict) and not self.close_sent:
            scope.setdefault("extensions", {})[RAW_FRAMES] = RawFrames(self)


@dataclass(slots=True)
class Consumer:
    """One connected ``subscribeRepos`` client."""

    id: int
    remote: str
    user_agent: str
    cursor: int | None
    connected_at: float = field(default_factory=time.time)
    events_sent: int = 0
    bytes_sent: int = 0
    raw: bool = False
    #: The last frame sent (its seq, read when asked, is how far the consumer has got).
    last_frame: bytes | None = None

    def describe(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "remoteAddr": self.remote,
            "userAgent": self.user_agent,
            "cursor": self.cursor,
            "connectedAt": self.connected_at,
            "eventsSent": self.events_sent,
            "bytesSent": self.bytes_sent,
            "bulkWrites": self.raw,
        }


class Fanout:
    """The relay's ``subscribeRepos`` handler and its consumer registry.

    ``stall_s``: a consumer whose socket takes nothing for this long is
    dropped (``ConsumerTooSlow``), whether it was being sent live events or
    replaying from the log (the sequencer only sees the live ones).
    """

    def __init__(self, sequencer: Sequencer, *, stall_s: float) -> None:
        self.sequencer = sequencer
        self.stall_s = stall_s
        self.stalled_dropped = 0
        self.consumers: dict[int, Consumer] = {}
        self._ids = itertools.count(1)
        # Consumers that keep up take the same batches: frame them once. Keyed by
        # the batch's first and last frame objects (kept alive by the entry, so
        # their ids cannot be reused) and its length, which fix its contents:
        # a batch is a run of consecutive events.
        self._framed: dict[tuple[int, int, int], tuple[bytes, bytes, bytes]] = {}
        self.framed_hits = 0

    def framed(self, batch: list[bytes]) -> bytes:
        """``ws_messages(batch)``, shared between consumers that get the same batch."""
        first, last = batch[0], batch[-1]
        key = (id(first), id(last), len(batch))
        entry = self._framed.get(key)
        if entry is not None and entry[0] is first and entry[1] is last:
            self.framed_hits += 1
            return entry[2]
        data = ws_messages(batch)
        if len(self._framed) >= FRAMED_BATCHES:
            self._framed.clear()
        self._framed[key] = (first, last, data)
        return data

    def register(self, router: XrpcRouter) -> None:
        """Serve ``subscribeRepos`` on ``router`` from this fan-out."""

        @router.subscription(SUBSCRIBE_REPOS)
        async def subscribe_repos(ctx: XrpcContext) -> AsyncIterator[bytes]:
            # returned, not iterated here: the XRPC layer runs it in the task to
            # cancel if the client stops reading
            return self.stream(ctx)

    async def stream(self, ctx: XrpcContext) -> AsyncIterator[bytes]:
        """Write the stream in bulk when the server allows it, else yield frame by frame."""
        ws = ctx.request
        raw: RawFrames | None = ws.scope.get("extensions", {}).get(RAW_FRAMES)
        cursor = ctx.params.get("cursor")
        consumer = Consumer(
            next(self._ids),
            ctx.client_ip,
            ws.headers.get("user-agent", "")[:200],
            cursor,
            raw=raw is not None,
        )
        self.consumers[consumer.id] = consumer
        batches = self.sequencer.subscribe_batches(cursor, stuck_task=asyncio.current_task())
        try:
            async for batch in batches:
                consumer.events_sent += len(batch)
                consumer.last_frame = batch[-1]
                if raw is not None:
                    data = self.framed(batch)
                    consumer.bytes_sent += len(data)
                    await raw.write(data, self.stall_s)
                else:
                    for frame in batch:
                        consumer.bytes_sent += len(frame)
                        yield frame
        except ConsumerStalled:
            assert raw is not None
            self.stalled_dropped += 1
            log.info(
                "consumer dropped reason=stalled remote=%s sent=%d",
                consumer.remote, consumer.events_sent,
            )
            raw.abort(_TOO_SLOW)
        finally:
            self.consumers.pop(consumer.id, None)
            await batches.aclose()
