"""TIDs: timestamp identifiers, and a monotonic clock that makes them.

A TID is a 64-bit unsigned integer written as 13 characters of the
base32-sortable alphabet ``234567abcdefghijklmnopqrstuvwxyz`` (digit value =
index, most significant first, no padding)::

    bit 63      bits 62..10                      bits 9..0
    0           microseconds since the UNIX epoch  clock id (0..1023)

so ``value = (timestamp_us << 10) | clock_id`` and string order is numeric
order is chronological order. TIDs are record keys for most records and the
``rev`` of every repo commit.

Syntax (the Lexicon ``tid`` format) is looser than the layout: the first
character may be any of ``234567abcdefghij`` (the regex of the spec), which
admits values with the top bit set (first character ``c``..``j``). We accept
what the syntax accepts and generate only what the layout allows
(timestamps below 2**53).

:class:`TidClock` is the generator: one random clock id per instance,
timestamps strictly increasing even when the wall clock steps back, and
:meth:`TidClock.next_after` for repo revisions ("if now is not after the
previous rev, use previous + 1").
"""

from __future__ import annotations

import datetime as _dt
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeGuard

from roost.errors import InvalidTid

__all__ = [
    "TID_ALPHABET",
    "TID_LENGTH",
    "MAX_TID_TIMESTAMP_US",
    "Tid",
    "TidClock",
    "parse_tid",
    "is_valid_tid",
    "ensure_tid",
]

#: The base32-sortable alphabet; a character's value is its index.
TID_ALPHABET = "234567abcdefghijklmnopqrstuvwxyz"
#: Every TID string has exactly this many characters.
TID_LENGTH = 13
#: Largest timestamp the layout allows (53 bits, top bit of the TID zero).
MAX_TID_TIMESTAMP_US = (1 << 53) - 1
#: Largest timestamp any syntactically valid TID carries (first char ``j``).
_MAX_SYNTAX_TIMESTAMP_US = (1 << 54) - 1

_CLOCK_ID_LIMIT = 1024
_TID_MATCH = re.compile(r"[234567abcdefghij][234567abcdefghijklmnopqrstuvwxyz]{12}").fullmatch
# Python's int(x, 32) reads 0-9a-v; map the sortable alphabet onto it.
_TO_INT32 = str.maketrans(TID_ALPHABET, "0123456789abcdefghijklmnopqrstuv")
_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.UTC)


def is_valid_tid(s: object) -> TypeGuard[str]:
    """True if ``s`` is a string in TID syntax; never raises."""
    return isinstance(s, str) and len(s) == TID_LENGTH and _TID_MATCH(s) is not None


def _tid_error(s: object) -> str:
    """Name the rule an invalid TID breaks."""
    if not isinstance(s, str):
        return f"TID must be a string, not {type(s).__name__}"
    if len(s) != TID_LENGTH:
        return f"TID must be exactly {TID_LENGTH} characters (got {len(s)})"
    if any(c not in TID_ALPHABET for c in s):
        return "TID contains a character outside the base32-sortable alphabet 234567a-z"
    return "TID must start with one of 234567abcdefghij (the top bit must be zero)"


def ensure_tid(s: object) -> str:
    """Return ``s`` if it is a valid TID string, else raise :class:`InvalidTid`."""
    if is_valid_tid(s):
        return s
    raise InvalidTid(_tid_error(s), s)


def _encode(value: int) -> str:
    chars = []
    for _ in range(TID_LENGTH):
        chars.append(TID_ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(chars))


