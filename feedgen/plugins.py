"""The plugin API: how a feed algorithm is written, found and configured.

An algorithm is a function, or a class whose instances are callable, that
takes the index (read-only, :class:`~feedgen.storage.IndexReader`) and a
:class:`FeedRequest` (requester DID or None, limit, cursor, the feed's
options) and returns a :class:`FeedPage`::

    from feedgen.plugins import FeedPage, FeedRequest, algorithm, page

    @algorithm("cats", anonymous=True)
    def cats(index, request: FeedRequest) -> FeedPage:
        items = index.tagged(["cats"], request.limit + 1, request.before())
        return page(items, request.limit)

A class is built once per feed with the feed's options as keyword
arguments (so bad options fail at start-up, not on the first request) and
may keep state between requests; it is called from several worker threads at
once. ``async def`` algorithms run on the event loop and must not block it.

:func:`algorithm` only labels the object; a :class:`Registry` collects
algorithms explicitly: the built-ins, objects and modules named in the
configuration (``package.module`` or ``package.module:name``) and every
entry point of the ``roost.feeds`` group (the entry point's name is the
algorithm's name)::

    [project.entry-points."roost.feeds"]
    cats = "my_feeds:cats"

A plugin that fails to import is logged and left out; the others are served.

Cursors: :meth:`FeedRequest.before` reads a cursor made by
:meth:`SortKey.encode <feedgen.storage.SortKey.encode>`, and :func:`page`
builds a page and its cursor from ``limit + 1`` items: the extra item only
says there is more. Keys are unique and stable, so pages neither skip nor
repeat items.
"""

from __future__ import annotations

import importlib
import inspect
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from types import ModuleType
from typing import Any, Final

from feedgen.storage import FeedItem, IndexReader, SortKey

__all__ = [
    "ENTRY_POINT_GROUP",
    "FEED_COLLECTION",
    "Algorithm",
    "Feed",
    "FeedConfigError",
    "FeedPage",
    "FeedRequest",
    "Registry",
    "SkeletonItem",
    "algorithm",
    "check_unique",
    "default_feeds",
    "feed_uri",
    "page",
]

log = logging.getLogger(__name__)

#: Entry-point group through which installed distributions offer algorithms.
ENTRY_POINT_GROUP: Final = "roost.feeds"
#: Collection of feed generator records (the feed URI's middle part).
FEED_COLLECTION: Final = "app.bsky.feed.generator"
#: Where the built-in algorithms live (the only ones that may run inline).
BUILTIN_PACKAGE: Final = "feedgen.algos"
_MARK: Final = "__roost_feed__"


class FeedConfigError(ValueError):
    """A feed cannot be built: unknown algorithm, bad options, bad record key."""


@dataclass(frozen=True, slots=True)
class FeedRequest:
    """One getFeedSkeleton call as an algorithm sees it.

    ``requester``: the DID from the verified service token, None when
    anonymous. ``languages``: the ``Accept-Language`` codes, preferred first.
    ``options``: the feed's configured options (function algorithms read them here).
    """

    feed: str
    requester: str | None
    limit: int
    cursor: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    languages: tuple[str, ...] = ()

    def before(self) -> SortKey | None:
        """The cursor as a :class:`SortKey` (None on the first page); 400 if malformed."""
        return None if self.cursor is None else SortKey.parse(self.cursor)


@dataclass(frozen=True, slots=True)
class SkeletonItem:
    """A skeleton entry built by hand: a post, why it is there, and context for the client."""

    post: str
    repost: str | None = None
    feed_context: str | None = None


@dataclass(frozen=True, slots=True)
class FeedPage:
    """What an algorithm returns: at most ``limit`` items and, if more follow, a cursor.

    Items are :class:`~feedgen.storage.FeedItem`, :class:`SkeletonItem` or
    plain post AT-URIs. ``content_language`` is sent as ``Content-Language``
    when the algorithm filtered by language.
    """

    items: Sequence[FeedItem | SkeletonItem | str]
    cursor: str | None = None
    content_language: str | None = None


def page(items: Sequence[FeedItem], limit: int) -> FeedPage:
    """A page from up to ``limit + 1`` items (newest first): the first ``limit``,
    and a cursor at the last of them when the extra item shows that more exist."""
    if len(items) > limit:
        kept = items[:limit]
        return FeedPage(kept, cursor=kept[-1].key.encode() if kept else None)
    return FeedPage(items)


