"""Jetstream: the repo firehose as JSON text messages, filtered on the server.

Jetstream (bluesky-social/jetstream, v1 message shape) is the firehose for
people who would rather not read CBOR and CAR files: one WebSocket text
message per record operation, with the record already decoded to atproto
JSON, plus the account and identity events::

    {"did": "did:plc:...", "time_us": 1732000000123000, "kind": "commit",
     "commit": {"rev": "3l...", "operation": "create", "collection": "app.bsky.feed.post",
                "rkey": "3l...", "record": {"$type": "app.bsky.feed.post", ...},
                "cid": "bafyrei..."}}
    {"did": ..., "time_us": ..., "kind": "identity",
     "identity": {"did": ..., "handle": ..., "seq": 12, "time": "..."}}
    {"did": ..., "time_us": ..., "kind": "account",
     "account": {"active": false, "did": ..., "seq": 13, "status": "deactivated", "time": "..."}}

Deletes carry no ``record`` and no ``cid``; ``handle`` and ``status`` are
left out when absent. ``#sync`` and ``#info`` are not part of the v1 shape
and are not sent; neither are ``tooBig`` commits.

:func:`jetstream_route` builds a Starlette WebSocket route serving this from
a service's :class:`~roost.sequencer.Sequencer` (the same replay and
gap-free cutover as ``subscribeRepos``) and its
:class:`~roost.sequencer.EventLog`. Query parameters, as Jetstream reads
them:

- ``wantedCollections`` (repeatable): NSIDs or prefix wildcards such as
  ``app.bsky.feed.*``; commits are sent for matching ops only. Identity and
  account messages have no collection and always pass.
- ``wantedDids`` (repeatable): only these accounts.
- ``cursor``: a ``time_us``; replay starts at the first message with
  ``time_us`` at or after it (a cursor in the future means live).
- ``maxMessageSizeBytes``: messages larger than this are skipped.
- ``requireHello=true``: wait for an ``options_update`` message first.
- ``compress=true`` (zstd) is refused: this server does not compress.

While connected, the client may send ``{"type": "options_update",
"payload": {"wantedCollections": [...], "wantedDids": [...],
"maxMessageSizeBytes": n}}`` to change its filters.

``time_us`` is the event's ``time`` in microseconds, raised where needed to
stay strictly increasing along the stream (events of one millisecond, and
the several ops of one commit, get consecutive microseconds). It is
computed before filtering, so a filtered stream carries the same values as
the full one. A cursor maps to a seq through
:meth:`~roost.sequencer.EventLog.oldest_seq_since`, started
:data:`CURSOR_SLACK_MS` early (so ops raised past a millisecond boundary
and clock differences between the log and the event times are covered);
messages before the cursor are then skipped. Resuming with the ``time_us``
of the last message processed therefore repeats that message and nothing
older, as Jetstream does.

Conversions are cached per frame (:data:`CONVERSION_CACHE_ENTRIES`), so
live subscribers share the decoding work.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from roost import cbor
from roost.car import CarReader
from roost.cid import CID
from roost.errors import RoostError
from roost.firehose import CollectionFilter, did_filter, event_time_us
from roost.frames import OP_MESSAGE, decode_frame
from roost.sequencer import ConsumerTooSlow, EventLog, FutureCursor, Sequencer
from roost.xrpc import error_response

__all__ = [
    "CONVERSION_CACHE_BYTES",
    "CONVERSION_CACHE_ENTRIES",
    "CURSOR_SLACK_MS",
    "JETSTREAM_PATH",
    "MAX_CLIENT_MESSAGE_BYTES",
    "JetstreamMessage",
    "JetstreamOptions",
    "jetstream_messages",
    "jetstream_route",
]

logger = logging.getLogger(__name__)

#: Where Jetstream serves its stream.
JETSTREAM_PATH: Final = "/subscribe"
#: A cursor starts the replay this much earlier (then skips to the cursor).
CURSOR_SLACK_MS: Final = 5_000
#: Frames whose conversion is kept for other subscribers, and their total size.
CONVERSION_CACHE_ENTRIES: Final = 1_024
CONVERSION_CACHE_BYTES: Final = 32 * 1024 * 1024
#: Largest message a client may send (options updates are small).
MAX_CLIENT_MESSAGE_BYTES: Final = 1_000_000

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


class InvalidOptions(RoostError):
    """Jetstream options that cannot be honoured (a 400 before the upgrade)."""


@dataclass(frozen=True, slots=True)
class JetstreamOptions:
    """A subscriber's filters (None: everything) and message size limit (0: none)."""

    collections: CollectionFilter | None = None
    dids: frozenset[str] | None = None
    max_message_bytes: int = 0

    @classmethod
    def parse(
        cls,
        wanted_collections: Sequence[str] | None,
        wanted_dids: Sequence[str] | None,
        max_message_bytes: object = 0,
    ) -> JetstreamOptions:
        """Options from request values; :class:`InvalidOptions` for bad ones."""
        try:
            collections = CollectionFilter(wanted_collections) if wanted_collections else None
            dids = did_filter(wanted_dids) if wanted_dids else None
        except ValueError as exc:
            raise InvalidOptions(str(exc)) from None
        return cls(collections, dids, _size_limit(max_message_bytes))

    def wants(self, did: str, collection: str) -> bool:
        if self.dids is not None and did not in self.dids:
            return False
        return not collection or self.collections is None or self.collections(collection)