@dataclass(frozen=True, slots=True, order=True)
class Tid:
    """A timestamp identifier; ``str()`` is the 13-character form.

    Compare TIDs with ``<``/``==``: the order is numeric, which is also the
    order of their strings and of their timestamps.
    """

    #: The 64-bit integer value.
    value: int
    _text: str = field(default="", repr=False, compare=False)

    def __post_init__(self) -> None:
        value = self.value
        if type(value) is not int or not 0 <= value < (1 << 64):
            raise InvalidTid("TID value must be an integer in 0 .. 2**64-1", value)
        if value >> 10 > _MAX_SYNTAX_TIMESTAMP_US:
            raise InvalidTid("TID value does not fit the 13-character form", value)
        text = _encode(value)
        if self._text and self._text != text:
            raise InvalidTid("TID text does not match its value", self._text)
        object.__setattr__(self, "_text", text)

    @classmethod
    def parse(cls, s: str | Tid) -> Tid:
        """Parse a TID string (a :class:`Tid` is returned as is)."""
        if isinstance(s, Tid):
            return s
        if not is_valid_tid(s):
            raise InvalidTid(_tid_error(s), s)
        obj = object.__new__(cls)
        object.__setattr__(obj, "value", int(s.translate(_TO_INT32), 32))
        object.__setattr__(obj, "_text", s)
        return obj

    @classmethod
    def from_parts(cls, timestamp_us: int, clock_id: int) -> Tid:
        """Build a TID from microseconds since the epoch and a clock id (0..1023)."""
        if type(clock_id) is not int or not 0 <= clock_id < _CLOCK_ID_LIMIT:
            raise InvalidTid("TID clock id must be an integer in 0..1023", clock_id)
        if type(timestamp_us) is not int or not 0 <= timestamp_us <= _MAX_SYNTAX_TIMESTAMP_US:
            raise InvalidTid("TID timestamp must be an integer in 0..2**54-1 microseconds",
                             timestamp_us)
        value = (timestamp_us << 10) | clock_id
        obj = object.__new__(cls)
        object.__setattr__(obj, "value", value)
        object.__setattr__(obj, "_text", _encode(value))
        return obj

    @property
    def timestamp_us(self) -> int:
        """Microseconds since the UNIX epoch."""
        return self.value >> 10

    @property
    def clock_id(self) -> int:
        """The 10-bit clock identifier (0..1023)."""
        return self.value & 1023

    def to_datetime(self) -> _dt.datetime:
        """The timestamp as an aware UTC :class:`datetime.datetime` (microsecond exact)."""
        return _EPOCH + _dt.timedelta(microseconds=self.value >> 10)

    def __str__(self) -> str:
        return self._text

    def __repr__(self) -> str:
        return f"Tid({self._text!r})"


def parse_tid(s: str | Tid) -> Tid:
    """Parse a TID string; raise :class:`InvalidTid` if it is malformed."""
    return Tid.parse(s)


def _wall_clock_us() -> int:
    return time.time_ns() // 1000


class TidClock:
    """A thread-safe generator of strictly increasing TIDs.

    ``clock_id`` defaults to a random value in 0..1023; ``now_us`` (a callable
    returning microseconds since the epoch) defaults to the wall clock and can
    be replaced in tests. Output never repeats and never goes backwards within
    one instance, even when ``now_us`` does: the timestamp used is
    ``max(now, last + 1)``.
    """

    __slots__ = ("_clock_id", "_last_us", "_lock", "_now_us")

    def __init__(
        self,
        clock_id: int | None = None,
        now_us: Callable[[], int] | None = None,
    ) -> None:
        if clock_id is None:
            clock_id = secrets.randbelow(_CLOCK_ID_LIMIT)
        elif type(clock_id) is not int or not 0 <= clock_id < _CLOCK_ID_LIMIT:
            raise ValueError("clock_id must be an integer in 0..1023")
        self._clock_id = clock_id
        self._now_us = now_us if now_us is not None else _wall_clock_us
        self._last_us = -1
        self._lock = threading.Lock()

    @property
    def clock_id(self) -> int:
        return self._clock_id

    def _advance(self, floor_us: int) -> Tid:
        now = int(self._now_us())
        with self._lock:
            ts = max(now, self._last_us + 1, floor_us)
            if ts > MAX_TID_TIMESTAMP_US:
                raise InvalidTid("TID clock ran past the largest timestamp (2**53-1 us)", ts)
            self._last_us = ts
        return Tid.from_parts(ts, self._clock_id)

    def next(self) -> Tid:
        """The next TID: later than every TID this clock made before."""
        return self._advance(0)

    def next_str(self) -> str:
        """:meth:`next` as a string."""
        return str(self._advance(0))

    def next_after(self, previous: str | Tid | None) -> Tid:
        """A TID greater than both :meth:`next` would give and ``previous``.

        For repo revisions: if the clock is not past ``previous`` (a rev from
        an earlier commit, possibly made on another host with a faster clock),
        use ``previous``'s timestamp + 1 µs. ``None`` means no previous rev.
        """
        if previous is None:
            return self._advance(0)
        prev = Tid.parse(previous)
        return self._advance(prev.timestamp_us + 1)
