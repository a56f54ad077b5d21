"""``roost feedgen publish`` / ``unpublish``: the ``app.bsky.feed.generator`` record.

A feed is published by writing ``app.bsky.feed.generator/<rkey>`` into the
publisher's repository, through their PDS, logged in with an app password
(``com.atproto.server.createSession``, then ``com.atproto.repo.putRecord``;
an avatar goes up first with ``uploadBlob``). The record names the service
DID whose ``#bsky_fg`` endpoint answers for the feed; the feed's URI is
``at://<publisher DID>/app.bsky.feed.generator/<rkey>``. Publishing again
updates the record (keeping its ``createdAt``); unpublishing deletes it
(likes of the feed are lost).

The record is checked against its lexicon before it is sent (display name at
most 24 graphemes, description 300, avatar PNG or JPEG up to 1 MB).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Final

import httpx

from roost.errors import RoostError
from roost.identity import IdentityDirectory
from roost.lexicon import Catalog

from feedgen.plugins import FEED_COLLECTION

__all__ = [
    "CONTENT_MODES",
    "FEED_COLLECTION",
    "MAX_AVATAR_BYTES",
    "PublishError",
    "Session",
    "XrpcFailed",
    "find_pds",
    "generator_record",
    "login",
    "publish",
    "unpublish",
    "xrpc_get",
    "xrpc_post",
]

#: Largest avatar the lexicon allows.
MAX_AVATAR_BYTES: Final = 1_000_000
#: ``--content-mode`` values and the tokens they stand for.
CONTENT_MODES: Final = {
    "unspecified": "app.bsky.feed.defs#contentModeUnspecified",
    "video": "app.bsky.feed.defs#contentModeVideo",
}


class PublishError(RuntimeError):
    """Publishing cannot go on; the message says why."""


class XrpcFailed(PublishError):
    """A remote XRPC call answered an error."""

    def __init__(self, nsid: str, status: int, error: str, message: str) -> None:
        super().__init__(f"{nsid}: {error}" + (f": {message}" if message else f" (HTTP {status})"))
        self.nsid = nsid
        self.status = status
        self.error = error
        self.remote_message = message


def _failure(nsid: str, response: httpx.Response) -> XrpcFailed:
    error, message = f"HTTP {response.status_code}", ""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        error = str(body.get("error") or error)
        message = str(body.get("message") or "")
    return XrpcFailed(nsid, response.status_code, error, message)


async def xrpc_get(
    http: httpx.AsyncClient,
    base: str,
    nsid: str,
    params: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> Any:
    """GET ``base/xrpc/nsid``; the JSON body, or :class:`XrpcFailed`."""
    try:
        response = await http.get(f"{base.rstrip('/')}/xrpc/{nsid}", params=params, headers=headers)
    except (httpx.HTTPError, RoostError) as exc:
        raise PublishError(f"{nsid}: cannot reach {base}: {exc}") from None
    if response.status_code != 200:
        raise _failure(nsid, response)
    try:
        return response.json()
    except ValueError:
        raise PublishError(f"{nsid} at {base} did not answer JSON") from None


async def xrpc_post(
    http: httpx.AsyncClient,
    base: str,
    nsid: str,
    *,
    json: Any = None,
    content: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> Any:
    """POST to ``base/xrpc/nsid``; the JSON body (or None), or :class:`XrpcFailed`."""
    try:
        response = await http.post(
            f"{base.rstrip('/')}/xrpc/{nsid}", json=json, content=content, headers=headers
        )
    except (httpx.HTTPError, RoostError) as exc:
        raise PublishError(f"{nsid}: cannot reach {base}: {exc}") from None
    if response.status_code != 200:
        raise _failure(nsid, response)
    return response.json() if response.content else None


@dataclass(frozen=True, slots=True)
class Session:
    """A logged-in publisher."""

    pds_url: str
    did: str
    handle: str
    access_jwt: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.access_jwt}"}


async def find_pds(identity: IdentityDirectory, identifier: str) -> str:
    """The PDS URL of a handle or DID."""
    try:
        did = identifier if identifier.startswith("did:") else await identity.lookup_handle(identifier)
        doc = await identity.lookup_did(did)
    except RoostError as exc:
        raise PublishError(f"cannot find the PDS of {identifier}: {exc.message}") from None
    if doc.pds_endpoint is None:
        raise PublishError(f"{did}'s DID document names no PDS")
    return doc.pds_endpoint


async def login(http: httpx.AsyncClient, pds_url: str, identifier: str, password: str) -> Session:
    out = await xrpc_post(
        http,
        pds_url,
        "com.atproto.server.createSession",
        json={"identifier": identifier, "password": password},
    )
    return Session(pds_url.rstrip("/"), out["did"], out.get("handle", ""), out["accessJwt"])


def _image_type(data: bytes) -> str:
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    raise PublishError("the avatar must be a PNG or JPEG image")


def _now() -> str:
    now = datetime.now(timezone.utc)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


def generator_record(
    *,
    service_did: str,
    display_name: str,
    description: str | None = None,
    avatar: dict[str, Any] | None = None,
    content_mode: str | None = None,
    accepts_interactions: bool | None = None,
    created_at: str | None = None,
) -> dict[str, Any]:
    """An ``app.bsky.feed.generator`` record (JSON form)."""
    record: dict[str, Any] = {
        "$type": FEED_COLLECTION,
        "did": service_did,
        "displayName": display_name,
    }
    if description:
        record["description"] = description
    if avatar is not None:
        record["avatar"] = avatar
    if content_mode is not None:
        if content_mode not in CONTENT_MODES:
            raise PublishError(f"content mode must be one of {', '.join(CONTENT_MODES)}")
        record["contentMode"] = CONTENT_MODES[content_mode]
    if accepts_interactions is not None:
        record["acceptsInteractions"] = accepts_interactions
    record["createdAt"] = created_at or _now()
    return record


async def _existing(http: httpx.AsyncClient, session: Session, rkey: str) -> dict[str, Any] | None:
    try:
        out = await xrpc_get(
            http,
            session.pds_url,
            "com.atproto.repo.getRecord",
            {"repo": session.did, "collection": FEED_COLLECTION, "rkey": rkey},
        )
    except XrpcFailed as exc:
        if exc.error == "RecordNotFound" or exc.status == 404:
            return None
        raise
    value = out.get("value") if isinstance(out, dict) else None
    return value if isinstance(value, dict) else None


async def publish(
    http: httpx.AsyncClient,
    session: Session,
    rkey: str,
    *,
    service_did: str,
    display_name: str,
    description: str | None = None,
    avatar: Path | None = None,
    content_mode: str | None = None,
    accepts_interactions: bool | None = None,
    catalog: Catalog | None = None,
) -> dict[str, Any]:
    """Create or update the feed record; returns ``{"uri", "cid"}``."""
    catalog = catalog or Catalog.load()
    try:
        catalog.validate_record_key(FEED_COLLECTION, rkey)
    except RoostError as exc:
        raise PublishError(f"{rkey!r} cannot name a feed: {exc.message}") from None
    blob = None
    if avatar is not None:
        try:
            data = avatar.read_bytes()
        except OSError as exc:
            raise PublishError(f"cannot read {avatar}: {exc.strerror}") from None
        if len(data) > MAX_AVATAR_BYTES:
            raise PublishError(f"the avatar is larger than {MAX_AVATAR_BYTES} bytes")
        uploaded = await xrpc_post(
            http,
            session.pds_url,
            "com.atproto.repo.uploadBlob",
            content=data,
            headers={**session.headers, "Content-Type": _image_type(data)},
        )
        blob = uploaded["blob"]
    old = await _existing(http, session, rkey)
    if blob is None and old is not None and "avatar" in old:
        blob = old["avatar"]
    record = generator_record(
        service_did=service_did,
        display_name=display_name,
        description=description,
        avatar=blob,
        content_mode=content_mode,
        accepts_interactions=accepts_interactions,
        created_at=old.get("createdAt") if old else None,
    )
    try:
        catalog.validate_record(FEED_COLLECTION, record)
    except RoostError as exc:
        raise PublishError(f"the feed record is not valid: {exc.message}") from None
    out = await xrpc_post(
        http,
        session.pds_url,
        "com.atproto.repo.putRecord",
        json={"repo": session.did, "collection": FEED_COLLECTION, "rkey": rkey, "record": record},
        headers=session.headers,
    )
    return {"uri": out["uri"], "cid": out["cid"]}


async def unpublish(http: httpx.AsyncClient, session: Session, rkey: str) -> bool:
    """Delete the feed record; False if there was none."""
    if await _existing(http, session, rkey) is None:
        return False
    await xrpc_post(
        http,
        session.pds_url,
        "com.atproto.repo.deleteRecord",
        json={"repo": session.did, "collection": FEED_COLLECTION, "rkey": rkey},
        headers=session.headers,
    )
    return True
