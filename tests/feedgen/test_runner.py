"""Running algorithms: time limits, crashes and bad pages become clear errors; the rest goes on."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from feedgen.plugins import Feed, FeedPage, FeedRequest, Registry, SkeletonItem, algorithm
from feedgen.runner import (
    MAX_STUCK_PER_FEED,
    AlgorithmBusy,
    AlgorithmFailed,
    AlgorithmTimeout,
    Runner,
)
from roost.errors import AuthRequired

PUB = "did:plc:publisher"
POST = "at://did:plc:a/app.bsky.feed.post/1"
release = threading.Event()


@algorithm()
def fine(index: Any, request: FeedRequest) -> FeedPage:
    return FeedPage([POST, SkeletonItem(POST, "at://did:plc:b/app.bsky.feed.repost/2", "ctx")],
                    cursor="next", content_language="en")


@algorithm()
def stuck(index: Any, request: FeedRequest) -> FeedPage:
    release.wait(30)
    return FeedPage([])


@algorithm()
def crashes(index: Any, request: FeedRequest) -> FeedPage:
    raise KeyError("secret detail")


@algorithm()
def personal(index: Any, request: FeedRequest) -> FeedPage:
    raise AuthRequired("sign in")


@algorithm()
async def waits(index: Any, request: FeedRequest) -> FeedPage:
    await asyncio.sleep(float(request.options.get("sleep", 0)))
    return FeedPage([POST])


BAD_RESULTS: dict[str, Any] = {
    "not-a-page": [POST],
    "too-many": FeedPage([POST] * 3),
    "not-a-post": FeedPage(["at://did:plc:a/app.bsky.feed.like/1"]),
    "bad-uri": FeedPage(['at://alice.test/app.bsky.feed.post/1"x']),
    "bad-repost": FeedPage([SkeletonItem(POST, "https://example.com")]),
    "long-context": FeedPage([SkeletonItem(POST, feed_context="x" * 2001)]),
    "empty-cursor": FeedPage([POST], cursor=""),
    "odd-item": FeedPage([42]),  # type: ignore[list-item]
}


def _feed(target: Any, rkey: str | None = None, **options: Any) -> Feed:
    registry = Registry()
    algo = registry.add(target)
    return Feed.build(algo, publisher=PUB, rkey=rkey or algo.name, options=options)


def _request(limit: int = 2, **options: Any) -> FeedRequest:
    return FeedRequest(feed="at://x", requester=None, limit=limit, options=options)


@pytest.fixture
def runner() -> Iterator[Runner]:
    release.clear()
    r = Runner(object(), timeout=0.2, threads=4)  # type: ignore[arg-type]
    yield r
    release.set()
    r.close()


async def test_a_good_page_becomes_the_skeleton(runner: Runner) -> None:
    raw, language = await runner.run(_feed(fine), _request())
    body = json.loads(raw)
    assert body == {
        "feed": [
            {"post": POST},
            {"post": POST, "feedContext": "ctx",
             "reason": {"$type": "app.bsky.feed.defs#skeletonReasonRepost",
                        "repost": "at://did:plc:b/app.bsky.feed.repost/2"}},
        ],
        "cursor": "next",
    }
    assert language == "en"


async def test_crashes_hide_their_detail_and_name_the_feed(runner: Runner) -> None:
    with pytest.raises(AlgorithmFailed) as caught:
        await runner.run(_feed(crashes), _request())
    assert caught.value.status == 502
    assert "crashes" in caught.value.message and "KeyError" in caught.value.message
    assert "secret detail" not in caught.value.message


async def test_typed_errors_pass_through(runner: Runner) -> None:
    with pytest.raises(AuthRequired):
        await runner.run(_feed(personal), _request())


@pytest.mark.parametrize("name", sorted(BAD_RESULTS))
async def test_bad_pages_are_explained(runner: Runner, name: str) -> None:
    result = BAD_RESULTS[name]
    feed = _feed(lambda index, request: result, rkey=name)
    with pytest.raises(AlgorithmFailed, match=f"feed {name}"):
        await runner.run(feed, _request(limit=2))


async def test_slow_algorithms_time_out_then_are_refused_while_others_are_served(
    runner: Runner,
) -> None:
    slow, ok = _feed(stuck), _feed(fine)
    for _ in range(MAX_STUCK_PER_FEED):
        with pytest.raises(AlgorithmTimeout, match="within 0.2 s"):
            await runner.run(slow, _request())
    with pytest.raises(AlgorithmBusy) as caught:
        await runner.run(slow, _request())
    assert caught.value.status == 503
    assert runner.retired_pools == 1  # half the pool was stuck: a fresh one took over
    raw, _ = await runner.run(ok, _request())
    assert len(json.loads(raw)["feed"]) == 2
    release.set()
    for _ in range(100):
        if runner.stuck(slow) == 0:
            break
        await asyncio.sleep(0.02)
    assert runner.stuck(slow) == 0
    release.clear()
    assert json.loads((await runner.run(ok, _request()))[0])["cursor"] == "next"


async def test_async_algorithms_share_the_time_limit(runner: Runner) -> None:
    feed = _feed(waits)
    assert feed.is_async
    raw, _ = await runner.run(feed, _request())
    assert json.loads(raw) == {"feed": [{"post": POST}]}
    with pytest.raises(AlgorithmTimeout):
        await runner.run(feed, _request(sleep=5))


async def test_unusual_strings_are_escaped_and_the_answer_fits_the_lexicon(runner: Runner) -> None:
    from roost.lexicon import Catalog

    odd = "at://alice.test/app.bsky.feed.post/1"
    context = 'quote " backslash \\ newline \n ünïcode'
    page = FeedPage([SkeletonItem(odd, feed_context=context), POST], cursor='c"1',
                    content_language="en")
    raw, _ = await runner.run(_feed(lambda index, request: page, rkey="odd"), _request())
    body = json.loads(raw)
    assert body == {"feed": [{"post": odd, "feedContext": context}, {"post": POST}], "cursor": 'c"1'}
    Catalog.load().validate_output("app.bsky.feed.getFeedSkeleton", body)


async def test_shared_feeds_reuse_recent_answers_personal_ones_never() -> None:
    calls: list[str] = []

    @algorithm(shared=True)
    def everyone(index: Any, request: FeedRequest) -> FeedPage:
        calls.append("shared")
        return FeedPage([POST])

    @algorithm()
    def personal_page(index: Any, request: FeedRequest) -> FeedPage:
        calls.append("personal")
        return FeedPage([POST])

    runner = Runner(object(), timeout=1, threads=1, cache_ttl=60)  # type: ignore[arg-type]
    try:
        shared, mine = _feed(everyone), _feed(personal_page)
        assert shared.shared and not mine.shared
        for _ in range(3):
            await runner.run(shared, _request())
            await runner.run(mine, _request())
        await runner.run(shared, FeedRequest(feed="at://x", requester=None, limit=2, cursor="c"))
        assert calls.count("shared") == 2 and calls.count("personal") == 3
    finally:
        runner.close()


def test_the_page_cache_expires_and_stays_bounded() -> None:
    from feedgen.runner import PageCache

    now = [0.0]
    cache = PageCache(1.0, max_entries=2, clock=lambda: now[0])
    cache.put(("a",), (b"1", None))
    assert cache.get(("a",)) == (b"1", None)
    now[0] = 1.5
    assert cache.get(("a",)) is None
    cache.put(("a",), (b"1", None))
    cache.put(("b",), (b"2", None))
    cache.put(("c",), (b"3", None))
    assert cache.get(("a",)) is None and cache.get(("c",)) == (b"3", None)