@dataclass(frozen=True, slots=True)
class Algorithm:
    """A registered algorithm: its name, the function or class, and its defaults.

    ``anonymous``: feeds using it answer requests without a service token
    unless their configuration says otherwise.
    """

    name: str
    target: Any
    anonymous: bool = False
    description: str = ""
    inline: bool = False
    shared: bool = False

    @property
    def runs_inline(self) -> bool:
        """Run on the event loop, without a thread or a time limit: only built-ins may."""
        module = getattr(self.target, "__module__", "") or ""
        return self.inline and module.startswith(BUILTIN_PACKAGE + ".")

    @property
    def is_class(self) -> bool:
        return inspect.isclass(self.target)

    def needs_options(self) -> bool:
        """True if the class has required constructor arguments."""
        if not self.is_class:
            return False
        try:
            signature = inspect.signature(self.target)
        except (TypeError, ValueError):
            return False
        return any(
            p.default is inspect.Parameter.empty
            and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
            for p in signature.parameters.values()
        )


def algorithm(
    name: str | None = None,
    *,
    anonymous: bool = False,
    description: str | None = None,
    inline: bool = False,
    shared: bool = False,
) -> Callable[[Any], Any]:
    """Label a function or class as a feed algorithm (it is returned unchanged).

    ``name`` defaults to the object's name with ``_`` as ``-``; ``description``
    to the first line of its docstring. ``inline`` (honoured for the built-ins
    only) runs it on the event loop instead of a worker thread: for
    algorithms whose every call is a few bounded index reads, where handing
    the call to a thread costs more than the call. ``shared``: its answer
    depends only on the feed, limit, cursor and Accept-Language, never on who
    asks, so recent answers may be served again to anyone (an instance can
    say otherwise with a ``shared`` attribute).
    """

    def mark(target: Any) -> Any:
        if not callable(target):
            raise TypeError("an algorithm must be a function or a class")
        label = name or target.__name__.replace("_", "-").lower()
        doc = description
        if doc is None:
            doc = (inspect.getdoc(target) or "").strip().split("\n", 1)[0]
        setattr(target, _MARK, Algorithm(label, target, anonymous, doc, inline, shared))
        return target

    return mark


def _labelled(obj: Any) -> Algorithm | None:
    found = getattr(obj, _MARK, None) if callable(obj) else None
    if isinstance(found, Algorithm) and found.target is obj:
        return found
    return None


class Registry:
    """Algorithms by name. Later registrations of a name replace earlier ones."""

    def __init__(self) -> None:
        self._algorithms: dict[str, Algorithm] = {}
        #: ``(where, problem)`` for every plugin that could not be loaded.
        self.failures: list[tuple[str, str]] = []

    def __contains__(self, name: object) -> bool:
        return name in self._algorithms

    def __iter__(self) -> Any:
        return iter(self._algorithms.values())

    @property
    def names(self) -> list[str]:
        return sorted(self._algorithms)

    def get(self, name: str) -> Algorithm:
        try:
            return self._algorithms[name]
        except KeyError:
            known = ", ".join(self.names) or "none"
            raise FeedConfigError(f"no algorithm named {name!r} (known: {known})") from None

    def add(self, target: Any, *, name: str | None = None) -> Algorithm:
        """Register a labelled or plain function or class (plain ones need ``name``)."""
        found = _labelled(target)
        if found is None:
            if not callable(target):
                raise TypeError(f"{target!r} is not a function or class")
            found = Algorithm(name or target.__name__.replace("_", "-").lower(), target)
        elif name is not None and name != found.name:
            found = Algorithm(
                name, found.target, found.anonymous, found.description, found.inline, found.shared
            )
        self._algorithms[found.name] = found
        return found

    def add_module(self, module: ModuleType) -> list[Algorithm]:
        """Register every labelled function and class defined in ``module``."""
        added = []
        for obj in vars(module).values():
            found = _labelled(obj)
            if found is not None and getattr(obj, "__module__", None) == module.__name__:
                added.append(self.add(obj))
        return added

    def load(self, spec: str) -> list[Algorithm]:
        """Import ``package.module`` (every labelled object) or ``package.module:name``."""
        module_name, _, attr = spec.partition(":")
        try:
            module = importlib.import_module(module_name)
            if not attr:
                return self.add_module(module)
            obj: Any = module
            for part in attr.split("."):
                obj = getattr(obj, part)
        except Exception as exc:  # noqa: BLE001 - any import-time failure of a plugin
            self._failed(spec, exc)
            return []
        if isinstance(obj, ModuleType):
            return self.add_module(obj)
        return [self.add(obj)]

    def load_entry_points(self, group: str = ENTRY_POINT_GROUP) -> list[Algorithm]:
        """Register every entry point of ``group``; failures are recorded, not raised."""
        added = []
        for ep in entry_points(group=group):
            try:
                obj = ep.load()
                if isinstance(obj, ModuleType):
                    added.extend(self.add_module(obj))
                else:
                    added.append(self.add(obj, name=ep.name))
            except Exception as exc:  # noqa: BLE001 - a broken plugin must not stop the server
                self._failed(f"entry point {ep.name} = {ep.value}", exc)
        return added

    def _failed(self, where: str, exc: BaseException) -> None:
        problem = f"{type(exc).__name__}: {exc}"
        self.failures.append((where, problem))
        log.error("feed plugin not loaded: %s (%s)", where, problem)


