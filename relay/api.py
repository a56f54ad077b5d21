"""``com.atproto.sync.*`` served by the relay (``spec/relay.md`` section 9).

Answered from the relay's own state (it keeps no repo contents):
``listHosts`` and ``getHostStatus`` (hosts with their cursor, account count
and status, plus a ``roostLimits`` object: the host's account and event-rate
limits and how often they bit), ``listRepos``, ``getRepoStatus`` and
``getLatestCommit`` (the ``(rev, commit)`` of the last accepted commit),
``requestCrawl``, and ``getRepo`` as a redirect to the account's PDS.
``subscribeRepos`` is served by :mod:`relay.fanout`.
"""

from __future__ import annotations

from typing import Any, Final

from starlette.responses import RedirectResponse, Response

from roost.errors import IdentityError, RoostError
from roost.ratelimit import RateLimit
from roost.xrpc import XrpcContext, XrpcRouter

from relay.core import Relay
from relay.errors import RelayRepoNotFound, RepoNotSynchronized, inactive_repo

__all__ = ["CRAWL_LIMIT", "register", "relay_of"]

#: requestCrawl calls per client address (each one may cost an outbound request).
CRAWL_LIMIT: Final = RateLimit("relay-request-crawl", 30, 3600, per="ip")


def relay_of(ctx: XrpcContext) -> Relay:
    return ctx.request.app.state.relay  # type: ignore[no-any-return]


def register(router: XrpcRouter) -> None:
    router.procedure("com.atproto.sync.requestCrawl", rate_limits=[CRAWL_LIMIT])(request_crawl)
    router.query("com.atproto.sync.listHosts")(list_hosts)
    router.query("com.atproto.sync.getHostStatus")(get_host_status)
    router.query("com.atproto.sync.listRepos")(list_repos)
    router.query("com.atproto.sync.getRepoStatus")(get_repo_status)
    router.query("com.atproto.sync.getLatestCommit")(get_latest_commit)
    router.query("com.atproto.sync.getRepo")(get_repo)


async def request_crawl(ctx: XrpcContext) -> None:
    await relay_of(ctx).request_crawl(ctx.input["hostname"])


async def list_hosts(ctx: XrpcContext) -> dict[str, Any]:
    relay = relay_of(ctx)
    limit = ctx.params["limit"]
    cursor = ctx.params.get("cursor")
    after = _int_cursor(cursor)
    hosts = sorted(
        (h for h in relay.registry.hosts.values() if h.id > after and h.cursor > 0),
        key=lambda h: h.id,
    )[:limit]
    out: dict[str, Any] = {"hosts": [h.describe() for h in hosts]}
    if len(hosts) == limit:
        out["cursor"] = str(hosts[-1].id)
    return out


async def get_host_status(ctx: XrpcContext) -> dict[str, Any]:
    return relay_of(ctx).host_status(ctx.params["hostname"]).describe()


async def list_repos(ctx: XrpcContext) -> dict[str, Any]:
    relay = relay_of(ctx)
    limit = ctx.params["limit"]
    rows = relay.store.list_repos(_int_cursor(ctx.params.get("cursor")), limit)
    repos = [
        {"did": a.did, "head": str(a.commit_cid), "rev": a.rev, "active": True}
        for a in rows
        if a.commit_cid is not None
    ]
    out: dict[str, Any] = {"repos": repos}
    if len(rows) == limit:
        out["cursor"] = str(rows[-1].uid)
    return out


async def get_repo_status(ctx: XrpcContext) -> dict[str, Any]:
    did = ctx.params["did"]
    acct = relay_of(ctx).registry.account(did)
    if acct is None:
        raise RelayRepoNotFound(f"Could not find repo: {did}")
    out: dict[str, Any] = {"did": did, "active": acct.active}
    if acct.public_status is not None:
        out["status"] = acct.public_status
    if acct.active and acct.rev is not None:
        out["rev"] = acct.rev
    return out


async def get_latest_commit(ctx: XrpcContext) -> dict[str, Any]:
    did = ctx.params["did"]
    acct = relay_of(ctx).registry.account(did)
    if acct is None:
        raise RelayRepoNotFound(f"Could not find repo: {did}")
    if not acct.active and acct.public_status != "desynchronized":
        raise inactive_repo(did, acct.public_status)
    if acct.rev is None or acct.commit_cid is None:
        raise RepoNotSynchronized(f"No commit seen yet for {did}")
    return {"cid": str(acct.commit_cid), "rev": acct.rev}


async def get_repo(ctx: XrpcContext) -> Response:
    """Redirect to the account's PDS (the relay keeps no repo contents)."""
    did = ctx.params["did"]
    try:
        doc = await relay_of(ctx).identity.lookup_did(did)
    except IdentityError:
        raise RelayRepoNotFound(f"Could not resolve repo: {did}") from None
    if doc.pds_endpoint is None:
        raise RelayRepoNotFound(f"{did} has no PDS")
    query = ctx.request.url.query
    return RedirectResponse(
        f"{doc.pds_endpoint}/xrpc/com.atproto.sync.getRepo?{query}", status_code=302
    )


def _int_cursor(cursor: Any) -> int:
    if cursor is None or cursor == "":
        return 0
    if not isinstance(cursor, str) or not cursor.isdigit():
        raise RoostError("cursor must be a number from a previous page")
    return int(cursor)
