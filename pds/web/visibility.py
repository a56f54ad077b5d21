"""Can the rest of the network see an account? The admin console's check.

A post is visible to other people only when every link of the chain holds:
the DID document (from the PLC directory) names this server as the account's
PDS and carries the account's signing key, the handle and the DID point at
each other, and each configured relay knows this host, holds the account as
active and has seen its latest commit. :func:`check_visibility` asks each
party over the network the way they would be asked by anyone else, with short
timeouts, and returns one :class:`CheckItem` per link: passed or not, with the
exact reason.

How the handle is resolved depends on the network. On a public server the
handle goes through DNS (``_atproto.<handle>`` TXT) and
``https://<handle>/.well-known/atproto-did`` like any AppView does. On a local
network (``allow_local``) handles under the server's domain have no DNS, so the
check asks this server's own ``/.well-known/atproto-did`` with the handle as
the host name, which is what a local relay or AppView is wired to do.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

import httpx

from pds.context import PdsContext
from pds.sqlite import AccountRow
from roost.errors import RoostError
from roost.identity import DidDocument, DidResolver, HandleResolver

__all__ = ["RELAY_TIMEOUT_S", "RESOLVE_TIMEOUT_S", "CheckItem", "check_visibility"]

#: Each request to a relay, and each identity resolution, gives up after this long.
RELAY_TIMEOUT_S: Final = 4.0
RESOLVE_TIMEOUT_S: Final = 4.0
#: Host statuses under which a relay still takes this server's events.
_HOST_OK: Final = ("active", "idle")


@dataclass(frozen=True, slots=True)
class CheckItem:
    """One link of the chain: what was checked, whether it holds, and why."""

    title: str
    ok: bool
    detail: str


def _origin(url: str) -> str:
    return url.rstrip("/")


def _netloc(url: str) -> str:
    return urlsplit(url).netloc.lower()


async def _resolve_document(p: PdsContext, did: str) -> DidDocument:
    resolver = DidResolver(
        plc_url=p.config.plc_url, allow_local=p.config.allow_local, timeout=RESOLVE_TIMEOUT_S
    )
    try:
        return await resolver.resolve(did)
    finally:
        await resolver.aclose()


def _document_items(p: PdsContext, account: AccountRow, doc: DidDocument) -> list[CheckItem]:
    ours = p.config.url
    source = f"the DID document ({p.config.plc_url})"
    if doc.pds_endpoint is None:
        pds = CheckItem("DID document points to this PDS", False,
                        f"{source} has no #atproto_pds service: nobody can find the repo.")
    elif _origin(doc.pds_endpoint) != _origin(ours):
        pds = CheckItem("DID document points to this PDS", False,
                        f"{source} names {doc.pds_endpoint} as the PDS, but this server is "
                        f"{ours}: the network reads the account from there, and relays refuse "
                        "its commits from here.")
    else:
        pds = CheckItem("DID document points to this PDS", True,
                        f"{source} names {doc.pds_endpoint} as the PDS.")
    expected = p.signing_key(account).public_key
    if doc.signing_key is None:
        key = CheckItem("DID document has the account's signing key", False,
                        f"{source} has no usable #atproto key: no commit can be verified.")
    elif doc.signing_key != expected:
        key = CheckItem("DID document has the account's signing key", False,
                        f"{source} lists {doc.signing_key.did_key()}, but this server signs "
                        f"with {expected.did_key()}: relays reject every commit.")
    else:
        key = CheckItem("DID document has the account's signing key", True,
                        f"#atproto is {expected.did_key()}, the key this server signs with.")
    if doc.handle is None:
        back = CheckItem("DID document claims the handle", False,
                         f"{source} has no at:// handle in alsoKnownAs.")
    elif doc.handle != account.handle:
        back = CheckItem("DID document claims the handle", False,
                         f"alsoKnownAs claims at://{doc.handle}, but the account's handle here "
                         f"is {account.handle}: apps show the handle as invalid.")
    else:
        back = CheckItem("DID document claims the handle", True,
                         f"alsoKnownAs claims at://{doc.handle}.")
    return [pds, key, back]


async def _identity_items(p: PdsContext, account: AccountRow) -> list[CheckItem]:
    try:
        doc = await _resolve_document(p, account.did)
    except RoostError as exc:
        why = f"{type(exc).__name__}: {exc.message}"
        return [
            CheckItem("DID document points to this PDS", False,
                      f"could not resolve {account.did} through {p.config.plc_url}: {why}"),
            CheckItem("DID document has the account's signing key", False,
                      "not checked: the DID document could not be read."),
            CheckItem("DID document claims the handle", False,
                      "not checked: the DID document could not be read."),
        ]
    return _document_items(p, account, doc)


def _handle_resolver(p: PdsContext) -> tuple[HandleResolver, str]:
    """The resolver to use here, and how it resolves (for the message)."""
    config = p.config
    if not config.allow_local:
        resolver = HandleResolver(timeout=RESOLVE_TIMEOUT_S, dns_timeout=RESOLVE_TIMEOUT_S)
        return resolver, "DNS TXT _atproto.<handle> and https://<handle>/.well-known/atproto-did"
    own = urlsplit(config.url)
    scheme, host, port = own.scheme, own.hostname or "127.0.0.1", own.port

    async def to_this_server(name: str) -> Sequence[str]:
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(host, port or None)
        return sorted({str(info[4][0]) for info in infos})

    def url(handle: str) -> str:
        return f"{scheme}://{handle}{':' + str(port) if port else ''}/.well-known/atproto-did"

    resolver = HandleResolver(
        allow_local=True,
        resolve_host=to_this_server,
        handle_url=url,
        use_dns=False,
        timeout=RESOLVE_TIMEOUT_S,
    )
    return resolver, f"local network: this server's /.well-known/atproto-did at {url('<handle>')}"


async def _handle_items(p: PdsContext, account: AccountRow) -> list[CheckItem]:
    title = "Handle resolves to the DID"
    resolver, how = _handle_resolver(p)
    try:
        did = await resolver.resolve(account.handle)
    except RoostError as exc:
        why = f"{account.handle} did not resolve ({how}): {exc.message}"
        return [CheckItem(title, False, why)]
    finally:
        await resolver.aclose()
    if did != account.did:
        why = f"{account.handle} resolves to {did}, not to {account.did} ({how})."
        return [CheckItem(title, False, why)]
    return [CheckItem(title, True, f"{account.handle} → {did} ({how}).")]


# -- relays ---------------------------------------------------------------------------------


class _RelayProblem(Exception):
    """A relay could not be asked, or gave an answer that is not XRPC."""


async def _ask(
    http: httpx.AsyncClient, relay: str, nsid: str, params: Mapping[str, str]
) -> tuple[int, dict[str, Any]]:
    """(status, JSON body) of a relay query; :class:`_RelayProblem` when unreachable."""
    url = f"{relay.rstrip('/')}/xrpc/{nsid}"
    try:
        response = await http.get(url, params=params, timeout=RELAY_TIMEOUT_S)
    except (httpx.HTTPError, RoostError) as exc:
        raise _RelayProblem(f"relay unreachable ({url}): {type(exc).__name__}: {exc}") from None
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise _RelayProblem(
            f"{nsid} on {relay} answered HTTP {response.status_code} without an XRPC JSON body"
        )
    return response.status_code, body


def _xrpc_error(status: int, body: Mapping[str, Any]) -> str:
    return f"HTTP {status} {body.get('error', '')}: {body.get('message', '')}".rstrip(": ")


def _host_names(p: PdsContext) -> list[str]:
    """Names a relay may know this server by: its URL's host[:port], then its hostname."""
    names = [_netloc(p.config.url), p.config.hostname.lower()]
    return list(dict.fromkeys(n for n in names if n))