# -- feeds: an algorithm configured under a record key ------------------------------------------


def feed_uri(publisher: str, rkey: str) -> str:
    return f"at://{publisher}/{FEED_COLLECTION}/{rkey}"


@dataclass(frozen=True, slots=True)
class Feed:
    """A served feed: ``at://<publisher>/app.bsky.feed.generator/<rkey>`` -> an algorithm.

    ``handler`` is what gets called: the class instance built from
    ``options``, or the function itself.
    """

    uri: str
    rkey: str
    publisher: str
    algorithm: Algorithm
    options: Mapping[str, Any]
    anonymous: bool
    display_name: str
    description: str
    handler: Callable[[IndexReader, FeedRequest], Any] = field(repr=False)
    is_async: bool = False
    #: Answers may be reused for anyone (see :func:`algorithm`).
    shared: bool = False

    @classmethod
    def build(
        cls,
        algorithm: Algorithm,
        *,
        publisher: str,
        rkey: str,
        options: Mapping[str, Any] | None = None,
        anonymous: bool | None = None,
        display_name: str | None = None,
        description: str | None = None,
    ) -> Feed:
        from roost.syntax import is_valid_did, is_valid_record_key

        if not is_valid_record_key(rkey):
            raise FeedConfigError(f"{rkey!r} is not a valid record key")
        if not is_valid_did(publisher):
            raise FeedConfigError(f"publisher {publisher!r} is not a DID")
        opts = dict(options or {})
        if algorithm.is_class:
            try:
                handler = algorithm.target(**opts)
            except (TypeError, ValueError) as exc:
                raise FeedConfigError(f"feed {rkey}: bad options for {algorithm.name}: {exc}") from None
            if not callable(handler):
                raise FeedConfigError(f"feed {rkey}: {algorithm.name} instances are not callable")
            call = getattr(handler, "__call__", None)
        else:
            handler = algorithm.target
            call = handler
        return cls(
            uri=feed_uri(publisher, rkey),
            rkey=rkey,
            publisher=publisher,
            algorithm=algorithm,
            options=opts,
            anonymous=algorithm.anonymous if anonymous is None else anonymous,
            display_name=display_name or rkey,
            description=description if description is not None else algorithm.description,
            handler=handler,
            is_async=inspect.iscoroutinefunction(call),
            shared=bool(getattr(handler, "shared", algorithm.shared)),
        )


def default_feeds(registry: Registry, publisher: str) -> list[Feed]:
    """One feed per algorithm that needs no options, under the algorithm's name."""
    feeds = []
    for algo in sorted(registry, key=lambda a: a.name):
        if algo.needs_options():
            continue
        try:
            feeds.append(Feed.build(algo, publisher=publisher, rkey=algo.name))
        except FeedConfigError as exc:
            log.warning("not serving %s by default: %s", algo.name, exc)
    return feeds


def check_unique(feeds: Iterable[Feed]) -> dict[str, Feed]:
    """Feeds by URI; two feeds with one URI is a configuration error."""
    out: dict[str, Feed] = {}
    for feed in feeds:
        if feed.uri in out:
            raise FeedConfigError(f"two feeds are configured as {feed.uri}")
        out[feed.uri] = feed
    return out