def _size_limit(value: object) -> int:
    """Jetstream reads a bad or negative size limit as "no limit"."""
    if isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return max(value, 0)
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return 0


# -- conversion ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class JetstreamMessage:
    """One Jetstream message, minus its ``time_us`` (assigned per stream).

    ``collection`` is empty for identity and account messages; ``event_us``
    is the event's own time. :meth:`text` renders the JSON.
    """

    did: str
    collection: str
    event_us: int
    head: str
    tail: str

    def text(self, time_us: int) -> str:
        return f"{self.head}{time_us}{self.tail}"


def jetstream_messages(frame: bytes) -> list[JetstreamMessage]:
    """The Jetstream messages of one ``subscribeRepos`` frame (none for other types).

    Raises ``CborDecodeError`` for a malformed frame.
    """
    header, body = decode_frame(frame)
    if header["op"] != OP_MESSAGE:
        return []
    t = header["t"]
    if t == "#commit":
        return _commit_messages(body)
    if t not in ("#identity", "#account"):
        return []
    did, seq, time_ = body.get("did"), body.get("seq"), body.get("time")
    if type(did) is not str or type(seq) is not int or type(time_) is not str:
        return []
    event_us = event_time_us(time_) or 0
    head = f'{{"did":{_dumps(did)},"time_us":'
    if t == "#identity":
        identity: dict[str, Any] = {"did": did}
        handle = body.get("handle")
        if type(handle) is str:
            identity["handle"] = handle
        identity["seq"] = seq
        identity["time"] = time_
        tail = f',"kind":"identity","identity":{_dumps(identity)}}}'
    else:
        active = body.get("active")
        if type(active) is not bool:
            return []
        account: dict[str, Any] = {"active": active, "did": did, "seq": seq}
        status = body.get("status")
        if type(status) is str:
            account["status"] = status
        account["time"] = time_
        tail = f',"kind":"account","account":{_dumps(account)}}}'
    return [JetstreamMessage(did, "", event_us, head, tail)]


