"""Reading a feed without an AppView: post AT-URIs in, readable posts out.

A feed skeleton only names posts. To show them, each URI is hydrated: the
author's DID document (through :class:`roost.identity.IdentityDirectory`,
which caches) names their PDS, ``com.atproto.repo.getRecord`` on that PDS
returns the post record, and the document's handle is shown if it verifies
both ways. A caller that keeps an index of posts (the feed generator's own
catalogue) passes ``local``: posts found there are not fetched at all.

Fetches run concurrently, at most ``concurrency`` at a time, each under a
time limit; one slow or broken PDS costs its own posts, not the page. Each
result says what happened: ``ok``, ``missing`` (the PDS says the record does
not exist: deleted, or never written) or ``unavailable`` (the author's DID,
PDS or record could not be read; ``reason`` says which).

:class:`PostCache` keeps answers for a short while, for pages that render
the same posts again and again.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Final, Literal

import httpx

from roost.errors import RoostError
from roost.identity import IdentityDirectory
from roost.syntax import AtUri, parse_at_uri

from feedgen.publish import PublishError, XrpcFailed, xrpc_get
from feedgen.storage import PostRow

__all__ = [
    "CACHE_TTL_S",
    "DEFAULT_CONCURRENCY",
    "FETCH_TIMEOUT_S",
    "HydratedPost",
    "Hydrator",
    "PostCache",
    "format_time",
]

POST_COLLECTION: Final = "app.bsky.feed.post"
GET_RECORD: Final = "com.atproto.repo.getRecord"
#: Posts fetched at the same time by one hydrator.
DEFAULT_CONCURRENCY: Final = 8
#: Longest wait for one author's identity, or one record from their PDS.
FETCH_TIMEOUT_S: Final = 5.0
#: How long :class:`PostCache` keeps an answer, and how many it keeps.
CACHE_TTL_S: Final = 60.0
MAX_CACHE_ENTRIES: Final = 2_000
#: Post text is cut to this many characters (the lexicon allows 3,000 bytes).
MAX_TEXT_CHARS: Final = 3_000
#: Record errors that mean the post is not there (as opposed to unreadable).
_GONE: Final = frozenset({"RecordNotFound", "NotFound"})

State = Literal["ok", "missing", "unavailable"]
LocalLookup = Callable[[str], PostRow | None]


def format_time(value: str | None) -> str:
    """An ISO 8601 datetime as ``YYYY-MM-DD HH:MM UTC`` (as given if it does not parse)."""
    if not value:
        return ""
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return value[:40]
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _iso(ms: int) -> str:
    moment = datetime.fromtimestamp(ms / 1000, timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


@dataclass(frozen=True, slots=True)
class HydratedPost:
    """One post of a feed as a reader sees it (see the module docstring for ``state``).

    ``handle`` is the author's handle when it verifies both ways;
    ``claimed_handle`` what their DID document says. ``created_at`` is the
    record's own ISO 8601 time. ``source`` is where the text came from.
    ``record`` is the record as the PDS returned it (None from the index).
    """

    uri: str
    author: str
    state: State
    text: str = ""
    created_at: str | None = None
    handle: str | None = None
    claimed_handle: str | None = None
    source: Literal["index", "pds"] | None = None
    reason: str | None = None
    record: Mapping[str, Any] | None = None

    @property
    def author_label(self) -> str:
        """The handle, the unverified claim marked as such, or the DID."""
        if self.handle:
            return f"@{self.handle}"
        if self.claimed_handle:
            return f"@{self.claimed_handle} (unverified)"
        return self.author

    @property
    def time_label(self) -> str:
        return format_time(self.created_at)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"uri": self.uri, "author": self.author, "state": self.state}
        for key, value in (
            ("handle", self.handle),
            ("claimedHandle", self.claimed_handle),
            ("createdAt", self.created_at),
            ("source", self.source),
            ("reason", self.reason),
            ("record", dict(self.record) if self.record is not None else None),
        ):
            if value is not None:
                out[key] = value
        if self.state == "ok":
            out["text"] = self.text
        return out


class PostCache:
    """Hydrated posts by URI for ``ttl`` seconds (``ok`` and ``missing`` only), LRU-bounded."""

    def __init__(
        self,
        ttl: float = CACHE_TTL_S,
        *,
        max_entries: int = MAX_CACHE_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, HydratedPost]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, uri: str) -> HydratedPost | None:
        entry = self._entries.get(uri)
        if entry is None:
            return None
        if entry[0] <= self._clock():
            del self._entries[uri]
            return None
        self._entries.move_to_end(uri)
        return entry[1]

    def put(self, post: HydratedPost) -> None:
        if post.state == "unavailable":
            return
        self._entries[post.uri] = (self._clock() + self.ttl, post)
        self._entries.move_to_end(post.uri)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)


class Hydrator:
    """Turns post AT-URIs into :class:`HydratedPost` values (see the module docstring)."""

    def __init__(
        self,
        identity: IdentityDirectory,
        http: httpx.AsyncClient,
        *,
        local: LocalLookup | None = None,
        cache: PostCache | None = None,
        concurrency: int = DEFAULT_CONCURRENCY,
        timeout: float = FETCH_TIMEOUT_S,
    ) -> None:
        if concurrency < 1 or timeout <= 0:
            raise ValueError("concurrency must be at least 1 and timeout positive")
        self.identity = identity
        self.http = http
        self.local = local
        self.cache = cache
        self.timeout = timeout
        self._slots = asyncio.Semaphore(concurrency)

    async def hydrate(self, uris: Sequence[str]) -> list[HydratedPost]:
        """The posts of ``uris``, in the same order (one result per URI)."""
        return list(await asyncio.gather(*(self.post(uri) for uri in uris)))

    async def post(self, uri: str) -> HydratedPost:
        """One post; never raises for what a remote server does."""
        if self.cache is not None:
            hit = self.cache.get(uri)
            if hit is not None:
                return hit
        try:
            parsed = parse_at_uri(uri)
        except RoostError:
            return HydratedPost(uri, "", "unavailable", reason="not a valid AT-URI")
        if parsed.collection != POST_COLLECTION or not parsed.rkey:
            return HydratedPost(uri, parsed.authority, "unavailable",
                                reason=f"not a post ({POST_COLLECTION}) URI")
        async with self._slots:
            post = await self._hydrate(uri, parsed)
        if self.cache is not None:
            self.cache.put(post)
        return post

    async def _hydrate(self, uri: str, parsed: AtUri) -> HydratedPost:
        row = self.local(uri) if self.local is not None else None
        author = parsed.authority
        try:
            if not parsed.authority_is_did:
                author = await self._bounded(self.identity.lookup_handle(author))
            identity = await self._bounded(self.identity.lookup_identity(author))
        except TimeoutError:
            return self._unreadable(uri, author, row, "identity lookup timed out")
        except RoostError as exc:
            return self._unreadable(uri, author, row, f"author does not resolve: {exc.message}")
        names = {"handle": identity.handle, "claimed_handle": identity.doc.handle}
        if row is not None:
            return HydratedPost(uri, author, "ok", text=row.text[:MAX_TEXT_CHARS],
                                created_at=_iso(row.created_at), source="index", **names)
        pds = identity.pds_endpoint
        if pds is None:
            return HydratedPost(uri, author, "unavailable", reason="the author's DID document "
                                "names no PDS", **names)
        params = {"repo": author, "collection": POST_COLLECTION, "rkey": parsed.rkey}
        try:
            out = await self._bounded(xrpc_get(self.http, pds, GET_RECORD, params))
        except TimeoutError:
            return HydratedPost(uri, author, "unavailable", reason=f"{pds} did not answer in "
                                f"{self.timeout:g} s", **names)
        except XrpcFailed as exc:
            if exc.error in _GONE or exc.status == 404:
                return HydratedPost(uri, author, "missing", reason="deleted, or never existed",
                                    **names)
            return HydratedPost(uri, author, "unavailable", reason=str(exc), **names)
        except PublishError as exc:
            return HydratedPost(uri, author, "unavailable", reason=str(exc), **names)
        value = out.get("value") if isinstance(out, dict) else None
        if not isinstance(value, dict) or not isinstance(value.get("text"), str):
            return HydratedPost(uri, author, "unavailable", reason="the PDS returned no post "
                                "record", **names)
        created = value.get("createdAt")
        return HydratedPost(
            uri, author, "ok", text=value["text"][:MAX_TEXT_CHARS],
            created_at=created if isinstance(created, str) else None, source="pds",
            record=value, **names,
        )

    def _unreadable(self, uri: str, author: str, row: PostRow | None, why: str) -> HydratedPost:
        """The author's identity failed: indexed text is still worth showing."""
        if row is not None:
            return HydratedPost(uri, author, "ok", text=row.text[:MAX_TEXT_CHARS],
                                created_at=_iso(row.created_at), source="index", reason=why)
        return HydratedPost(uri, author, "unavailable", reason=why)

    async def _bounded(self, call: Any) -> Any:
        return await asyncio.wait_for(call, self.timeout)
