"""Running feed algorithms with a time limit, so a broken plugin cannot take the server down.

Synchronous algorithms run in a pool of worker threads; the request waits
at most ``timeout`` seconds. (Built-in algorithms marked ``inline``, whose
every call is a few bounded index reads, run on the event loop instead:
handing them to a thread would cost more than running them.) A thread cannot be stopped, so a call that
timed out keeps its thread until it returns: each feed may have at most
:data:`MAX_STUCK_PER_FEED` such calls (further requests are refused at once
with ``503 AlgorithmBusy``), and when stuck calls hold half the pool it is
replaced by a fresh one (the old threads end as their calls return), so the
other feeds keep being served. ``async def`` algorithms are awaited on the
event loop under the same limit (they must not block the loop).

Errors, as the client sees them:

- the algorithm raised a :class:`~roost.errors.RoostError` (a bad cursor, a
  personal feed without a requester): passed through unchanged;
- it raised anything else: ``502 AlgorithmFailed`` naming the feed and the
  exception type (the traceback goes to the log);
- it returned something that is not a valid page: ``502 AlgorithmFailed``
  saying what is wrong;
- it took too long: ``504 AlgorithmTimeout``.

Answers of *shared* feeds (whose answer does not depend on the reader) are
kept for a short while (:class:`PageCache`) and served again to anyone
asking the same page.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Final

from roost.errors import RoostError, UpstreamFailure, UpstreamTimeout
from roost.syntax import is_valid_at_uri

from feedgen.plugins import Feed, FeedPage, FeedRequest, SkeletonItem
from feedgen.storage import FeedItem, IndexReader

__all__ = [
    "MAX_FEED_CONTEXT",
    "MAX_STUCK_PER_FEED",
    "AlgorithmBusy",
    "AlgorithmFailed",
    "AlgorithmTimeout",
    "PageCache",
    "Runner",
    "skeleton",
]

log = logging.getLogger(__name__)

#: Calls of one feed that may still be running after their timeout.
MAX_STUCK_PER_FEED: Final = 2
#: ``feedContext`` limit (lexicon: 2000 characters).
MAX_FEED_CONTEXT: Final = 2_000
#: Longest cursor an algorithm may hand out.
MAX_CURSOR_CHARS: Final = 2_000
#: Longest AT-URI we pass on.
MAX_URI_CHARS: Final = 8_192

_POST_PATH: Final = "/app.bsky.feed.post/"
_REPOST_PATH: Final = "/app.bsky.feed.repost/"
_REPOST_REASON: Final = "app.bsky.feed.defs#skeletonReasonRepost"


class AlgorithmFailed(UpstreamFailure):
    """The feed's algorithm raised, or returned something that is not a page (502)."""

    error = "AlgorithmFailed"


class AlgorithmTimeout(UpstreamTimeout):
    """The feed's algorithm did not answer in time (504)."""

    error = "AlgorithmTimeout"


class AlgorithmBusy(RoostError):
    """Earlier calls of this feed are still running past their time limit (503)."""

    error = "AlgorithmBusy"
    status = 503


def _is_post_uri(value: object) -> bool:
    return (
        type(value) is str
        and len(value) <= MAX_URI_CHARS
        and _POST_PATH in value
        and is_valid_at_uri(value)
    )


# Post URIs as feeds produce them (a DID authority, a record key): valid, and
# needing no JSON escaping, so they are copied into the answer as they are.
_PLAIN_POST: Final = re.compile(
    r"at://did:[a-z]+:[A-Za-z0-9._:%-]{1,2048}/app\.bsky\.feed\.post/[A-Za-z0-9._:~-]{1,512}"
)


def _json(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)


_PLAIN_POSTS: Final = re.compile(f"(?:{_PLAIN_POST.pattern}\n)*{_PLAIN_POST.pattern}")
_PLAIN_REPOST: Final = _PLAIN_POST.pattern.replace(r"feed\.post/", r"feed\.repost/")
_PLAIN_REPOSTS: Final = re.compile(f"(?:{_PLAIN_REPOST}\n)*{_PLAIN_REPOST}")


def _plain_entries(items: Sequence[object]) -> str | None:
    """The ``feed`` entries of a page of plain items (strings, or FeedItems: posts and
    reposts) when every URI in it can be copied into the answer as it is; else None."""
    if not items:
        return None
    first = type(items[0])
    reposts: list[tuple[int, str]] = []
    if first is str:
        posts = items
        if any(type(i) is not str for i in posts):
            return None
    elif first is FeedItem:
        if any(type(i) is not FeedItem for i in items):
            return None
        posts = [i[0] for i in items]  # type: ignore[index]
        reposts = [(n, i[3]) for n, i in enumerate(items) if i[3] is not None]  # type: ignore[index]
        if reposts and (
            any(type(r) is not str for _, r in reposts)
            or not _PLAIN_REPOSTS.fullmatch("\n".join(r for _, r in reposts))
        ):
            return None
    else:
        return None
    if any(type(p) is not str for p in posts) or not _PLAIN_POSTS.fullmatch("\n".join(posts)):  # type: ignore[arg-type]
        return None
    if not reposts:
        return '{"post":"' + '"},{"post":"'.join(posts) + '"}'  # type: ignore[arg-type]
    entries = ['{"post":"' + post + '"}' for post in posts]  # type: ignore[operator]
    for n, repost in reposts:
        entries[n] = (f'{{"post":"{posts[n]}","reason":{{"$type":"{_REPOST_REASON}",'
                      f'"repost":"{repost}"}}}}')
    return ",".join(entries)


