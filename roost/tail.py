"""``roost firehose tail``: print a firehose, decoded, as it arrives.

Each event becomes one readable line (commits add one indented line per
op) or, with ``--json``, one JSON object per line. A status line goes to
stderr every :data:`STATUS_EVERY_S` seconds (events/s, lag, reconnects).
An event is acknowledged once its lines are written and flushed, so the
cursor printed on exit (Ctrl-C, or a fatal stream error) is the last event
shown: ``--cursor N`` continues right after it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import signal
import sys
import time
import urllib.parse
from typing import Any, Final, TextIO

from roost import cbor
from roost.errors import RoostError
from roost.firehose import (
    Account,
    Commit,
    Event,
    FirehoseDecoder,
    Identity,
    Info,
    Subscription,
    Sync,
    endpoint_url,
    subscribe,
)
from roost.identity import PLC_DIRECTORY_URL

__all__ = ["STATUS_EVERY_S", "event_json", "event_lines", "run_tail"]

#: Seconds between status lines on stderr.
STATUS_EVERY_S: Final = 5.0
#: Longest record shown on a readable line, in characters.
MAX_RECORD_PREVIEW: Final = 300

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


# -- formatting ---------------------------------------------------------------------------


def event_json(event: Event) -> dict[str, Any]:
    """The ``--json`` form of an event (records and CIDs in atproto JSON)."""
    if isinstance(event, Commit):
        return {
            "seq": event.seq,
            "type": "commit",
            "did": event.did,
            "time": event.time,
            "rev": event.rev,
            "since": event.since,
            "commit": str(event.commit),
            "ops": [
                {
                    "action": op.action,
                    "path": op.path,
                    "cid": None if op.cid is None else str(op.cid),
                    "prev": None if op.prev is None else str(op.prev),
                    "record": None if op.record is None else cbor.to_json(op.record),
                }
                for op in event.ops
            ],
        }
    if isinstance(event, Identity):
        return {"seq": event.seq, "type": "identity", "did": event.did, "time": event.time,
                "handle": event.handle}
    if isinstance(event, Account):
        return {"seq": event.seq, "type": "account", "did": event.did, "time": event.time,
                "active": event.active, "status": event.status}
    if isinstance(event, Sync):
        return {"seq": event.seq, "type": "sync", "did": event.did, "time": event.time,
                "rev": event.rev}
    if isinstance(event, Info):
        return {"type": "info", "name": event.name, "message": event.message}
    return {"seq": event.seq, "type": "invalid", "did": event.did, "event": event.type.lstrip("#"),
            "error": type(event.error).__name__, "message": event.error.message}


def event_lines(event: Event) -> list[str]:
    """The readable form of an event: one line, plus one per commit op."""
    if isinstance(event, Commit):
        lines = [f"#{event.seq} commit {event.did} rev {event.rev} ({len(event.ops)} ops) {event.time}"]
        for op in event.ops:
            line = f"    {op.action} {op.path}"
            if op.cid is not None:
                line += f" {op.cid}"
            if op.record is not None:
                line += " " + _preview(_dumps(cbor.to_json(op.record)))
            lines.append(line)
        return lines
    if isinstance(event, Identity):
        return [f"#{event.seq} identity {event.did} handle {event.handle or '-'} {event.time}"]
    if isinstance(event, Account):
        state = "active" if event.active else f"inactive {event.status or '-'}"
        return [f"#{event.seq} account {event.did} {state} {event.time}"]
    if isinstance(event, Sync):
        return [f"#{event.seq} sync {event.did} rev {event.rev} {event.time}"]
    if isinstance(event, Info):
        return [f"info {event.name}: {event.message or ''}".rstrip()]
    return [f"#{event.seq} INVALID {event.type.lstrip('#')} {event.did or '-'}: {event.reason}"]


def _preview(text: str) -> str:
    return text if len(text) <= MAX_RECORD_PREVIEW else text[: MAX_RECORD_PREVIEW - 1] + "…"


def _is_local(url: str) -> bool:
    """Whether ``url`` points at this machine or a private network."""
    host = urllib.parse.urlsplit(url).hostname or ""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    return ip.is_loopback or ip.is_private or ip.is_link_local


# -- the command ----------------------------------------------------------------------------


class _Status:
    """The stderr status line: rewritten in place on a terminal, appended otherwise."""

    def __init__(self, err: TextIO) -> None:
        self.err = err
        self.tty = err.isatty()
        self.at = time.monotonic()
        self.events = 0
        self.shown = False

    def line(self, sub: Subscription) -> str:
        now = time.monotonic()
        rate = (sub.events - self.events) / max(now - self.at, 1e-9)
        self.at, self.events = now, sub.events
        lag = sub.lag_seconds
        return (
            f"seq {sub.last_seq if sub.last_seq is not None else '-'}  events {sub.events}  "
            f"{rate:.1f}/s  lag {'-' if lag is None else f'{lag:.1f}s'}  "
            f"reconnects {sub.reconnects}  invalid {sub.invalid}"
        )

    def show(self, sub: Subscription) -> None:
        text = self.line(sub)
        if self.tty:
            self.err.write("\r\x1b[2K" + text)
        else:
            self.err.write(text + "\n")
        self.err.flush()
        self.shown = True

    def end(self) -> None:
        if self.tty and self.shown:
            self.err.write("\n")


async def _print_events(sub: Subscription, as_json: bool, out: TextIO) -> None:
    async for event in sub:
        if as_json:
            out.write(_dumps(event_json(event)) + "\n")
        else:
            out.write("\n".join(event_lines(event)) + "\n")
        out.flush()
        if event.seq is not None:
            sub.ack(event.seq)


async def _report(sub: Subscription, status: _Status) -> None:
    while True:
        await asyncio.sleep(STATUS_EVERY_S)
        status.show(sub)


async def tail(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """Run the tail until Ctrl-C (exit 0) or a fatal stream error (exit 1)."""
    plc_url = args.plc_url or PLC_DIRECTORY_URL
    sub = subscribe(
        args.url,
        cursor=args.cursor,
        collections=args.collections,
        dids=args.dids,
        verify=args.verify,
        plc_url=plc_url,
        allow_local=_is_local(plc_url),
    )
    status = _Status(err)
    main = asyncio.ensure_future(_print_events(sub, args.json, out))
    reporter = asyncio.ensure_future(_report(sub, status))
    loop = asyncio.get_running_loop()
    interrupted = False

    def interrupt() -> None:
        nonlocal interrupted
        interrupted = True
        main.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, interrupt)
    code = 0
    try:
        await main
    except asyncio.CancelledError:
        if not interrupted:
            raise
    except BrokenPipeError:
        code = 0
    except RoostError as exc:
        err.write(f"roost firehose tail: {type(exc).__name__}: {exc.message}\n")
        code = 1
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        reporter.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reporter
        await sub.close()
        status.end()
        err.write(status.line(sub) + "\n")
        if sub.cursor is not None:
            err.write(f"resume with: --cursor {sub.cursor}\n")
        else:
            err.write("no events received: nothing to resume from\n")
        with contextlib.suppress(BrokenPipeError, ValueError):
            err.flush()
    return code


def run_tail(args: argparse.Namespace) -> int:
    """Entry point for ``roost firehose tail`` (flags parsed by :mod:`roost.cli`)."""
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(message)s")
    try:  # check the flags before starting
        endpoint_url(args.url)
        FirehoseDecoder(collections=args.collections, dids=args.dids)
        if args.cursor is not None and args.cursor < 0:
            raise ValueError("--cursor must not be negative")
    except ValueError as exc:
        print(f"roost firehose tail: {exc}", file=sys.stderr)
        return 2
    try:
        code = asyncio.run(tail(args, sys.stdout, sys.stderr))
    except BrokenPipeError:
        code = 0
    if code == 0:
        try:
            sys.stdout.flush()
        except BrokenPipeError:
            # the reader went away (e.g. piped into head): nothing left to say
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return code