def _commit_messages(body: dict[str, Any]) -> list[JetstreamMessage]:
    did, rev, ops = body.get("repo"), body.get("rev"), body.get("ops")
    if type(did) is not str or type(rev) is not str or type(ops) is not list:
        return []
    if body.get("tooBig") is True:
        return []
    event_us = event_time_us(body.get("time")) or 0
    head = f'{{"did":{_dumps(did)},"time_us":'
    blocks: dict[CID, bytes] | None = None
    out: list[JetstreamMessage] = []
    for op in ops:
        if type(op) is not dict:
            continue
        action, path, cid = op.get("action"), op.get("path"), op.get("cid")
        if action not in ("create", "update", "delete") or type(path) is not str:
            continue
        collection, sep, rkey = path.partition("/")
        if not sep:
            continue
        commit: dict[str, Any] = {
            "rev": rev,
            "operation": action,
            "collection": collection,
            "rkey": rkey,
        }
        if action != "delete":
            if type(cid) is not CID:
                continue
            if blocks is None:
                raw = body.get("blocks")
                try:
                    blocks = dict(CarReader(raw if type(raw) is bytes else b""))
                except RoostError as exc:
                    logger.warning("jetstream: unreadable commit blocks did=%s: %s", did,
                                   exc.message)
                    blocks = {}
            data = blocks.get(cid)
            if data is None:
                logger.warning("jetstream: record block missing did=%s path=%s", did, path)
                continue
            try:
                record = cbor.to_json(cbor.decode(data))
            except RoostError as exc:
                logger.warning("jetstream: undecodable record did=%s path=%s: %s", did, path,
                               exc.message)
                continue
            commit["record"] = record
            commit["cid"] = str(cid)
        tail = f',"kind":"commit","commit":{_dumps(commit)}}}'
        out.append(JetstreamMessage(did, collection, event_us, head, tail))
    return out


class _Conversions:
    """Frame -> messages, remembered for the most recent frames (bounded in count and bytes)."""

    def __init__(self, entries: int, max_bytes: int = CONVERSION_CACHE_BYTES) -> None:
        self._entries = entries
        self._max_bytes = max_bytes
        self._bytes = 0
        self._cache: OrderedDict[bytes, tuple[list[JetstreamMessage], int]] = OrderedDict()

    def get(self, frame: bytes) -> list[JetstreamMessage]:
        cache = self._cache
        hit = cache.get(frame)
        if hit is not None:
            cache.move_to_end(frame)
            return hit[0]
        try:
            messages = jetstream_messages(frame)
        except RoostError as exc:
            logger.warning("jetstream: skipping a malformed frame: %s", exc.message)
            messages = []
        size = len(frame) + sum(len(m.head) + len(m.tail) for m in messages)
        cache[frame] = (messages, size)
        self._bytes += size
        while cache and (len(cache) > self._entries or self._bytes > self._max_bytes):
            _, (_, dropped) = cache.popitem(last=False)
            self._bytes -= dropped
        return messages


# -- the route -------------------------------------------------------------------------------

SequencerSource = Sequencer | Callable[[WebSocket], Sequencer]


def jetstream_route(
    sequencer: SequencerSource,
    event_log: EventLog | None = None,
    *,
    path: str = JETSTREAM_PATH,
    cache_entries: int = CONVERSION_CACHE_ENTRIES,
) -> WebSocketRoute:
    """A WebSocket route serving Jetstream at ``path`` from ``sequencer``.

    ``sequencer`` may be a function of the connection returning it (for
    apps that build their sequencer in the lifespan, e.g.
    ``lambda ws: ws.app.state.relay.sequencer``). ``event_log`` defaults to
    the sequencer's own log.
    """
    conversions = _Conversions(cache_entries)

    async def endpoint(ws: WebSocket) -> None:
        try:
            options, cursor, hello = _request_options(ws)
        except RoostError as exc:
            await _refuse(ws, exc)
            return
        source = sequencer if isinstance(sequencer, Sequencer) else sequencer(ws)
        log = event_log if event_log is not None else source.log
        await ws.accept()
        await _Stream(ws, source, log, conversions, options, cursor, hello).run()

    return WebSocketRoute(path, endpoint, name="jetstream")


def _request_options(ws: WebSocket) -> tuple[JetstreamOptions, int | None, bool]:
    query = ws.query_params
    options = JetstreamOptions.parse(
        query.getlist("wantedCollections"),
        query.getlist("wantedDids"),
        query.get("maxMessageSizeBytes", "0"),
    )
    cursor: int | None = None
    raw = query.get("cursor")
    if raw:
        try:
            cursor = int(raw)
        except ValueError:
            raise InvalidOptions(f"invalid cursor: {raw[:40]}") from None
    encoding = ws.headers.get("socket-encoding", "")
    if query.get("compress") == "true" or "zstd" in encoding:
        raise InvalidOptions("zstd compression is not supported here: connect without it")
    return options, cursor, query.get("requireHello") == "true"