def skeleton(feed: Feed, result: object, limit: int) -> tuple[bytes, str | None]:
    """The getFeedSkeleton answer (JSON bytes) for an algorithm's result, and its
    Content-Language. Raises :class:`AlgorithmFailed` explaining what is wrong with it."""
    name = f"feed {feed.rkey} ({feed.algorithm.name})"
    if not isinstance(result, FeedPage):
        raise AlgorithmFailed(f"{name} returned {type(result).__name__}, not a FeedPage")
    items = result.items
    if isinstance(items, (str, bytes)) or not hasattr(items, "__len__"):
        raise AlgorithmFailed(f"{name} returned items that are not a list")
    if len(items) > limit:
        raise AlgorithmFailed(f"{name} returned {len(items)} items for a limit of {limit}")
    plain = _PLAIN_POST.fullmatch
    parts: list[str] = []
    fast = _plain_entries(items)
    if fast is not None:  # the common page: a regex and a join for all of it
        parts.append(fast)
        items = ()
    for item in items:
        kind = type(item)
        if kind is FeedItem:
            post, repost, context = item[0], item[3], None  # type: ignore[index]
        elif kind is SkeletonItem:
            post, repost, context = item.post, item.repost, item.feed_context  # type: ignore[union-attr]
        elif kind is str:
            post, repost, context = item, None, None
        else:
            raise AlgorithmFailed(f"{name} returned a {kind.__name__} item")
        if type(post) is str and plain(post):
            text = '{"post":"' + post
        elif _is_post_uri(post):
            text = '{"post":' + _json(post)[:-1]
        else:
            raise AlgorithmFailed(f"{name} returned {str(post)[:100]!r}, not a post AT-URI")
        if repost is None and context is None:
            parts.append(text + '"}')
            continue
        entry = text + '"'
        if repost is not None:
            if type(repost) is not str or _REPOST_PATH not in repost or not is_valid_at_uri(repost):
                raise AlgorithmFailed(f"{name} returned a bad repost URI {str(repost)[:100]!r}")
            entry += f',"reason":{{"$type":"{_REPOST_REASON}","repost":{_json(repost)}}}'
        if context is not None:
            if type(context) is not str or len(context) > MAX_FEED_CONTEXT:
                raise AlgorithmFailed(f"{name} returned a feedContext that is too long or not text")
            entry += ',"feedContext":' + _json(context)
        parts.append(entry + "}")
    body = '{"feed":[' + ",".join(parts) + "]"
    cursor = result.cursor
    if cursor is not None:
        if type(cursor) is not str or not cursor or len(cursor) > MAX_CURSOR_CHARS:
            raise AlgorithmFailed(f"{name} returned a cursor that is empty, too long or not text")
        body += ',"cursor":' + _json(cursor)
    language = result.content_language
    if language is not None and (type(language) is not str or len(language) > 200):
        raise AlgorithmFailed(f"{name} returned a bad content_language")
    return (body + "}").encode("utf-8"), language


Answer = tuple[bytes, "str | None"]


