"""The operator's API under ``/admin/`` (HTTP Basic auth, user ``admin``).

Paths follow indigo's relay, so its operators find their way::

    POST /admin/pds/requestCrawl   {"hostname"}          add a host (no quota, no TLS rule)
    GET  /admin/pds/list                                 hosts with limits, counters, connection
    POST /admin/pds/changeLimits   {"host", "repo_limit"} account limit (raising it re-activates)
    POST /admin/pds/block          {"host"} or ?host=    ban a host, drop its connection
    POST /admin/pds/unblock        {"host"} or ?host=
    POST /admin/repo/takeDown      {"did", "reason"?}    its events stop flowing
    POST /admin/repo/reverseTakedown {"did"}
    GET  /admin/repo/takedowns     ?cursor=
    GET  /admin/subs/listDomainBans
    POST /admin/subs/banDomain     {"domain"}            bans the domain and its subdomains
    POST /admin/subs/unbanDomain   {"domain"}
    GET  /admin/consumers/list                           connected subscribeRepos clients
    GET  /admin/log                ?before=&limit=       the admin action log, newest first

Every state-changing call is recorded in the admin action log (the
``admin_action`` table) together with its effect. Without a configured
password every call is refused.

The dashboard's forms (:mod:`relay.web`) run the same handlers
(:data:`HOST_ACTIONS`, :data:`REPO_ACTIONS`), so what an operator does in the
browser is checked, applied and logged exactly like an API call.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from roost.auth import AdminAuth
from roost.errors import AuthRequired, InternalServerError, RoostError
from roost.xrpc import error_response, json_response

from relay.core import Relay

__all__ = ["HOST_ACTIONS", "MAX_ADMIN_BODY", "REPO_ACTIONS", "Handler", "routes"]

log = logging.getLogger(__name__)

#: Largest admin request body read.
MAX_ADMIN_BODY: Final = 64 * 1024
#: Page size of the takedown list and the action log.
PAGE: Final = 500

Handler = Callable[[Relay, Request, dict[str, Any]], Awaitable[Any]]


def _endpoint(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        relay: Relay = request.app.state.relay
        try:
            password = relay.config.admin_password
            if not password:
                raise AuthRequired("Admin authentication is not configured")
            await AdminAuth(password)(request, "admin")
            body: dict[str, Any] = {}
            if request.method == "POST":
                raw = await request.body()
                if len(raw) > MAX_ADMIN_BODY:
                    raise RoostError("request body is too large")
                if raw:
                    try:
                        body = json.loads(raw)
                    except ValueError:
                        raise RoostError("request body must be JSON") from None
                    if not isinstance(body, dict):
                        raise RoostError("request body must be a JSON object")
            result = await handler(relay, request, body)
        except RoostError as exc:
            return error_response(exc)
        except Exception:
            log.exception("admin call failed path=%s", request.url.path)
            return error_response(InternalServerError("Internal Server Error"))
        return json_response(result if result is not None else {})

    return endpoint


def _arg(request: Request, body: dict[str, Any], *names: str) -> str:
    for name in names:
        value = body.get(name, request.query_params.get(name))
        if isinstance(value, str) and value:
            return value
    raise RoostError(f"{names[0]} is required")


async def add_host(relay: Relay, request: Request, body: dict[str, Any]) -> Any:
    host = await relay.request_crawl(_arg(request, body, "hostname", "host"), admin=True, actor="admin")
    return host.details()


async def list_hosts(relay: Relay, request: Request, body: dict[str, Any]) -> Any:
    return {"hosts": [h.details() for h in sorted(relay.registry.hosts.values(), key=lambda h: h.id)]}


async def change_limits(relay: Relay, request: Request, body: dict[str, Any]) -> Any:
    limit = body.get("repo_limit", body.get("accountLimit"))
    if isinstance(limit, str) and limit.isdigit():
        limit = int(limit)
    host = await relay.set_account_limit(_arg(request, body, "host", "hostname"), limit)  # type: ignore[arg-type]
    return host.details()


async def block_host(relay: Relay, request: Request, body: dict[str, Any]) -> Any:
    return (await relay.ban_host(_arg(request, body, "host", "hostname"))).details()


async def unblock_host(relay: Relay, request: Request, body: dict[str, Any]) -> Any:
    return (await relay.unban_host(_arg(request, body, "host", "hostname"))).details()


async def take_down(relay: Relay, request: Request, body: dict[str, Any]) -> Any:
    reason = body.get("reason")
    acct = await relay.takedown(
        _arg(request, body, "did"), reason=reason if isinstance(reason, str) else ""
    )
    return {"did": acct.did, "status": acct.public_status}


async def reverse_takedown(relay: Relay, request: Request, body: dict[str, Any]) -> Any:
    acct = await relay.restore(_arg(request, body, "did"))
    return {"did": acct.did, "active": acct.active, "status": acct.public_status}


async def takedowns(relay: Relay, request: Request, body: dict[str, Any]) -> Any:
    cursor = request.query_params.get("cursor", "0")
    after = int(cursor) if cursor.isdigit() else 0
    rows = relay.store.takedowns(after, PAGE)
    out: dict[str, Any] = {"dids": [a.did for a in rows]}
    if len(rows) == PAGE:
        out["cursor"] = str(rows[-1].uid)
    return out


async def list_domain_bans(relay: Relay, request: Request, body: dict[str, Any]) -> Any:
    return {"banned_domains": sorted(relay.registry.domain_bans)}


async def ban_domain(relay: Relay, request: Request, body: dict[str, Any]) -> Any:
    await relay.ban_domain(_arg(request, body, "domain"))
    return {"success": True}


async def unban_domain(relay: Relay, request: Request, body: dict[str, Any]) -> Any:
    await relay.unban_domain(_arg(request, body, "domain"))
    return {"success": True}


async def list_consumers(relay: Relay, request: Request, body: dict[str, Any]) -> Any:
    sequencer = relay.sequencer
    return {
        "consumers": [c.describe() for c in relay.fanout.consumers.values()],
        "sentBackToReplay": sequencer.sent_back_to_replay,
        "droppedTooSlow": sequencer.dropped_too_slow + relay.fanout.stalled_dropped,
        "queuedEvents": sequencer.queued_events,
    }


async def action_log(relay: Relay, request: Request, body: dict[str, Any]) -> Any:
    before = request.query_params.get("before", "")
    limit = request.query_params.get("limit", str(PAGE))
    count = max(1, min(int(limit), PAGE)) if limit.isdigit() else PAGE
    return {"actions": relay.store.admin_actions(int(before) if before.isdigit() else None, count)}


#: The dashboard's host and repo buttons: form ``action`` -> the API handler run.
HOST_ACTIONS: Final[dict[str, Handler]] = {"ban": block_host, "unban": unblock_host}
REPO_ACTIONS: Final[dict[str, Handler]] = {"takedown": take_down, "restore": reverse_takedown}


def routes() -> list[Route]:
    """The ``/admin/`` routes, to add to the relay app."""
    table: list[tuple[str, str, Handler]] = [
        ("/admin/pds/requestCrawl", "POST", add_host),
        ("/admin/pds/list", "GET", list_hosts),
        ("/admin/pds/changeLimits", "POST", change_limits),
        ("/admin/pds/block", "POST", block_host),
        ("/admin/pds/unblock", "POST", unblock_host),
        ("/admin/repo/takeDown", "POST", take_down),
        ("/admin/repo/reverseTakedown", "POST", reverse_takedown),
        ("/admin/repo/takedowns", "GET", takedowns),
        ("/admin/subs/listDomainBans", "GET", list_domain_bans),
        ("/admin/subs/banDomain", "POST", ban_domain),
        ("/admin/subs/unbanDomain", "POST", unban_domain),
        ("/admin/consumers/list", "GET", list_consumers),
        ("/admin/log", "GET", action_log),
    ]
    return [Route(path, _endpoint(handler), methods=[method]) for path, method, handler in table]