async def _host_item(p: PdsContext, relay: str, title: str) -> CheckItem:
    asked: list[str] = []
    for name in _host_names(p):
        asked.append(name)
        status, body = await _ask(
            p.http, relay, "com.atproto.sync.getHostStatus", {"hostname": name}
        )
        if status == 200:
            state = body.get("status")
            seq = body.get("seq")
            facts = f"status {state or 'not reported'}" + (f", seq {seq}" if seq else "")
            if state is None or state in _HOST_OK:
                return CheckItem(title, True, f"the relay knows {name} ({facts}).")
            return CheckItem(title, False, f"the relay knows {name} ({facts}): it does not "
                             "take this server's events.")
        if body.get("error") != "HostNotFound":
            return CheckItem(title, False,
                             f"getHostStatus({name}) failed: {_xrpc_error(status, body)}")
    return CheckItem(title, False,
                     f"the relay has no record of this host (asked for {', '.join(asked)}): "
                     "it never crawled this server. The PDS asks it at start (requestCrawl); "
                     "check the relay's crawl settings.")


async def _repo_item(p: PdsContext, did: str, relay: str, title: str) -> CheckItem:
    status, body = await _ask(p.http, relay, "com.atproto.sync.getRepoStatus", {"did": did})
    if status != 200:
        unseen = body.get("error") == "RepoNotFound"
        return CheckItem(title, False, f"getRepoStatus failed: {_xrpc_error(status, body)}"
                         + (" (the relay has seen no event of this account)" if unseen else ""))
    if body.get("active") is True:
        rev = body.get("rev")
        return CheckItem(title, True, "active" + (f" at rev {rev}." if rev else "."))
    return CheckItem(title, False, "the relay holds the account as inactive "
                     f"(status {body.get('status') or 'not given'}).")


