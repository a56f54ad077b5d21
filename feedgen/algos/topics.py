"""``hashtag`` and ``keyword``: topical feeds.

``hashtag`` takes ``tags`` (with or without ``#``, any case) and matches the
post's ``#tag`` facets and its ``tags`` field; ``keyword`` takes ``words``
and matches whole words of the text (full-text index, any case, accents
ignored).
"""

from __future__ import annotations

from collections.abc import Sequence

from feedgen.plugins import FeedPage, FeedRequest, algorithm, page
from feedgen.storage import IndexReader

#: Most tags or words one feed may watch.
MAX_TERMS = 32
#: Longest tag or word, characters.
MAX_TERM_LENGTH = 640


def _terms(values: Sequence[str] | None, what: str) -> tuple[str, ...]:
    if values is None or isinstance(values, str) or not values:
        raise ValueError(f"{what} must be a non-empty list of strings")
    if len(values) > MAX_TERMS:
        raise ValueError(f"at most {MAX_TERMS} {what}")
    out = []
    for value in values:
        if not isinstance(value, str) or not value.strip("# ") or len(value) > MAX_TERM_LENGTH:
            raise ValueError(f"{what} must be non-empty strings of at most {MAX_TERM_LENGTH} characters")
        out.append(value.strip().lstrip("#").lower() if what == "tags" else value.strip())
    return tuple(dict.fromkeys(out))


@algorithm("hashtag", anonymous=True, inline=True, shared=True)
class Hashtag:
    """Posts carrying any of the feed's hashtags."""

    def __init__(self, *, tags: Sequence[str]) -> None:
        self.tags = _terms(tags, "tags")

    def __call__(self, index: IndexReader, request: FeedRequest) -> FeedPage:
        return page(index.tagged(self.tags, request.limit + 1, request.before()), request.limit)


@algorithm("keyword", anonymous=True, shared=True)
class Keyword:
    """Posts whose text contains any of the feed's words."""

    def __init__(self, *, words: Sequence[str]) -> None:
        self.words = _terms(words, "words")

    def __call__(self, index: IndexReader, request: FeedRequest) -> FeedPage:
        return page(index.search(self.words, request.limit + 1, request.before()), request.limit)