async def _refuse(ws: WebSocket, exc: RoostError) -> None:
    """Answer 400 with the XRPC error body where the server can; else close 1008."""
    if "websocket.http.response" in ws.scope.get("extensions", {}):
        await ws.send_denial_response(error_response(exc))
        return
    await ws.accept()
    with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
        await ws.close(1008, exc.message[:120])


class _Stream:
    """One subscriber: the producer task streams, the reader task takes option updates."""

    def __init__(
        self,
        ws: WebSocket,
        sequencer: Sequencer,
        log: EventLog,
        conversions: _Conversions,
        options: JetstreamOptions,
        cursor: int | None,
        require_hello: bool,
    ) -> None:
        self.ws = ws
        self.sequencer = sequencer
        self.log = log
        self.conversions = conversions
        self.options = options
        self.cursor = cursor
        self.hello = asyncio.Event()
        if not require_hello:
            self.hello.set()

    async def run(self) -> None:
        producer = asyncio.ensure_future(self._produce())
        reader = asyncio.ensure_future(self._read())
        try:
            await asyncio.wait({producer, reader}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (producer, reader):
                if not task.done():
                    task.cancel()
            for task in (producer, reader):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    async def _close(self, code: int, reason: str) -> None:
        with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
            await self.ws.close(code, reason)

    async def _start_seq(self) -> int | None:
        """The subscribeRepos cursor for this stream's time cursor (None: live)."""
        cursor = self.cursor
        if cursor is None or cursor > time.time_ns() // 1000:
            return None
        latest = await self.log.latest_seq()
        first = await self.log.oldest_seq_since(max(0, cursor // 1000 - CURSOR_SLACK_MS))
        if first is None:
            return latest
        return max(first - 1, 0)

    async def _produce(self) -> None:
        await self.hello.wait()
        start = await self._start_seq()
        stream = self.sequencer.subscribe(start, stuck_task=asyncio.current_task())
        cursor = self.cursor if start is not None else None
        last_us = 0
        ws = self.ws
        try:
            async for frame in stream:
                for message in self.conversions.get(frame):
                    time_us = message.event_us if message.event_us > last_us else last_us + 1
                    last_us = time_us
                    if cursor is not None and time_us < cursor:
                        continue
                    options = self.options
                    if not options.wants(message.did, message.collection):
                        continue
                    text = message.text(time_us)
                    limit = options.max_message_bytes
                    if limit and len(text.encode("utf-8")) > limit:
                        continue
                    await ws.send_text(text)
        except ConsumerTooSlow:
            await self._close(1008, "ConsumerTooSlow")
            return
        except FutureCursor:  # the log was reset under us: start over live
            await self._close(1011, "FutureCursor")
            return
        except (WebSocketDisconnect, OSError):
            return
        finally:
            await stream.aclose()
        await self._close(1001, "server shutting down")

    async def _read(self) -> None:
        """Client messages: option updates (text); everything else is ignored."""
        while True:
            message = await self.ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            text = message.get("text")
            if text is None:
                continue
            if len(text) > MAX_CLIENT_MESSAGE_BYTES:
                await self._close(1009, "message too large")
                return
            try:
                options = _options_update(text)
            except InvalidOptions as exc:
                await self._close(1008, exc.message[:120])
                return
            if options is not None:
                self.options = options
                self.hello.set()


def _options_update(text: str) -> JetstreamOptions | None:
    """The new options of an ``options_update`` message; None for other message types."""
    try:
        message = json.loads(text)
    except ValueError:
        raise InvalidOptions("client message is not JSON") from None
    if not isinstance(message, dict):
        raise InvalidOptions("client message is not a JSON object")
    if message.get("type") != "options_update":
        logger.info("jetstream: ignoring a client message of type %r", message.get("type"))
        return None
    payload = message.get("payload")
    if not isinstance(payload, dict):
        raise InvalidOptions("options_update needs a payload object")
    collections = payload.get("wantedCollections") or None
    dids = payload.get("wantedDids") or None
    for value in (collections, dids):
        if value is not None and not isinstance(value, list):
            raise InvalidOptions("wantedCollections and wantedDids must be arrays")
    return JetstreamOptions.parse(collections, dids, payload.get("maxMessageSizeBytes", 0))
