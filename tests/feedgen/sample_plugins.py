"""Algorithms used by the plugin tests (imported by name, as a configured plugin would be)."""

from __future__ import annotations

from feedgen.plugins import FeedPage, FeedRequest, algorithm
from feedgen.storage import IndexReader


@algorithm("echo", anonymous=True)
def echo(index: IndexReader, request: FeedRequest) -> FeedPage:
    """Echoes the requester as a post URI."""
    who = request.requester or "did:plc:nobody"
    return FeedPage([f"at://{who}/app.bsky.feed.post/{request.limit}"])


@algorithm()
class Counting:
    """Counts requests; takes a ``start`` option."""

    def __init__(self, *, start: int) -> None:
        if not isinstance(start, int):
            raise ValueError("start must be an integer")
        self.count = start

    def __call__(self, index: IndexReader, request: FeedRequest) -> FeedPage:
        self.count += 1
        return FeedPage([], cursor=str(self.count))


def unlabelled(index: IndexReader, request: FeedRequest) -> FeedPage:
    return FeedPage([])
