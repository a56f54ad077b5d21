"""``roost account migrate`` and ``roost account status``: move an account between hosts.

The cooperative flow of ``spec/account-migration.md`` section 4, run from the
account holder's machine against both PDSes over their public XRPC API:

====  ==================================================  ============================
step  what                                                skipped on a re-run when
====  ==================================================  ============================
1     log in to the old host                              (always)
2     preflight: new host reachable, sign-up rules,       the DID already moved
      blob size limit, free space
3     service-auth token (old) -> createAccount (new)     the new account exists
4     getRepo (old) -> importRepo (new)                   new repoRev = old rev
5     listMissingBlobs (new): getBlob -> uploadBlob       nothing is missing
6     preferences                                         (idempotent)
7     point of no return: confirmation                    the DID already moved
8     PLC: recommended credentials (new), token and       the DID already points at
      signPlcOperation (old), submitPlcOperation (new)    the new host
9     activateAccount (new), deactivateAccount (old)      already done
10    checks: DID document, both hosts, the relay         (always)
====  ==================================================  ============================

Nothing is kept locally between runs: every step asks the hosts and the
directory where the account stands, so running the command again after any
interruption continues where it stopped, and the checks at the end say
plainly whether the move is complete.

For a did:web account the PLC steps are replaced by the exact ``did.json``
the person must publish; the command waits until it is served.

The preflight compares what the account holds with what the new host takes.
``describeServer``'s ``blobUploadLimit`` (an optional lexicon field) is the
largest blob the new host accepts; a roost host also publishes
``roostStorage`` (free space, largest repo CAR) there, and reports the bytes
of an account's repo and blobs and its largest blob in ``checkAccountStatus``
(``roostRepoBytes``, ``roostBlobBytes``, ``roostLargestBlob``). Other hosts
publish none of this; a check that lacks its figures is skipped, saying so,
and a blob the new host refuses is reported at the end like any failed copy.

``ROOST_MIGRATE_STOP_AFTER`` (``import``, ``blob`` or ``plc``) kills the
command with SIGKILL right after that step (after the first blob for
``blob``): the resumption tests use it to interrupt a real process at a known
point, the way a crash or a closed laptop would.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Final, TextIO
from urllib.parse import urlsplit

import httpx

from roost.identity import DidDocument, DidResolver
from roost.progress import Progress, format_bytes

__all__ = [
    "BLOB_ATTEMPTS",
    "STOP_AFTER_ENV",
    "STOP_POINTS",
    "MigrateOptions",
    "MigrationError",
    "Migration",
    "StatusReport",
    "account_status",
]

#: Attempts per blob transfer before it is reported as failed.
BLOB_ATTEMPTS: Final = 4
#: Blobs asked for per listMissingBlobs page.
BLOB_PAGE: Final = 500
#: HTTP timeout for ordinary calls; repo and blob transfers get :data:`TRANSFER_TIMEOUT_S`.
CALL_TIMEOUT_S: Final = 30.0
TRANSFER_TIMEOUT_S: Final = 600.0
#: How long the final checks wait for the relay to catch up.
RELAY_WAIT_S: Final = 20.0
#: How long to wait for a did:web document to be updated before giving up.
DID_WEB_WAIT_S: Final = 600.0
#: Environment variable naming a step after which the command kills itself (tests).
STOP_AFTER_ENV: Final = "ROOST_MIGRATE_STOP_AFTER"
STOP_POINTS: Final = ("import", "blob", "plc")


def _checkpoint(stage: str) -> None:
    """SIGKILL this process if :data:`STOP_AFTER_ENV` names ``stage`` (see the module docstring)."""
    if os.environ.get(STOP_AFTER_ENV) == stage:
        sys.stdout.flush()
        os.kill(os.getpid(), signal.SIGKILL)


class MigrationError(RuntimeError):
    """A step failed; the message says which and what to do."""


@dataclass(slots=True)
class MigrateOptions:
    from_url: str
    to_url: str
    identifier: str                      # handle or DID on the old host
    password: str                        # the account's password on the old host
    new_handle: str | None = None
    new_password: str | None = None      # defaults to the old one
    email: str | None = None
    invite_code: str | None = None
    plc_url: str = "https://plc.directory"
    relay_url: str | None = None
    yes: bool = False
    allow_local: bool = False
    plc_token: str | None = None
    #: Asks for the confirmation code the old host sent (``requestPlcOperationSignature``).
    ask_token: Callable[[str], str] = field(default=lambda prompt: input(prompt))
    #: Asks a yes/no question; True to go on.
    confirm: Callable[[str], bool] = field(
        default=lambda prompt: input(prompt).strip().lower() in ("y", "yes")
    )
    out: TextIO = field(default_factory=lambda: sys.stdout)
    progress_stream: TextIO | None = None


class _Host:
    """One PDS over XRPC, with a session once logged in."""

    def __init__(self, name: str, url: str, http: httpx.AsyncClient) -> None:
        self.name = name
        self.url = url.rstrip("/")
        self.http = http
        self.access: str | None = None

    def _headers(self, token: str | None) -> dict[str, str]:
        token = token or self.access
        return {"authorization": f"Bearer {token}"} if token else {}

    async def call(
        self, method: str, nsid: str, *, params: dict[str, Any] | None = None,
        body: Any = None, content: bytes | None = None, content_type: str | None = None,
        token: str | None = None, timeout: float = CALL_TIMEOUT_S, raw: bool = False,
    ) -> Any:
        headers = self._headers(token)
        if content_type:
            headers["content-type"] = content_type
        try:
            response = await self.http.request(
                method, f"{self.url}/xrpc/{nsid}", params=params, json=body, content=content,
                headers=headers, timeout=timeout,
            )
        except httpx.HTTPError as exc:
            raise MigrationError(f"cannot reach the {self.name} host {self.url}: {exc}") from None
        if not response.is_success:
            raise XrpcFailure(self.name, nsid, response)
        if raw:
            return response.content
        return response.json() if response.content else {}

    async def login(self, identifier: str, password: str) -> dict[str, Any]:
        out = await self.call("POST", "com.atproto.server.createSession",
                              body={"identifier": identifier, "password": password})
        self.access = out["accessJwt"]
        return dict(out)


class XrpcFailure(MigrationError):
    def __init__(self, host: str, nsid: str, response: httpx.Response) -> None:
        try:
            data = response.json()
        except ValueError:
            data = {}
        self.error = data.get("error") if isinstance(data, dict) else None
        self.status = response.status_code
        message = data.get("message", "") if isinstance(data, dict) else ""
        super().__init__(
            f"{host} host: {nsid} failed: {self.error or response.status_code}"
            + (f": {message}" if message else "")
        )


def _same_host(a: str | None, b: str) -> bool:
    if not a:
        return False
    x, y = urlsplit(a.rstrip("/")), urlsplit(b.rstrip("/"))
    return (x.scheme, x.hostname, x.port) == (y.scheme, y.hostname, y.port)


class Migration:
    """The whole flow; :meth:`run` returns 0 when the account has fully moved."""

    def __init__(self, options: MigrateOptions, http: httpx.AsyncClient | None = None) -> None:
        self.o = options
        self._http = http
        self.did = ""
        self.old_handle = ""
        self.failed_blobs: list[str] = []
        #: Wall time of each phase run (export, import, blobs, plc, activate, ...), seconds.
        self.timings: dict[str, float] = {}

    @contextmanager
    def _timed(self, phase: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[phase] = self.timings.get(phase, 0.0) + time.perf_counter() - start

    def say(self, text: str) -> None:
        print(text, file=self.o.out, flush=True)

    def step(self, text: str) -> None:
        self.say(f"==> {text}")

    async def run(self) -> int:
        if self._http is not None:
            return await self._run(self._http)
        async with httpx.AsyncClient() as http:
            return await self._run(http)

    async def _resolve(self, http: httpx.AsyncClient) -> DidDocument:
        resolver = DidResolver(plc_url=self.o.plc_url, allow_local=self.o.allow_local)
        try:
            return await resolver.resolve(self.did)
        finally:
            await resolver.aclose()

    async def _run(self, http: httpx.AsyncClient) -> int:
        old = _Host("old", self.o.from_url, http)
        new = _Host("new", self.o.to_url, http)

        self.step(f"logging in to {old.url}")
        session = await old.login(self.o.identifier, self.o.password)
        self.did, self.old_handle = session["did"], session["handle"]
        self.say(f"    {self.old_handle} is {self.did}")
        if not self.did.startswith(("did:plc:", "did:web:")):
            raise MigrationError(f"cannot migrate {self.did}: only did:plc and did:web")

        self.step(f"preflight: {new.url}")
        server = await new.call("GET", "com.atproto.server.describeServer")
        new_did = server.get("did")
        if not new_did:
            raise MigrationError("the new host's describeServer has no service DID")
        new_handle = self.o.new_handle or self._default_handle(server)
        self.say(f"    new host {new_did}, handle there: {new_handle}")

        doc = await self._resolve(http)
        moved = _same_host(doc.pds_endpoint, new.url)
        password = self.o.new_password or self.o.password
        exists = await self._try_login(new, password)
        if not exists and moved:
            raise MigrationError(
                "the DID already points at the new host but no account there accepts this "
                "password: log in to the new host directly")
        if not moved:
            if not exists:
                self._check_signup(server)
            await self._check_room(old, new if exists else None, server)
        if not exists:
            self.step("creating the account on the new host (deactivated until the move)")
            token = (await old.call("GET", "com.atproto.server.getServiceAuth", params={
                "aud": new_did, "lxm": "com.atproto.server.createAccount"}))["token"]
            body: dict[str, Any] = {"did": self.did, "handle": new_handle, "password": password}
            body["email"] = self.o.email or session.get("email") or f"{new_handle}@invalid.test"
            if self.o.invite_code:
                body["inviteCode"] = self.o.invite_code
            await new.call("POST", "com.atproto.server.createAccount", body=body, token=token)
            await new.login(self.did, password)
        else:
            self.say("    the account already exists on the new host: continuing")

        status = await new.call("GET", "com.atproto.server.checkAccountStatus")
        if not status.get("activated"):
            if not moved:
                await self._transfer(old, new, status)
                if not await self._point_of_no_return(new):
                    self.say("stopped before the point of no return; nothing visible changed. "
                             "Run again to continue.")
                    return 1
                with self._timed("plc"):
                    await self._update_identity(old, new)
            self.step("activating the account on the new host")
            with self._timed("activate"):
                await new.call("POST", "com.atproto.server.activateAccount")
        self.step("deactivating the account on the old host")
        try:
            with self._timed("deactivate"):
                await old.call("POST", "com.atproto.server.deactivateAccount", body={})
        except XrpcFailure as exc:
            self.say(f"    warning: {exc}")
        with self._timed("checks"):
            return await self._checks(http, old, new)

    def _default_handle(self, server: dict[str, Any]) -> str:
        domains = server.get("availableUserDomains") or []
        if not domains:
            raise MigrationError("the new host lists no user domains: pass --new-handle")
        first_label = self.old_handle.split(".", 1)[0]
        return first_label + str(domains[0])

    def _check_signup(self, server: dict[str, Any]) -> None:
        if server.get("inviteCodeRequired") and not self.o.invite_code:
            raise MigrationError("the new host requires an invite code: pass --invite-code")
        if server.get("roostApplication"):
            raise MigrationError(
                "the new host admits members by application: apply on its web page first, "
                "or ask its operator for an invite code (--invite-code)")

    async def _check_room(self, old: _Host, new: _Host | None, server: dict[str, Any]) -> None:
        """Refuse a move the new host cannot hold: a blob above its upload limit,
        a repo above its import limit, more bytes than it has free.

        ``new`` is given when the account already exists there (a re-run): what
        it already holds is not counted again.
        """
        theirs = await old.call("GET", "com.atproto.server.checkAccountStatus")
        largest, limit = theirs.get("roostLargestBlob"), server.get("blobUploadLimit")
        if isinstance(largest, int) and isinstance(limit, int):
            if largest > limit:
                raise MigrationError(
                    f"the account's largest blob is {format_bytes(largest)} but the new host "
                    f"takes blobs up to {format_bytes(limit)}: ask its operator to raise the "
                    "limit, or choose another host")
            self.say(f"    blobs: largest {format_bytes(largest)}, "
                     f"new host takes up to {format_bytes(limit)}")
        else:
            self.say("    blobs: size limit not checked ("
                     + ("the new host does not publish blobUploadLimit" if limit is None
                        else "the old host does not report blob sizes")
                     + "); a blob it refuses is reported at the end")
        storage = server.get("roostStorage")
        repo_bytes, blob_bytes = theirs.get("roostRepoBytes"), theirs.get("roostBlobBytes")
        if not (isinstance(storage, dict) and isinstance(repo_bytes, int)
                and isinstance(blob_bytes, int)):
            self.say("    space: not checked (the hosts do not report it)")
            return
        max_repo = storage.get("maxRepoBytes")
        if isinstance(max_repo, int) and repo_bytes > max_repo:
            raise MigrationError(
                f"the repository takes {format_bytes(repo_bytes)} but the new host imports "
                f"at most {format_bytes(max_repo)}")
        need = repo_bytes + blob_bytes
        if new is not None:  # a re-run: part of it is already there
            ours = await new.call("GET", "com.atproto.server.checkAccountStatus")
            need -= int(ours.get("roostRepoBytes", 0)) + int(ours.get("roostBlobBytes", 0))
        need = max(need, 0)
        free = storage.get("freeBytes")
        if isinstance(free, int):
            if need > free:
                raise MigrationError(
                    f"the account needs {format_bytes(need)} but the new host has only "
                    f"{format_bytes(free)} free: ask its operator for room, or choose another host")
            self.say(f"    space: {format_bytes(need)} to copy, {format_bytes(free)} free there")

    async def _try_login(self, new: _Host, password: str) -> bool:
        try:
            await new.login(self.did, password)
            return True
        except XrpcFailure as exc:
            if exc.status in (400, 401):
                return False
            raise

    async def _transfer(self, old: _Host, new: _Host, status: dict[str, Any]) -> None:
        theirs = await old.call("GET", "com.atproto.server.checkAccountStatus")
        # The new host re-signs an import (a later rev): it holds the current repo when
        # it has as many records and the old repo has not changed since (revs are TIDs,
        # ordered as strings).
        new_rev, old_rev = status.get("repoRev") or "", theirs.get("repoRev") or ""
        if (new_rev and old_rev and new_rev >= old_rev
                and status.get("indexedRecords") == theirs.get("indexedRecords")):
            self.step(f"repository already imported ({status.get('indexedRecords')} records)")
        else:
            self.step("copying the repository")
            with self._timed("export"):
                car = await self._download_repo(old)
            with (self._timed("import"),
                  Progress("import", stream=self.o.progress_stream, byte_counts=True) as bar):
                await new.call("POST", "com.atproto.repo.importRepo", content=car,
                               content_type="application/vnd.ipld.car",
                               timeout=TRANSFER_TIMEOUT_S)
                bar.advance(len(car))
            _checkpoint("import")
        with self._timed("blobs"):
            await self._copy_blobs(old, new)
        self.step("copying preferences")
        try:
            prefs = await old.call("GET", "app.bsky.actor.getPreferences")
            await new.call("POST", "app.bsky.actor.putPreferences",
                           body={"preferences": prefs.get("preferences", [])})
        except XrpcFailure as exc:
            self.say(f"    warning: preferences not copied: {exc}")
        status = await new.call("GET", "com.atproto.server.checkAccountStatus")
        self.say(f"    new host holds {status.get('indexedRecords')} records, "
                 f"{status.get('repoBlocks')} blocks, "
                 f"{status.get('importedBlobs')}/{status.get('expectedBlobs')} blobs")

    async def _download_repo(self, old: _Host) -> bytes:
        chunks: list[bytes] = []
        with Progress("repo", stream=self.o.progress_stream, byte_counts=True) as bar:
            try:
                async with old.http.stream(
                    "GET", f"{old.url}/xrpc/com.atproto.sync.getRepo", params={"did": self.did},
                    headers=old._headers(None), timeout=TRANSFER_TIMEOUT_S,
                ) as response:
                    if not response.is_success:
                        await response.aread()
                        raise XrpcFailure("old", "com.atproto.sync.getRepo", response)
                    async for chunk in response.aiter_bytes():
                        chunks.append(chunk)
                        bar.advance(len(chunk))
            except httpx.HTTPError as exc:
                raise MigrationError(f"repository download failed: {exc}; run again") from None
        return b"".join(chunks)

    async def _copy_blobs(self, old: _Host, new: _Host) -> None:
        status = await new.call("GET", "com.atproto.server.checkAccountStatus")
        todo = int(status.get("expectedBlobs", 0)) - int(status.get("importedBlobs", 0))
        if todo <= 0:
            self.step("blobs: nothing to copy")
            return
        self.step(f"copying {todo} blobs")
        self.failed_blobs = []
        skip: set[str] = set()
        with Progress("blobs", total=todo, unit="blobs", stream=self.o.progress_stream) as bar:
            while True:
                page = await new.call("GET", "com.atproto.repo.listMissingBlobs",
                                      params={"limit": BLOB_PAGE})
                missing = [b["cid"] for b in page.get("blobs", []) if b["cid"] not in skip]
                if not missing:
                    break
                for cid in missing:
                    if await self._copy_blob(old, new, cid):
                        bar.advance()
                        _checkpoint("blob")
                    else:
                        skip.add(cid)
                        self.failed_blobs.append(cid)
        if self.failed_blobs:
            self.say(f"    warning: {len(self.failed_blobs)} blobs could not be copied "
                     "(the move can go on; run again later to retry them): "
                     + ", ".join(self.failed_blobs[:5]))

    async def _copy_blob(self, old: _Host, new: _Host, cid: str) -> bool:
        for attempt in range(BLOB_ATTEMPTS):
            try:
                response = await old.http.get(
                    f"{old.url}/xrpc/com.atproto.sync.getBlob", params={"did": self.did, "cid": cid},
                    headers=old._headers(None), timeout=TRANSFER_TIMEOUT_S)
                if response.status_code in (400, 404):
                    return False  # the old host does not have it: retrying will not help
                response.raise_for_status()
                mime = response.headers.get("content-type", "application/octet-stream")
                await new.call("POST", "com.atproto.repo.uploadBlob", content=response.content,
                               content_type=mime, timeout=TRANSFER_TIMEOUT_S)
                return True
            except (httpx.HTTPError, MigrationError):
                await asyncio.sleep(min(0.5 * 2**attempt, 5.0))
        return False

    async def _point_of_no_return(self, new: _Host) -> bool:
        self.say("")
        self.say("Next, the identity is pointed at the new host. After this, the network follows")
        self.say("the account to the new host; going back means migrating again.")
        if self.o.yes:
            return True
        return self.o.confirm("Continue? [y/N] ")

    async def _update_identity(self, old: _Host, new: _Host) -> None:
        creds = await new.call("GET", "com.atproto.identity.getRecommendedDidCredentials")
        if self.did.startswith("did:web:"):
            await self._did_web(new, creds)
            return
        token = self.o.plc_token
        if token is None:
            # asking again would replace a code already sent: only without --plc-token
            self.step("asking the old host for a confirmation code")
            await old.call("POST", "com.atproto.identity.requestPlcOperationSignature")
            token = self.o.ask_token("Enter the confirmation code the old host sent you: ")
        token = token.strip()
        if not token:
            raise MigrationError("no confirmation code given; run again to continue")
        self.step("signing the identity update (old host) and submitting it (new host)")
        try:
            signed = await old.call("POST", "com.atproto.identity.signPlcOperation",
                                    body={"token": token, **creds})
        except XrpcFailure as exc:
            if exc.error in ("InvalidToken", "ExpiredToken") and self.o.plc_token:
                raise MigrationError(
                    f"{exc}; run again without --plc-token to be sent a new code") from None
            raise
        await new.call("POST", "com.atproto.identity.submitPlcOperation",
                       body={"operation": signed["operation"]})
        _checkpoint("plc")

    async def _did_web(self, new: _Host, creds: dict[str, Any]) -> None:
        key = (creds.get("verificationMethods") or {}).get("atproto", "")
        endpoint = ((creds.get("services") or {}).get("atproto_pds") or {}).get("endpoint", new.url)
        doc = {
            "@context": ["https://www.w3.org/ns/did/v1", "https://w3id.org/security/multikey/v1"],
            "id": self.did,
            "alsoKnownAs": creds.get("alsoKnownAs", []),
            "verificationMethod": [{
                "id": f"{self.did}#atproto", "type": "Multikey", "controller": self.did,
                "publicKeyMultibase": key.removeprefix("did:key:"),
            }],
            "service": [{"id": "#atproto_pds", "type": "AtprotoPersonalDataServer",
                         "serviceEndpoint": endpoint}],
        }
        url = DidResolver(allow_local=self.o.allow_local).web_url(self.did)
        self.step(f"publish this document at {url}")
        self.say(json.dumps(doc, indent=2))
        self.say("Waiting until it is served (Ctrl-C to stop; run again later to continue)...")
        deadline = asyncio.get_running_loop().time() + DID_WEB_WAIT_S
        while True:
            try:
                current = await self._resolve(new.http)
                if _same_host(current.pds_endpoint, new.url):
                    return
            except Exception:  # noqa: BLE001 - any resolution failure: keep waiting
                pass
            if asyncio.get_running_loop().time() > deadline:
                raise MigrationError(f"{url} still does not point at {new.url}; run again later")
            await asyncio.sleep(2.0)

    async def _checks(self, http: httpx.AsyncClient, old: _Host, new: _Host) -> int:
        self.step("checking")
        report = await account_status(
            http, self.did, hosts=[("new", new.url), ("old", old.url)], plc_url=self.o.plc_url,
            relay_url=self.o.relay_url, allow_local=self.o.allow_local,
            expect_pds=new.url, wait_s=RELAY_WAIT_S if self.o.relay_url else 0.0,
        )
        new_status = await new.call("GET", "com.atproto.server.checkAccountStatus")
        report.add("new host: activated and DID valid",
                   bool(new_status.get("activated") and new_status.get("validDid")),
                   f"activated={new_status.get('activated')} validDid={new_status.get('validDid')}")
        report.print(self.o.out)
        if self.failed_blobs:
            self.say(f"{len(self.failed_blobs)} blobs were not copied; run again to retry them.")
        if report.ok:
            self.say(f"done: {self.did} now lives at {new.url}")
            return 0
        self.say("the move is not complete: see the failed checks above, then run again")
        return 1


@dataclass(slots=True)
class StatusReport:
    """Named checks, each passed or failed with the observed detail."""

    did: str
    checks: list[tuple[str, bool, str]] = field(default_factory=list)
    #: The PDS named in the DID document (None when it could not be resolved).
    pds_endpoint: str | None = None

    def add(self, name: str, passed: bool, detail: str) -> None:
        self.checks.append((name, passed, detail))

    @property
    def ok(self) -> bool:
        return all(passed for _, passed, _ in self.checks)

    def print(self, out: TextIO) -> None:
        for name, passed, detail in self.checks:
            print(f"  [{'ok' if passed else 'FAIL'}] {name}: {detail}", file=out)


async def _get_json(http: httpx.AsyncClient, url: str, params: dict[str, Any]) -> tuple[int, Any]:
    try:
        response = await http.get(url, params=params, timeout=CALL_TIMEOUT_S)
    except httpx.HTTPError as exc:
        return 0, {"error": "Unreachable", "message": str(exc)}
    try:
        return response.status_code, response.json()
    except ValueError:
        return response.status_code, {}


async def _wait_for(check: Callable[[], Awaitable[tuple[bool, str]]], wait_s: float) -> tuple[bool, str]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    while True:
        passed, detail = await check()
        if passed or loop.time() >= deadline:
            return passed, detail
        await asyncio.sleep(0.5)


async def account_status(
    http: httpx.AsyncClient, did: str, *, hosts: list[tuple[str, str]], plc_url: str,
    relay_url: str | None = None, allow_local: bool = False, expect_pds: str | None = None,
    wait_s: float = 0.0,
) -> StatusReport:
    """Where ``did`` stands: its DID document, each host's status, the relay's view.

    With ``expect_pds`` the checks require the DID document, the relay and the
    hosts to agree that the account lives there (and nowhere else is active).
    """
    report = StatusReport(did)
    resolver = DidResolver(plc_url=plc_url, allow_local=allow_local)
    try:
        doc = await resolver.resolve(did)
        endpoint = report.pds_endpoint = doc.pds_endpoint
        detail = f"PDS {endpoint}, handle {doc.handle}"
        report.add("DID document", expect_pds is None or _same_host(endpoint, expect_pds), detail)
    except Exception as exc:  # noqa: BLE001 - reported, not raised
        report.add("DID document", False, f"cannot resolve: {exc}")
        endpoint = None
    finally:
        await resolver.aclose()

    latest_rev: str | None = None
    for name, url in hosts:
        current = _same_host(endpoint, url)
        code, data = await _get_json(http, f"{url.rstrip('/')}/xrpc/com.atproto.sync.getRepoStatus",
                                     {"did": did})
        if code == 200:
            active = bool(data.get("active"))
            detail = "active" if active else f"inactive ({data.get('status', 'no status')})"
            if data.get("rev"):
                detail += f", rev {data['rev']}"
            if current:
                latest_rev = data.get("rev")
            expected = active if current else not active
            report.add(f"{name} host {url}", expected if expect_pds else True,
                       detail + (" (current host)" if current else ""))
        else:
            gone = data.get("error") in ("RepoNotFound",)
            report.add(f"{name} host {url}", bool(expect_pds) and not current and gone,
                       f"{data.get('error', code)}: {data.get('message', '')}".rstrip(": "))

    if relay_url:
        base = relay_url.rstrip("/")

        async def relay_check() -> tuple[bool, str]:
            code, data = await _get_json(http, f"{base}/xrpc/com.atproto.sync.getRepoStatus",
                                         {"did": did})
            if code != 200:
                return False, f"{data.get('error', code)}: {data.get('message', '')}"
            active = bool(data.get("active"))
            rev = data.get("rev")
            detail = f"{'active' if active else 'inactive'}, rev {rev}"
            in_step = latest_rev is None or rev == latest_rev
            if not in_step:
                detail += f" (current host is at {latest_rev})"
            return active and in_step, detail

        passed, detail = await _wait_for(relay_check, wait_s)
        report.add(f"relay {relay_url}", passed, detail)
    return report
