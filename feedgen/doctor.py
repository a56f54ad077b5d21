"""``roost feedgen doctor FEED_URI``: follow a feed the way an AppView does, and explain what breaks.

The checks, in order (a failure stops the ones that depend on it):

1. **feed URI**: ``at://<publisher>/app.bsky.feed.generator/<rkey>``; a
   handle as publisher is resolved to its DID.
2. **publisher**: the publisher's DID document names a PDS.
3. **record**: the PDS serves the generator record, it is valid for its
   lexicon, and it names a service DID.
4. **service DID**: the service DID resolves (``did:web`` through
   ``/.well-known/did.json``) and has a ``#bsky_fg`` service of type
   ``BskyFeedGenerator``.
5. **endpoint**: an ``https`` origin on the default port, without a path
   (the AppView will not call anything else; plain ``http`` only works on a
   local network).
6. **describe**: ``describeFeedGenerator`` answers with the same DID and
   lists the feed URI.
7. **skeleton**: ``getFeedSkeleton`` answers a valid skeleton of posts, no
   longer than asked; the next page (when there is a cursor) repeats none of
   them. Anonymously, or as a reader logged in on their PDS (``--as``): the
   PDS then proxies the call with a service token, as it does for apps.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Final, Literal
from urllib.parse import urlsplit

import httpx

from roost.errors import RoostError
from roost.identity import IdentityDirectory, Service
from roost.lexicon import Catalog
from roost.syntax import is_valid_did

from feedgen.plugins import FEED_COLLECTION
from feedgen.publish import PublishError, Session, XrpcFailed, xrpc_get

__all__ = ["DoctorReport", "FeedLocation", "Finding", "diagnose", "locate"]

GET_FEED_SKELETON: Final = "app.bsky.feed.getFeedSkeleton"
_SYMBOLS: Final = {"ok": "ok  ", "warn": "WARN", "fail": "FAIL"}


@dataclass(frozen=True, slots=True)
class Finding:
    check: str
    status: Literal["ok", "warn", "fail"]
    detail: str

    def line(self) -> str:
        return f"[{_SYMBOLS[self.status]}] {self.check}: {self.detail}"


@dataclass(slots=True)
class DoctorReport:
    findings: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(f.status != "fail" for f in self.findings)

    def lines(self) -> Iterator[str]:
        for finding in self.findings:
            yield finding.line()

    def add(self, check: str, status: Literal["ok", "warn", "fail"], detail: str) -> bool:
        self.findings.append(Finding(check, status, detail))
        return status != "fail"


def _explain(exc: Exception) -> str:
    if isinstance(exc, XrpcFailed):
        return f"{exc.error}" + (f": {exc.remote_message}" if exc.remote_message else "")
    if isinstance(exc, RoostError):
        return exc.message or type(exc).__name__
    return str(exc)


@dataclass(frozen=True, slots=True)
class FeedLocation:
    """Where a feed is served, as an AppView finds it (checks 1-4).

    ``uri`` is the feed's URI with the publisher as a DID; ``endpoint`` the
    origin of the service's ``#bsky_fg`` entry.
    """

    uri: str
    publisher: str
    record: dict[str, Any]
    service_did: str
    service: Service
    endpoint: str


async def locate(
    feed_uri: str,
    report: DoctorReport,
    *,
    http: httpx.AsyncClient,
    identity: IdentityDirectory,
    catalog: Catalog,
) -> FeedLocation | None:
    """Follow ``feed_uri`` to its service endpoint, adding a finding per step to
    ``report``; None (the last finding says why) when a step fails."""
    # 1. the URI
    prefix = "at://"
    parts = feed_uri[len(prefix) :].split("/") if feed_uri.startswith(prefix) else []
    if len(parts) != 3 or parts[1] != FEED_COLLECTION or not parts[2]:
        report.add("feed URI", "fail",
                   f"{feed_uri!r} is not at://<publisher>/{FEED_COLLECTION}/<record key>")
        return None
    authority, _, rkey = parts
    publisher = authority
    if not is_valid_did(authority):
        try:
            publisher = await identity.lookup_handle(authority)
        except RoostError as exc:
            report.add("feed URI", "fail", f"the handle {authority} does not resolve: {_explain(exc)}")
            return None
    canonical = f"at://{publisher}/{FEED_COLLECTION}/{rkey}"
    report.add("feed URI", "ok", f"publisher {publisher}, record key {rkey}")

    # 2. the publisher's PDS
    try:
        doc = await identity.lookup_did(publisher)
    except RoostError as exc:
        report.add("publisher", "fail", f"{publisher} does not resolve: {_explain(exc)}")
        return None
    if doc.pds_endpoint is None:
        report.add("publisher", "fail", f"{publisher}'s DID document names no PDS (#atproto_pds)")
        return None
    report.add("publisher", "ok", f"repository on {doc.pds_endpoint}")

    # 3. the record
    try:
        out = await xrpc_get(http, doc.pds_endpoint, "com.atproto.repo.getRecord",
                             {"repo": publisher, "collection": FEED_COLLECTION, "rkey": rkey})
    except (XrpcFailed, PublishError) as exc:
        hint = " (publish it with roost feedgen publish)" if isinstance(exc, XrpcFailed) else ""
        report.add("record", "fail", f"cannot fetch the generator record: {_explain(exc)}{hint}")
        return None
    record = out.get("value") if isinstance(out, dict) else None
    if not isinstance(record, dict):
        report.add("record", "fail", "getRecord returned no record value")
        return None
    try:
        catalog.validate_record(FEED_COLLECTION, record)
    except RoostError as exc:
        report.add("record", "fail", f"the record is not a valid {FEED_COLLECTION}: {exc.message}")
        return None
    service_did: str = record["did"]
    report.add("record", "ok", f"{record.get('displayName')!r} served by {service_did}")

    # 4. the service DID document
    try:
        service_doc = await identity.lookup_did(service_did)
    except RoostError as exc:
        where = " (did:web documents live at https://<host>/.well-known/did.json)" \
            if service_did.startswith("did:web:") else ""
        report.add("service DID", "fail", f"{service_did} does not resolve: {_explain(exc)}{where}")
        return None
    service = service_doc.service("bsky_fg")
    if service is None:
        report.add("service DID", "fail",
                   f"{service_did}'s document has no #bsky_fg service: AppViews cannot find the feed")
        return None
    if service.type != "BskyFeedGenerator":
        report.add("service DID", "fail",
                   f"the #bsky_fg service has type {service.type!r}, not 'BskyFeedGenerator'")
        return None
    endpoint = service_doc.service_endpoint("bsky_fg", "BskyFeedGenerator")
    if endpoint is None:
        report.add("service DID", "fail",
                   f"the #bsky_fg serviceEndpoint {service.endpoint!r} is not an http(s) origin")
        return None
    report.add("service DID", "ok", f"#bsky_fg endpoint {endpoint}")
    return FeedLocation(canonical, publisher, record, service_did, service, endpoint)


async def diagnose(
    feed_uri: str,
    *,
    http: httpx.AsyncClient,
    identity: IdentityDirectory,
    catalog: Catalog | None = None,
    limit: int = 10,
    reader: Session | None = None,
) -> DoctorReport:
    """Run every check against ``feed_uri`` (see the module docstring)."""
    catalog = catalog or Catalog.load()
    report = DoctorReport()
    found = await locate(feed_uri, report, http=http, identity=identity, catalog=catalog)
    if found is None:
        return report
    canonical, service_did, service, endpoint = (
        found.uri, found.service_did, found.service, found.endpoint
    )

    # 5. the endpoint URL
    raw = service.endpoint if isinstance(service.endpoint, str) else endpoint
    url = urlsplit(raw)
    if url.path not in ("", "/"):
        report.add("endpoint", "warn", f"{raw} has a path; calls go to {endpoint}/xrpc/... instead")
    if url.scheme != "https":
        report.add("endpoint", "warn",
                   f"{endpoint} is plain http: AppViews on the internet only call https (port 443)")
    elif url.port not in (None, 443):
        report.add("endpoint", "fail", f"{endpoint} uses port {url.port}: AppViews call port 443")
        return report
    else:
        report.add("endpoint", "ok", f"{endpoint} (https)")

    # 6. describeFeedGenerator
    try:
        described = await xrpc_get(http, endpoint, "app.bsky.feed.describeFeedGenerator")
    except (XrpcFailed, PublishError) as exc:
        report.add("describe", "fail", f"describeFeedGenerator failed: {_explain(exc)}")
        return report
    feeds = [f.get("uri") for f in described.get("feeds", []) if isinstance(f, dict)] \
        if isinstance(described, dict) else []
    if not isinstance(described, dict) or described.get("did") != service_did:
        got = described.get("did") if isinstance(described, dict) else None
        report.add("describe", "fail",
                   f"the service says it is {got!r}, but the record names {service_did}: "
                   "fix the record (publish again) or the service's --service-did")
        return report
    if canonical not in feeds:
        listed = ", ".join(str(f) for f in feeds[:5]) or "none"
        report.add("describe", "fail",
                   f"the service does not list {canonical} (it lists {listed}): check the "
                   "publisher DID and the record key in its feeds configuration")
        return report
    report.add("describe", "ok", f"lists this feed among {len(feeds)}")

    # 7. a real skeleton fetch, and the next page
    await _check_skeleton(report, http, catalog, endpoint, service_did, canonical, limit, reader)
    return report


async def _skeleton_page(
    http: httpx.AsyncClient,
    endpoint: str,
    service_did: str,
    uri: str,
    limit: int,
    cursor: str | None,
    reader: Session | None,
) -> Any:
    params: dict[str, Any] = {"feed": uri, "limit": limit}
    if cursor:
        params["cursor"] = cursor
    if reader is None:
        return await xrpc_get(http, endpoint, GET_FEED_SKELETON, params)
    headers = {**reader.headers, "atproto-proxy": f"{service_did}#bsky_fg"}
    return await xrpc_get(http, reader.pds_url, GET_FEED_SKELETON, params, headers)


async def _check_skeleton(
    report: DoctorReport,
    http: httpx.AsyncClient,
    catalog: Catalog,
    endpoint: str,
    service_did: str,
    uri: str,
    limit: int,
    reader: Session | None,
) -> None:
    who = "anonymously" if reader is None else f"as {reader.handle or reader.did} via their PDS"
    seen: set[str] = set()
    cursor: str | None = None
    for number in (1, 2):
        try:
            body = await _skeleton_page(http, endpoint, service_did, uri, limit, cursor, reader)
        except XrpcFailed as exc:
            if exc.status == 401 and reader is None:
                report.add("skeleton", "warn",
                           f"the feed needs a signed-in reader ({_explain(exc)}); "
                           "run again with --as HANDLE to fetch it as one")
            else:
                report.add("skeleton", "fail", f"getFeedSkeleton {who} failed: {_explain(exc)}")
            return
        except PublishError as exc:
            report.add("skeleton", "fail", str(exc))
            return
        try:
            catalog.validate_output(GET_FEED_SKELETON, body)
        except RoostError as exc:
            report.add("skeleton", "fail",
                       f"page {number} is not a valid skeleton (AppViews answer 502): {exc.message}")
            return
        posts = [item["post"] for item in body["feed"]]
        if len(posts) > limit:
            report.add("skeleton", "fail", f"page {number} has {len(posts)} items for limit {limit}")
            return
        bad = [p for p in posts if "/app.bsky.feed.post/" not in p]
        if bad:
            report.add("skeleton", "fail", f"page {number} lists non-posts, e.g. {bad[0]}")
            return
        repeated = seen.intersection(posts)
        if repeated:
            report.add("skeleton", "fail",
                       f"page {number} repeats {len(repeated)} post(s) of the page before: "
                       "its cursor does not mark a unique position")
            return
        seen.update(posts)
        cursor = body.get("cursor")
        if number == 1:
            report.add("skeleton", "ok" if posts else "warn",
                       f"{len(posts)} posts {who}" + ("" if posts else " (the feed is empty)"))
        elif posts:
            report.add("next page", "ok", f"{len(posts)} more posts, none repeated")
        if not cursor:
            return
