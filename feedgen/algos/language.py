"""``language``: posts in given languages, or in the reader's (``Accept-Language``).

With ``langs`` unset, the request's ``Accept-Language`` codes choose (their
primary subtags: ``pt-BR`` reads ``pt``); the answer says which in
``Content-Language``.
"""

from __future__ import annotations

from collections.abc import Sequence

from roost.errors import RoostError

from feedgen.plugins import FeedPage, FeedRequest, algorithm, page
from feedgen.storage import IndexReader

#: Most languages one feed or request may name.
MAX_LANGS = 8


@algorithm("language", anonymous=True, inline=True, shared=True)
class Language:
    """Posts in the feed's languages, or in yours."""

    def __init__(self, *, langs: Sequence[str] | None = None) -> None:
        if langs is not None:
            if isinstance(langs, str) or not langs or len(langs) > MAX_LANGS:
                raise ValueError(f"langs must be a list of 1 to {MAX_LANGS} language codes")
            if not all(isinstance(x, str) and 0 < len(x) <= 64 for x in langs):
                raise ValueError("langs must be language codes such as en or pt-BR")
            langs = tuple(dict.fromkeys(x.lower() for x in langs))
        self.langs = langs

    def __call__(self, index: IndexReader, request: FeedRequest) -> FeedPage:
        langs = self.langs
        if langs is None:
            langs = tuple(dict.fromkeys(x.partition("-")[0] for x in request.languages))[:MAX_LANGS]
            if not langs:
                raise RoostError("this feed follows your Accept-Language header: send one")
        result = page(index.in_languages(langs, request.limit + 1, request.before()), request.limit)
        return FeedPage(result.items, result.cursor, content_language=", ".join(langs))