class PageCache:
    """Recent answers of shared feeds (the same for every reader), for ``ttl`` seconds.

    Many readers of one feed ask for the same first pages within a second; a
    shared feed's answer to ``(feed, limit, cursor, languages)`` is computed
    once and served again until it is ``ttl`` old (readers may see posts up to
    ``ttl`` late; cursors stay exact, since keys never change). Bounded: the
    oldest entries go first.
    """

    def __init__(
        self, ttl: float, *, max_entries: int = 10_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[tuple[Any, ...], tuple[float, Answer]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, key: tuple[Any, ...]) -> Answer | None:
        entry = self._entries.get(key)
        if entry is not None and self._clock() < entry[0]:
            self.hits += 1
            return entry[1]
        self.misses += 1
        return None

    def put(self, key: tuple[Any, ...], answer: Answer) -> None:
        entries = self._entries
        entries[key] = (self._clock() + self.ttl, answer)
        entries.move_to_end(key)
        while len(entries) > self.max_entries:
            entries.popitem(last=False)


class Runner:
    """Calls feed algorithms under ``timeout`` seconds with ``threads`` workers.

    ``cache_ttl``: seconds a shared feed's answer is reused (0: never).
    """

    def __init__(
        self,
        index: IndexReader,
        *,
        timeout: float = 2.0,
        threads: int = 4,
        cache_ttl: float = 0.0,
    ) -> None:
        if timeout <= 0 or threads < 1 or cache_ttl < 0:
            raise ValueError("timeout must be positive, threads at least 1, cache_ttl >= 0")
        self.index = index
        #: Reads wait on a database server (PostgreSQL): never run them on the loop.
        self._blocking = bool(getattr(index, "blocking", False))
        self.timeout = timeout
        self.threads = threads
        self.cache = PageCache(cache_ttl) if cache_ttl > 0 else None
        self._pool = self._new_pool()
        self._lock = threading.Lock()
        self._stuck: dict[str, int] = {}
        self._pool_stuck = 0
        self.retired_pools = 0

    def _new_pool(self) -> ThreadPoolExecutor:
        return ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="feed-algorithm")

    def stuck(self, feed: Feed) -> int:
        with self._lock:
            return self._stuck.get(feed.uri, 0)

    async def run(self, feed: Feed, request: FeedRequest) -> Answer:
        """The skeleton for ``request`` (see :func:`skeleton`)."""
        cache = self.cache
        if cache is None or not feed.shared:
            return await self._run(feed, request)
        key = (feed.uri, request.limit, request.cursor, request.languages)
        answer = cache.get(key)
        if answer is None:
            answer = await self._run(feed, request)
            cache.put(key, answer)
        return answer

    async def _run(self, feed: Feed, request: FeedRequest) -> Answer:
        if self.stuck(feed) >= MAX_STUCK_PER_FEED:
            raise AlgorithmBusy(
                f"feed {feed.rkey}: earlier requests are still running past the "
                f"{self.timeout:g} s limit; try again later"
            )
        if feed.is_async:
            result = await self._run_async(feed, request)
        elif feed.algorithm.runs_inline and not self._blocking:
            result = self._run_inline(feed, request)
        else:
            result = await self._run_thread(feed, request)
        return skeleton(feed, result, request.limit)

    def _run_inline(self, feed: Feed, request: FeedRequest) -> object:
        try:
            return feed.handler(self.index, request)
        except RoostError:
            raise
        except Exception as exc:
            raise self._failed(feed, exc) from None

    async def _run_async(self, feed: Feed, request: FeedRequest) -> object:
        try:
            return await asyncio.wait_for(feed.handler(self.index, request), self.timeout)
        except TimeoutError:
            raise self._timeout(feed) from None
        except RoostError:
            raise
        except Exception as exc:
            raise self._failed(feed, exc) from None

    async def _run_thread(self, feed: Feed, request: FeedRequest) -> object:
        pool = self._pool
        future: Future[object] = pool.submit(feed.handler, self.index, request)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), self.timeout)
        except TimeoutError:
            self._abandon(feed, pool, future)
            raise self._timeout(feed) from None
        except RoostError:
            raise
        except Exception as exc:
            raise self._failed(feed, exc) from None

    def _abandon(self, feed: Feed, pool: ThreadPoolExecutor, future: Future[object]) -> None:
        """Count a call still running past its limit until it returns."""
        if future.cancel():  # never started: nothing is stuck
            return
        with self._lock:
            self._stuck[feed.uri] = self._stuck.get(feed.uri, 0) + 1
            if pool is self._pool:
                self._pool_stuck += 1
                if self._pool_stuck * 2 >= self.threads:
                    log.warning("feed algorithm pool has %d stuck calls: starting a new pool",
                                self._pool_stuck)
                    self._pool = self._new_pool()
                    self._pool_stuck = 0
                    self.retired_pools += 1
                    pool.shutdown(wait=False)

        def done(_: Future[object]) -> None:
            with self._lock:
                left = self._stuck.get(feed.uri, 1) - 1
                if left > 0:
                    self._stuck[feed.uri] = left
                else:
                    self._stuck.pop(feed.uri, None)
                if pool is self._pool:
                    self._pool_stuck = max(0, self._pool_stuck - 1)

        future.add_done_callback(done)

    def _timeout(self, feed: Feed) -> AlgorithmTimeout:
        log.warning("feed algorithm timed out feed=%s algorithm=%s limit=%gs",
                    feed.rkey, feed.algorithm.name, self.timeout)
        return AlgorithmTimeout(
            f"feed {feed.rkey} ({feed.algorithm.name}) did not answer within {self.timeout:g} s"
        )

    def _failed(self, feed: Feed, exc: Exception) -> AlgorithmFailed:
        log.error("feed algorithm failed feed=%s algorithm=%s", feed.rkey, feed.algorithm.name,
                  exc_info=exc)
        return AlgorithmFailed(
            f"feed {feed.rkey} ({feed.algorithm.name}) failed with {type(exc).__name__}; "
            "the feed generator's log has the details"
        )

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
