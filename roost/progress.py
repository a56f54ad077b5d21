"""Progress bars for long command-line work (repo transfers, blob copies, backfills).

A bar redraws one line on a terminal; when the stream is not a terminal (a
log file, CI) it prints a plain line at most every :data:`PLAIN_INTERVAL_S`
seconds and once at the end, so logs stay readable.
"""

from __future__ import annotations

import sys
import time
from types import TracebackType
from typing import Final, TextIO

__all__ = ["PLAIN_INTERVAL_S", "Progress", "format_bytes"]

#: Seconds between plain-text progress lines on a non-terminal stream.
PLAIN_INTERVAL_S: Final = 5.0
_REDRAW_S: Final = 0.1
_WIDTH: Final = 28


def format_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"  # pragma: no cover


class Progress:
    """``with Progress("blobs", total=n) as bar: bar.advance()``."""

    def __init__(
        self, label: str, total: int | None = None, *, unit: str = "",
        stream: TextIO | None = None, byte_counts: bool = False,
    ) -> None:
        self.label = label
        self.total = total
        self.unit = unit
        self.done = 0
        self.stream = stream if stream is not None else sys.stderr
        self.byte_counts = byte_counts
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._started = time.monotonic()
        self._last_draw = 0.0

    def __enter__(self) -> Progress:
        self._draw(force=True)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.finish(failed=exc_type is not None)

    def advance(self, n: int = 1) -> None:
        self.done += n
        self._draw()

    def _count(self, n: float) -> str:
        return format_bytes(n) if self.byte_counts else f"{n:,.0f}"

    def _line(self) -> str:
        elapsed = max(time.monotonic() - self._started, 1e-9)
        rate = self.done / elapsed
        rate_text = (f"{format_bytes(rate)}/s" if self.byte_counts
                     else f"{rate:,.0f} {self.unit}/s".replace(" /s", "/s"))
        if self.total:
            share = min(self.done / self.total, 1.0)
            filled = int(share * _WIDTH)
            bar = "#" * filled + "-" * (_WIDTH - filled)
            return (f"{self.label:<10} [{bar}] {share:6.1%}  "
                    f"{self._count(self.done)}/{self._count(self.total)} {self.unit}  {rate_text}")
        return f"{self.label:<10} {self._count(self.done)} {self.unit}  {rate_text}"

    def _draw(self, force: bool = False) -> None:
        now = time.monotonic()
        interval = _REDRAW_S if self._tty else PLAIN_INTERVAL_S
        if not force and now - self._last_draw < interval:
            return
        self._last_draw = now
        if self._tty:
            self.stream.write("\r" + self._line() + "\x1b[K")
        else:
            self.stream.write(self._line() + "\n")
        self.stream.flush()

    def finish(self, failed: bool = False) -> None:
        end = "  (interrupted)" if failed else ""
        if self._tty:
            self.stream.write("\r" + self._line() + end + "\x1b[K\n")
        else:
            self.stream.write(self._line() + end + "\n")
        self.stream.flush()
