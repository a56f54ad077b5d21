"""``following``: what the accounts the requester follows posted and reposted.

Personalised: it needs the requester's DID, so it never answers anonymously.
Option ``reposts`` (default true) includes reposts, with the repost as the
item's reason.
"""

from __future__ import annotations

from roost.errors import AuthRequired

from feedgen.plugins import FeedPage, FeedRequest, algorithm, page
from feedgen.storage import IndexReader


@algorithm("following", inline=True)
class Following:
    """Posts and reposts by the accounts you follow, newest first."""

    def __init__(self, *, reposts: bool = True) -> None:
        if not isinstance(reposts, bool):
            raise ValueError("reposts must be true or false")
        self.reposts = reposts

    def __call__(self, index: IndexReader, request: FeedRequest) -> FeedPage:
        if request.requester is None:
            raise AuthRequired("this feed is personal: sign in to read it")
        items = index.following(
            request.requester, request.limit + 1, request.before(), reposts=self.reposts
        )
        return page(items, request.limit)