async def _commit_item(
    p: PdsContext, did: str, relay: str, title: str, ours: Mapping[str, str] | None
) -> CheckItem:
    status, body = await _ask(p.http, relay, "com.atproto.sync.getLatestCommit", {"did": did})
    if ours is None:
        return CheckItem(title, False, "this server has no commit for the account.")
    if status != 200:
        return CheckItem(title, False, f"getLatestCommit failed: {_xrpc_error(status, body)}")
    if body.get("cid") == ours["cid"] and body.get("rev") == ours["rev"]:
        return CheckItem(title, True, f"rev {ours['rev']} (commit {ours['cid']}).")
    return CheckItem(title, False,
                     f"the relay has rev {body.get('rev')} (commit {body.get('cid')}), "
                     f"this server has rev {ours['rev']} (commit {ours['cid']}).")


async def _relay_items(
    p: PdsContext, account: AccountRow, relay: str, ours: Mapping[str, str] | None
) -> list[CheckItem]:
    """Host, account and commit as one relay sees them; all red once it is unreachable."""
    titles = (
        f"Relay {relay} knows this host",
        f"Account is active on relay {relay}",
        f"Relay {relay} has our latest commit",
    )
    items: list[CheckItem] = []
    try:
        items.append(await _host_item(p, relay, titles[0]))
        items.append(await _repo_item(p, account.did, relay, titles[1]))
        items.append(await _commit_item(p, account.did, relay, titles[2], ours))
    except _RelayProblem as exc:
        # once a relay cannot be asked, each remaining item says why
        items.extend(CheckItem(title, False, str(exc)) for title in titles[len(items):])
    return items


async def check_visibility(
    p: PdsContext, account: AccountRow, ours: Mapping[str, str] | None
) -> list[CheckItem]:
    """Every link between ``account`` and the rest of the network, checked concurrently.

    ``ours`` is the account's latest commit here (``{"cid", "rev"}``), or None.
    """
    relays = p.config.relay_urls
    parts = await asyncio.gather(
        _identity_items(p, account),
        _handle_items(p, account),
        *(_relay_items(p, account, relay, ours) for relay in relays),
    )
    items = [item for part in parts for item in part]
    if not relays:
        items.append(CheckItem(
            "A relay is configured", False,
            "no relay URL is configured (--relay-url / ROOST_RELAY_URLS): no relay crawls this "
            "server, so no feed or app sees its posts."))
    if account.status != "active":
        items.insert(0, CheckItem(
            "Account is active here", False,
            f"the account's status on this server is {account.status}: "
            "nothing of it is served to the network."))
    else:
        items.insert(0, CheckItem("Account is active here", True, "status active."))
    return items
