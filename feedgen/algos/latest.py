"""``latest``: the newest posts, of everyone or of a community.

Options: ``authors`` (a list of DIDs) or ``host`` (the ``name[:port]`` of a
PDS: its accounts form the community), and ``replies`` (default true).
Accounts are placed on hosts by ``roost feedgen backfill --host`` and by the
indexer, which resolves the DID of every new author.
"""

from __future__ import annotations

from collections.abc import Sequence

from roost.syntax import is_valid_did

from feedgen.plugins import FeedPage, FeedRequest, algorithm, page
from feedgen.storage import IndexReader

#: Largest ``authors`` list a feed may name.
MAX_AUTHORS = 10_000


@algorithm("latest", anonymous=True, inline=True, shared=True)
class Latest:
    """Newest posts: all, or from chosen accounts or one PDS host."""

    def __init__(
        self,
        *,
        authors: Sequence[str] | None = None,
        host: str | None = None,
        replies: bool = True,
    ) -> None:
        if authors is not None and host is not None:
            raise ValueError("give authors or host, not both")
        if authors is not None:
            if isinstance(authors, str) or not all(is_valid_did(a) for a in authors):
                raise ValueError("authors must be a list of DIDs")
            if len(authors) > MAX_AUTHORS:
                raise ValueError(f"at most {MAX_AUTHORS} authors")
            authors = tuple(dict.fromkeys(authors))
        if host is not None and (not isinstance(host, str) or not host or "/" in host):
            raise ValueError("host must be a host name, optionally with :port")
        if not isinstance(replies, bool):
            raise ValueError("replies must be true or false")
        self.authors = authors
        self.host = host.lower() if host else None
        self.replies = replies

    def __call__(self, index: IndexReader, request: FeedRequest) -> FeedPage:
        items = index.latest(
            request.limit + 1,
            request.before(),
            authors=self.authors,
            host=self.host,
            replies=self.replies,
        )
        return page(items, request.limit)
