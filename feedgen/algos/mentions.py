"""``mentions``: posts that mention an account (``did``, or the requester)."""

from __future__ import annotations

from roost.errors import AuthRequired
from roost.syntax import is_valid_did

from feedgen.plugins import FeedPage, FeedRequest, algorithm, page
from feedgen.storage import IndexReader


@algorithm("mentions", inline=True)
class Mentions:
    """Posts mentioning you (or the account the feed names)."""

    def __init__(self, *, did: str | None = None) -> None:
        if did is not None and not is_valid_did(did):
            raise ValueError("did must be a DID")
        self.did = did
        self.shared = did is not None  # the same answer for everyone only for a named account

    def __call__(self, index: IndexReader, request: FeedRequest) -> FeedPage:
        did = self.did or request.requester
        if did is None:
            raise AuthRequired("this feed is personal: sign in to read it")
        items = index.mentioning(did, request.limit + 1, request.before())
        return page(items, request.limit)
