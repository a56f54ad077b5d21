"""``roost feed show FEED_URI``: read a feed from the terminal, without an AppView.

The feed is followed the way :mod:`feedgen.doctor` follows it (feed URI,
publisher's PDS, generator record, service DID document, ``#bsky_fg``
endpoint), using the same code, so a broken step fails with the same
explanation. Then:

- with ``--handle``/``--password``, the reader logs in on their PDS and asks
  it for a service token (``com.atproto.server.getServiceAuth`` with ``aud``
  the feed generator's DID and ``lxm`` ``app.bsky.feed.getFeedSkeleton``),
  so personalised feeds answer; otherwise the request is anonymous;
- ``getFeedSkeleton`` is called on the endpoint and its answer checked
  against the lexicon;
- each post is hydrated from its author's PDS (:mod:`feedgen.hydrate`).

Posts print as author, time and text, or as one JSON document (``--json``);
posts that are gone or unreadable are listed as such, never skipped.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:  # the parser is built on every ``roost`` run: imports wait for use
    import httpx

    from roost.identity import IdentityDirectory
    from roost.lexicon import Catalog

    from feedgen.doctor import DoctorReport, FeedLocation
    from feedgen.hydrate import HydratedPost, Hydrator
    from feedgen.publish import Session

__all__ = ["MAX_LIMIT", "FeedView", "add_command", "read_feed"]

GET_FEED_SKELETON: Final = "app.bsky.feed.getFeedSkeleton"
GET_SERVICE_AUTH: Final = "com.atproto.server.getServiceAuth"
#: The lexicon's bounds for ``limit``.
MAX_LIMIT: Final = 100
DEFAULT_LIMIT: Final = 20
_REPOST_REASON: Final = "app.bsky.feed.defs#skeletonReasonRepost"

Handler = Callable[[argparse.Namespace], int]


@dataclass(slots=True)
class FeedView:
    """One page of a feed, hydrated: ``reposts`` maps a post's position to its repost URI."""

    location: FeedLocation
    reader: str | None
    posts: list[HydratedPost]
    cursor: str | None
    reposts: dict[int, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        items = []
        for position, post in enumerate(self.posts):
            item = post.to_json()
            if position in self.reposts:
                item["repost"] = self.reposts[position]
            items.append(item)
        out: dict[str, Any] = {
            "feed": self.location.uri,
            "displayName": self.location.record.get("displayName"),
            "service": self.location.service_did,
            "endpoint": self.location.endpoint,
            "reader": self.reader,
            "posts": items,
        }
        if self.cursor:
            out["cursor"] = self.cursor
        return out

    def lines(self) -> Iterator[str]:
        name = self.location.record.get("displayName") or self.location.uri
        who = f"as {self.reader}" if self.reader else "anonymously"
        yield f"{name} ({self.location.uri}), {len(self.posts)} posts {who}"
        for position, post in enumerate(self.posts):
            yield ""
            repost = self.reposts.get(position)
            if repost is not None:
                yield f"  reposted: {repost}"
            if post.state == "ok":
                yield f"{post.author_label} · {post.time_label}"
                for line in post.text.splitlines() or [""]:
                    yield f"  {line}"
            else:
                yield f"[{post.state}] {post.author_label or post.uri}: {post.reason}"
            yield f"  {post.uri}"
        if self.cursor:
            yield ""
            yield f"more: --cursor {self.cursor}"


class ShowFailed(Exception):
    """A step before the posts failed; ``report`` holds the findings up to it."""

    def __init__(self, report: DoctorReport) -> None:
        super().__init__("; ".join(report.lines()))
        self.report = report


async def _service_token(http: httpx.AsyncClient, reader: Session, service_did: str) -> str:
    from feedgen.publish import PublishError, xrpc_get

    out = await xrpc_get(http, reader.pds_url, GET_SERVICE_AUTH,
                         {"aud": service_did, "lxm": GET_FEED_SKELETON}, reader.headers)
    token = out.get("token") if isinstance(out, dict) else None
    if not isinstance(token, str) or not token:
        raise PublishError(f"{GET_SERVICE_AUTH} at {reader.pds_url} returned no token")
    return token


async def read_feed(
    feed_uri: str,
    *,
    http: httpx.AsyncClient,
    identity: IdentityDirectory,
    limit: int = DEFAULT_LIMIT,
    cursor: str | None = None,
    reader: Session | None = None,
    catalog: Catalog | None = None,
    hydrator: Hydrator | None = None,
) -> FeedView:
    """One page of ``feed_uri``, hydrated; :class:`ShowFailed` says which step broke."""
    from roost.errors import RoostError
    from roost.lexicon import Catalog

    from feedgen.doctor import DoctorReport, locate
    from feedgen.hydrate import Hydrator
    from feedgen.publish import PublishError, XrpcFailed, xrpc_get

    catalog = catalog or Catalog.load()
    report = DoctorReport()
    location = await locate(feed_uri, report, http=http, identity=identity, catalog=catalog)
    if location is None:
        raise ShowFailed(report)
    headers: dict[str, str] = {}
    who = None
    if reader is not None:
        who = reader.handle or reader.did
        try:
            token = await _service_token(http, reader, location.service_did)
        except PublishError as exc:
            report.add("service auth", "fail",
                       f"{who}'s PDS would not mint a token for {location.service_did}: {exc}")
            raise ShowFailed(report) from None
        headers["Authorization"] = f"Bearer {token}"
    params: dict[str, Any] = {"feed": location.uri, "limit": limit}
    if cursor:
        params["cursor"] = cursor
    try:
        body = await xrpc_get(http, location.endpoint, GET_FEED_SKELETON, params, headers)
        catalog.validate_output(GET_FEED_SKELETON, body)
    except XrpcFailed as exc:
        hint = ""
        if exc.status == 401 and reader is None:
            hint = " (the feed needs a signed-in reader: pass --handle and --password)"
        report.add("skeleton", "fail", f"{exc}{hint}")
        raise ShowFailed(report) from None
    except PublishError as exc:
        report.add("skeleton", "fail", str(exc))
        raise ShowFailed(report) from None
    except RoostError as exc:
        report.add("skeleton", "fail", f"the answer is not a valid skeleton: {exc.message}")
        raise ShowFailed(report) from None
    entries = body["feed"]
    reposts = {
        position: entry["reason"]["repost"]
        for position, entry in enumerate(entries)
        if isinstance(entry.get("reason"), dict)
        and entry["reason"].get("$type") == _REPOST_REASON
    }
    hydrator = hydrator or Hydrator(identity, http)
    posts = await hydrator.hydrate([entry["post"] for entry in entries])
    return FeedView(location, who, posts, body.get("cursor"), reposts)


# -- the command ------------------------------------------------------------------------------


def add_command(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``feed show`` to the ``roost`` subcommands."""
    group = commands.add_parser("feed", help="read feeds without an AppView")
    sub = group.add_subparsers(dest="action", metavar="ACTION", required=True)
    show = sub.add_parser("show", help="fetch a page of a feed and show its posts")
    show.add_argument("feed_uri", metavar="FEED_URI",
                      help="at://<publisher>/app.bsky.feed.generator/<rkey>")
    show.add_argument("--limit", type=int, default=DEFAULT_LIMIT,
                      help=f"posts to fetch, 1 to {MAX_LIMIT} (default %(default)s)")
    show.add_argument("--cursor", help="continue after a page (its cursor)")
    show.add_argument("--json", action="store_true", help="print one JSON document")
    show.add_argument("--handle", dest="identifier", metavar="HANDLE",
                      help="read as this account (a service token from its PDS)")
    show.add_argument("--password", help="its app password (or $ROOST_APP_PASSWORD)")
    show.add_argument("--pds-url", help="its PDS (default: from its DID)")
    show.add_argument("--plc-url", help="did:plc directory (default https://plc.directory)")
    show.add_argument("--allow-local", action="store_true", default=None,
                      help="allow loopback/private addresses (a local network)")
    show.set_defaults(handler=_show)


def _fail(message: str, status: int = 1) -> int:
    print(f"roost feed show: {message}", file=sys.stderr)
    return status


def _show(args: argparse.Namespace) -> int:
    from feedgen.cli import _http, _identity, _session
    from feedgen.publish import PublishError

    if not 1 <= args.limit <= MAX_LIMIT:
        return _fail(f"--limit must be from 1 to {MAX_LIMIT}", 2)

    async def go() -> FeedView:
        resolver, identity = _identity(args.plc_url, args.allow_local)
        try:
            async with _http(args.allow_local) as http:
                reader = await _session(args, http, identity) if args.identifier else None
                return await read_feed(args.feed_uri, http=http, identity=identity,
                                       limit=args.limit, cursor=args.cursor, reader=reader)
        finally:
            await identity.aclose()
            await resolver.aclose()

    try:
        view = asyncio.run(go())
    except ShowFailed as exc:
        failed = [f for f in exc.report.findings if f.status == "fail"]
        detail = failed[-1].line() if failed else str(exc)
        return _fail(f"cannot read the feed\n{detail}\n"
                     f"(roost feedgen doctor {args.feed_uri} checks it step by step)")
    except PublishError as exc:
        return _fail(str(exc))
    if args.json:
        print(json.dumps(view.to_json(), indent=2, ensure_ascii=False))
    else:
        for line in view.lines():
            print(line)
    return 0
