"""The ``roost`` command line.

One command with a subcommand per job. Commands whose service is not built
yet say so and exit with status 2; none pretends to work.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, BinaryIO

from roost import __version__

if TYPE_CHECKING:
    from roost.crypto import PublicKey

__all__ = ["main", "build_parser"]

Handler = Callable[[argparse.Namespace], int]

#: Exit status for a command that is known but not available in this version.
EXIT_UNAVAILABLE = 2


def _unavailable(name: str) -> Handler:
    def handler(args: argparse.Namespace) -> int:
        print(f"roost {name}: not yet available in roost {__version__}", file=sys.stderr)
        return EXIT_UNAVAILABLE

    return handler


def _plc_serve(args: argparse.Namespace) -> int:
    from plc.app import create_app
    from plc.config import PlcConfig
    from roost.server import run_command

    def build() -> tuple[Any, str, int]:
        config = PlcConfig.from_env(
            host=args.host,
            port=args.port,
            data_dir=args.data_dir,
            database=args.database,
            upstream=args.upstream,
        )
        config.data_dir.mkdir(parents=True, exist_ok=True)
        return create_app(config), config.host, config.port

    return run_command("roost plc serve", "plc", build)


def _pds_serve(args: argparse.Namespace) -> int:
    from pds.app import create_app
    from pds.config import PdsConfig
    from roost.server import run_command

    def build() -> tuple[Any, str, int]:
        config = PdsConfig.from_env(
            host=args.host,
            port=args.port,
            data_dir=args.data_dir,
            hostname=args.hostname,
            public_url=args.public_url,
            plc_url=args.plc_url,
            relay_urls=tuple(args.relay_urls) if args.relay_urls else None,
            admin_password=args.admin_password,
            signup_mode=args.signup_mode,
            allow_local=args.allow_local,
        )
        config.data_dir.mkdir(parents=True, exist_ok=True)
        return create_app(config), config.host, config.port

    return run_command("roost pds serve", "pds", build)


def _up(args: argparse.Namespace) -> int:
    from pathlib import Path

    from roost.up import UpOptions, run_up

    if not 1 <= args.base_port <= 65535 - 3:
        print("roost up: --base-port must leave room for four ports", file=sys.stderr)
        return 2
    options = UpOptions(
        data_dir=Path(args.data_dir),
        base_port=args.base_port,
        host=args.host,
        hostname=args.hostname,
        signup_mode=args.signup_mode,
        admin_password=args.admin_password,
        demo=args.demo,
    )
    seed = None
    if args.demo:
        from roost.up import seed_demo as seed
    return run_up(options, seed=seed)


def _add_identity_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--plc-url", default="https://plc.directory", help="did:plc directory")
    parser.add_argument("--relay-url", help="a relay that should see the account")
    parser.add_argument("--allow-local", action="store_true",
                        help="allow loopback/private addresses (a local network)")


def _account_migrate(args: argparse.Namespace) -> int:
    import asyncio
    import getpass
    import os

    from roost.errors import RoostError
    from roost.migrate import MigrateOptions, Migration, MigrationError

    password = args.password or os.environ.get("ROOST_PASSWORD")
    if not password:
        password = getpass.getpass(f"Password for {args.handle}: ")
    options = MigrateOptions(
        from_url=args.from_url, to_url=args.to_url, identifier=args.handle, password=password,
        new_handle=args.new_handle, new_password=args.new_password, email=args.email,
        invite_code=args.invite_code, plc_url=args.plc_url, relay_url=args.relay_url,
        yes=args.yes, allow_local=args.allow_local, plc_token=args.plc_token,
    )
    try:
        return asyncio.run(Migration(options).run())
    except (MigrationError, RoostError) as exc:
        print(f"roost account migrate: {exc}", file=sys.stderr)
        print("nothing is lost: fix the cause and run the same command again to continue",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nroost account migrate: interrupted; run the same command again to continue",
              file=sys.stderr)
        return 130


def _account_status(args: argparse.Namespace) -> int:
    import asyncio

    import httpx

    from roost.migrate import account_status

    async def main() -> int:
        hosts = [(f"pds {i + 1}", url) for i, url in enumerate(args.pds)]
        async with httpx.AsyncClient() as http:
            if not hosts:
                first = await account_status(http, args.did, hosts=[], plc_url=args.plc_url,
                                             allow_local=args.allow_local)
                if first.pds_endpoint:
                    hosts = [("current", first.pds_endpoint)]
            report = await account_status(
                http, args.did, hosts=hosts, plc_url=args.plc_url, relay_url=args.relay_url,
                allow_local=args.allow_local,
            )
        print(args.did)
        report.print(sys.stdout)
        return 0 if report.ok else 1

    return asyncio.run(main())


def _relay_serve(args: argparse.Namespace) -> int:
    from relay.cli import serve

    return serve(args)


def _open_input(name: str) -> BinaryIO:
    if name == "-":
        return sys.stdin.buffer
    return open(name, "rb")


def _repo_inspect(args: argparse.Namespace) -> int:
    from roost.errors import RoostError
    from roost.repo import verify_car

    try:
        with _open_input(args.file) as f:
            summary = verify_car(f, require_records=False, verify_mst=False)
    except OSError as exc:
        print(f"roost repo inspect: cannot read {args.file}: {exc.strerror}", file=sys.stderr)
        return 1
    except RoostError as exc:
        print(f"roost repo inspect: {type(exc).__name__}: {exc.message}", file=sys.stderr)
        return 1
    print(f"did:      {summary.did}")
    print(f"rev:      {summary.rev}")
    print(f"commit:   {summary.commit_cid}")
    print(f"data:     {summary.data_cid}")
    print(f"records:  {summary.records} in {len(summary.collections)} collections")
    for collection, count in sorted(summary.collections.items()):
        print(f"  {collection:<40} {count:>9}")
    if summary.missing_records:
        print(f"missing:  {len(summary.missing_records)} record blocks not in the file")
    return 0


def _repo_verify(args: argparse.Namespace) -> int:
    from roost.crypto import PublicKey, parse_did_key
    from roost.errors import RoostError
    from roost.repo import verify_car

    try:
        key: PublicKey | None = None
        if args.key:
            key = parse_did_key(args.key)
        elif args.plc_url:
            if not args.did:
                print("roost repo verify: --plc-url needs --did", file=sys.stderr)
                return 2
            key = _plc_signing_key(args.plc_url, args.did)
        with _open_input(args.file) as f:
            summary = verify_car(f, did=args.did, key=key)
    except OSError as exc:
        print(f"roost repo verify: cannot read {args.file}: {exc}", file=sys.stderr)
        return 1
    except RoostError as exc:
        print(f"roost repo verify: FAILED: {type(exc).__name__}: {exc.message}", file=sys.stderr)
        return 1
    checked = "signature verified" if summary.signature_checked else "signature NOT checked"
    print(f"ok: {summary.did} rev {summary.rev}, {summary.records} records, {checked}")
    print(f"data: {summary.data_cid}")
    return 0


def _plc_signing_key(plc_url: str, did: str) -> PublicKey:
    """The ``#atproto`` key of ``did`` from a did:plc directory (stdlib HTTP)."""
    import json
    import urllib.error
    import urllib.request

    from roost.crypto import public_key_from_verification_method
    from roost.errors import RoostError

    url = f"{plc_url.rstrip('/')}/{did}"
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            doc = json.loads(response.read(1_000_000))
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise RoostError(f"cannot resolve {did} at {plc_url}: {exc}") from None
    for vm in doc.get("verificationMethod", []) if isinstance(doc, dict) else []:
        if isinstance(vm, dict) and str(vm.get("id", "")).endswith("#atproto"):
            return public_key_from_verification_method(vm)
    raise RoostError(f"{did} has no #atproto signing key in its DID document")


def _add_service_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port to listen on")
    parser.add_argument("--data-dir", help="directory for this service's data")


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (exposed for tests and documentation)."""
    parser = argparse.ArgumentParser(
        prog="roost",
        description="roost: the AT Protocol network in Python "
        "(PDS, relay, feed generators, did:plc directory).",
    )
    parser.add_argument("--version", action="version", version=f"roost {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    up = commands.add_parser("up", help="run PLC, PDS, relay and feed generator together")
    up.add_argument("--data-dir", default="./roost-data", help="default %(default)s")
    up.add_argument(
        "--base-port", type=int, default=2582,
        help="PLC on this port, PDS +1, relay +2, feed generator +3 (default %(default)s)",
    )
    up.add_argument("--host", default="127.0.0.1", help="address to listen on")
    up.add_argument(
        "--hostname", default="roost.test", help="the PDS's name; handles are <name>.<hostname>"
    )
    up.add_argument("--signup-mode", choices=("open", "invite", "application"), default="open")
    up.add_argument("--admin-password", help="admin password (default: generated once, kept)")
    up.add_argument("--demo", action="store_true", help="seed demo accounts and posts")
    up.set_defaults(handler=_up)

    plc = commands.add_parser("plc", help="run the did:plc directory")
    plc_sub = plc.add_subparsers(dest="action", metavar="ACTION", required=True)
    plc_serve = plc_sub.add_parser("serve", help="serve the did:plc directory")
    _add_service_flags(plc_serve)
    plc_serve.add_argument(
        "--database", help="SQLite file (default <data-dir>/plc.sqlite) or a postgresql:// URL"
    )
    plc_serve.add_argument(
        "--upstream", metavar="URL", help="mirror this directory, verifying every op"
    )
    plc_serve.set_defaults(handler=_plc_serve)

    pds = commands.add_parser("pds", help="run a personal data server")
    pds_sub = pds.add_subparsers(dest="action", metavar="ACTION", required=True)
    pds_serve = pds_sub.add_parser("serve", help="serve a personal data server")
    _add_service_flags(pds_serve)
    pds_serve.add_argument("--hostname", help="public host name; handles are <name>.<hostname>")
    pds_serve.add_argument("--public-url", help="URL clients use to reach this server")
    pds_serve.add_argument("--plc-url", help="did:plc directory URL")
    pds_serve.add_argument(
        "--relay-url", action="append", dest="relay_urls", help="relay to ask for a crawl"
    )
    pds_serve.add_argument("--admin-password", help="password for the admin API")
    pds_serve.add_argument(
        "--signup-mode", choices=("open", "invite", "application"), help="who may join"
    )
    pds_serve.add_argument(
        "--allow-local", action="store_true", default=None,
        help="allow outbound requests to loopback/private addresses (a local network)",
    )
    pds_serve.set_defaults(handler=_pds_serve)
    _add_pds_admin(pds_sub)

    relay = commands.add_parser("relay", help="run a relay")
    relay_sub = relay.add_subparsers(dest="action", metavar="ACTION", required=True)
    relay_serve = relay_sub.add_parser("serve", help="serve a relay")
    _add_service_flags(relay_serve)
    relay_serve.add_argument(
        "--database",
        help="SQLite file (default <data-dir>/relay.sqlite) or postgresql:// URL",
    )
    relay_serve.add_argument(
        "--role", choices=("all", "ingest", "frontend"),
        help="all (default), ingest (the one writer of a shared PostgreSQL log), "
        "or frontend (serve subscribeRepos from that log)",
    )
    relay_serve.add_argument("--plc-url", help="did:plc directory URL")
    relay_serve.add_argument(
        "--crawl", action="append", metavar="URL", help="host to subscribe to (repeatable)"
    )
    relay_serve.add_argument("--admin-password", help="password for the /admin/ API")
    relay_serve.add_argument(
        "--allow-local", action="store_true", default=None,
        help="allow loopback/private hosts and outbound requests (a local network)",
    )
    relay_serve.set_defaults(handler=_relay_serve)

    from feedgen.cli import add_commands as add_feedgen_commands

    add_feedgen_commands(commands, _add_service_flags)

    from feedgen.show import add_command as add_feed_command

    add_feed_command(commands)

    from roost.db import add_commands as add_db_commands

    add_db_commands(commands)

    repo = commands.add_parser("repo", help="offline repository tools")
    repo_sub = repo.add_subparsers(dest="action", metavar="ACTION", required=True)
    inspect = repo_sub.add_parser("inspect", help="describe a repo CAR file")
    inspect.add_argument("file", metavar="FILE.car", help="repo CAR file, or - for stdin")
    inspect.set_defaults(handler=_repo_inspect)
    verify = repo_sub.add_parser(
        "verify", help="verify a repo CAR: block hashes, signature, canonical MST, records"
    )
    verify.add_argument("file", metavar="FILE.car", help="repo CAR file, or - for stdin")
    verify.add_argument("--did", help="the DID the repo must belong to")
    keys = verify.add_mutually_exclusive_group()
    keys.add_argument("--key", metavar="DID_KEY", help="signing key as did:key")
    keys.add_argument(
        "--plc-url", help="check the signature against the DID's current key in this directory"
    )
    verify.set_defaults(handler=_repo_verify)

    firehose = commands.add_parser("firehose", help="firehose tools")
    fh_sub = firehose.add_subparsers(dest="action", metavar="ACTION", required=True)
    tail = fh_sub.add_parser("tail", help="print a firehose, decoded")
    tail.add_argument(
        "url", help="a PDS or relay: http(s)://host, or the full ws(s)://...subscribeRepos URL"
    )
    tail.add_argument("--cursor", type=int, help="start after this seq (default: live)")
    tail.add_argument(
        "--collection", action="append", dest="collections", metavar="NSID",
        help="only these collections (repeatable; prefix wildcards like app.bsky.feed.*)",
    )
    tail.add_argument(
        "--did", action="append", dest="dids", metavar="DID", help="only these accounts (repeatable)"
    )
    tail.add_argument("--json", action="store_true", help="one JSON object per line")
    tail.add_argument(
        "--verify", action="store_true",
        help="check commit signatures and sync v1.1 inversion; failures are shown as INVALID",
    )
    tail.add_argument(
        "--plc-url", help="did:plc directory for --verify (default https://plc.directory)"
    )

    def _firehose_tail(args: argparse.Namespace) -> int:
        from roost.tail import run_tail

        return run_tail(args)

    tail.set_defaults(handler=_firehose_tail)

    account = commands.add_parser("account", help="account tools")
    acct_sub = account.add_subparsers(dest="action", metavar="ACTION", required=True)
    migrate = acct_sub.add_parser(
        "migrate", help="move an account to another host, keeping its identity and followers"
    )
    migrate.add_argument("--from", dest="from_url", required=True, metavar="URL",
                         help="the account's current PDS")
    migrate.add_argument("--to", dest="to_url", required=True, metavar="URL", help="the new PDS")
    migrate.add_argument("--handle", required=True, help="handle (or DID) on the current PDS")
    migrate.add_argument("--new-handle", help="handle on the new PDS (default: same name there)")
    migrate.add_argument("--password", help="account password (default: $ROOST_PASSWORD or ask)")
    migrate.add_argument("--new-password", help="password on the new PDS (default: the same)")
    migrate.add_argument("--email", help="email for the new PDS (default: the current one)")
    migrate.add_argument("--invite-code", help="invite code, if the new PDS requires one")
    migrate.add_argument("--plc-token", help="the confirmation code sent by the current PDS "
                         "(with it, no new code is requested)")
    _add_identity_flags(migrate)
    migrate.add_argument("--yes", action="store_true", help="do not ask before the identity moves")
    migrate.set_defaults(handler=_account_migrate)

    status = acct_sub.add_parser(
        "status", help="where an account stands: directory, hosts and relay"
    )
    status.add_argument("did", help="the account's DID")
    status.add_argument("--pds", action="append", default=[], metavar="URL",
                        help="a PDS to ask (repeatable; default: the one in the DID document)")
    _add_identity_flags(status)
    status.set_defaults(handler=_account_status)

    return parser


# -- roost pds admin: the admin API over HTTP ------------------------------------------


def _add_pds_admin(pds_sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    admin = pds_sub.add_parser("admin", help="administer a running PDS (admin API)")
    admin.add_argument(
        "--url", default="http://127.0.0.1:2583", help="the PDS (default %(default)s)"
    )
    admin.add_argument(
        "--admin-password", help="admin password (default: $ROOST_ADMIN_PASSWORD)"
    )
    sub = admin.add_subparsers(dest="admin_action", metavar="ACTION", required=True)
    accounts = sub.add_parser("accounts", help="list accounts (DID, handle, status)")
    accounts.add_argument("--query", help="only accounts whose DID, handle or email contains this")
    accounts.add_argument("--limit", type=int, default=100)
    accounts.set_defaults(handler=_admin_accounts)
    approve = sub.add_parser("approve", help="approve a pending application")
    approve.add_argument("did")
    approve.set_defaults(handler=_admin_approve)
    reject = sub.add_parser("reject", help="reject a pending application")
    reject.add_argument("did")
    reject.add_argument("--reason", required=True, help="shown to the applicant")
    reject.set_defaults(handler=_admin_reject)
    target_help = (
        "an account DID, a record AT-URI (at://did/collection/rkey), or a blob CID (with --did)"
    )
    takedown = sub.add_parser("takedown", help="take an account, a record or a blob down")
    takedown.add_argument("target", metavar="TARGET", help=target_help)
    takedown.add_argument("--did", help="the account holding the blob TARGET")
    takedown.add_argument("--reason", required=True)
    takedown.set_defaults(handler=_admin_takedown)
    untakedown = sub.add_parser("untakedown", help="restore a taken-down account, record or blob")
    untakedown.add_argument("target", metavar="TARGET", help=target_help)
    untakedown.add_argument("--did", help="the account holding the blob TARGET")
    untakedown.set_defaults(handler=_admin_untakedown)
    outbox = sub.add_parser(
        "outbox", help="messages waiting for members (confirmation tokens), newest first"
    )
    outbox.add_argument("--did", help="only the messages for this account")
    outbox.add_argument("--limit", type=int, default=20)
    outbox.set_defaults(handler=_admin_outbox)
    invite = sub.add_parser("invite", help="create an invite code")
    invite.add_argument("--uses", type=int, default=1, help="how many sign-ups it allows")
    invite.set_defaults(handler=_admin_invite)


class _AdminCallError(Exception):
    pass


def _admin_call(
    args: argparse.Namespace, nsid: str, *, params: dict[str, object] | None = None,
    body: dict[str, object] | None = None,
) -> dict[str, object]:
    import os

    import httpx

    password = args.admin_password or os.environ.get("ROOST_ADMIN_PASSWORD")
    if not password:
        raise _AdminCallError("no admin password: pass --admin-password or set ROOST_ADMIN_PASSWORD")
    url = f"{args.url.rstrip('/')}/xrpc/{nsid}"
    try:
        with httpx.Client(timeout=30, auth=("admin", password)) as http:
            if body is None:
                response = http.get(url, params=params)  # type: ignore[arg-type]
            else:
                response = http.post(url, json=body)
    except httpx.HTTPError as exc:
        raise _AdminCallError(f"cannot reach {args.url}: {exc}") from None
    if response.status_code == 401:
        raise _AdminCallError("admin authentication failed (wrong password?)")
    try:
        data = response.json() if response.content else {}
    except ValueError:
        data = {}
    if not response.is_success:
        error = data.get("error", f"HTTP {response.status_code}") if isinstance(data, dict) else ""
        message = data.get("message", "") if isinstance(data, dict) else ""
        raise _AdminCallError(f"{error}: {message}".rstrip(": "))
    return data if isinstance(data, dict) else {}


def _admin_command(run: Callable[[argparse.Namespace], None]) -> Handler:
    def handler(args: argparse.Namespace) -> int:
        try:
            run(args)
        except _AdminCallError as exc:
            print(f"roost pds admin {args.admin_action}: {exc}", file=sys.stderr)
            return 1
        return 0

    return handler


def _repo_ref(did: str) -> dict[str, object]:
    return {"$type": "com.atproto.admin.defs#repoRef", "did": did}


@_admin_command
def _admin_accounts(args: argparse.Namespace) -> None:
    params: dict[str, object] = {"limit": max(1, min(args.limit, 100))}
    if args.query:
        params["email"] = args.query
    out = _admin_call(args, "com.atproto.admin.searchAccounts", params=params)
    accounts: list[dict[str, Any]] = out.get("accounts") or []  # type: ignore[assignment]
    for account in accounts:
        line = f"{account['did']}  {account['handle']}  {account.get('roostStatus', '?')}"
        if account.get("roostStatusReason"):
            line += f"  ({account['roostStatusReason']})"
        print(line)
        for item in account.get("roostApplication") or []:
            print(f"    Q: {item['question']}\n    A: {item['answer']}")


@_admin_command
def _admin_approve(args: argparse.Namespace) -> None:
    _admin_call(args, "com.atproto.admin.updateSubjectStatus",
                body={"subject": _repo_ref(args.did), "deactivated": {"applied": False}})
    print(f"approved {args.did}")


@_admin_command
def _admin_reject(args: argparse.Namespace) -> None:
    _admin_call(args, "com.atproto.admin.updateSubjectStatus", body={
        "subject": _repo_ref(args.did), "deactivated": {"applied": True, "ref": args.reason}})
    print(f"rejected {args.did}")


def _takedown_subject(args: argparse.Namespace) -> dict[str, object]:
    """The subject TARGET names: a record (AT-URI), a blob (CID with --did) or an account."""
    target: str = args.target
    if target.startswith("at://"):
        # the strongRef wants the record's CID: the subject status knows it
        status = _admin_call(args, "com.atproto.admin.getSubjectStatus", params={"uri": target})
        subject = status.get("subject")
        if not isinstance(subject, dict):
            raise _AdminCallError(f"no record at {target}")
        return {"$type": "com.atproto.repo.strongRef", "uri": target, "cid": subject["cid"]}
    if args.did:
        return {"$type": "com.atproto.admin.defs#repoBlobRef", "did": args.did, "cid": target}
    if not target.startswith("did:"):
        raise _AdminCallError("TARGET must be a DID, an at:// URI, or a blob CID with --did")
    return _repo_ref(target)


@_admin_command
def _admin_takedown(args: argparse.Namespace) -> None:
    _admin_call(args, "com.atproto.admin.updateSubjectStatus", body={
        "subject": _takedown_subject(args), "takedown": {"applied": True, "ref": args.reason}})
    print(f"took down {args.target}")


@_admin_command
def _admin_untakedown(args: argparse.Namespace) -> None:
    _admin_call(args, "com.atproto.admin.updateSubjectStatus",
                body={"subject": _takedown_subject(args), "takedown": {"applied": False}})
    print(f"restored {args.target}")


@_admin_command
def _admin_outbox(args: argparse.Namespace) -> None:
    params: dict[str, object] = {"limit": max(1, min(args.limit, 100))}
    if args.did:
        params["did"] = args.did
    out = _admin_call(args, "org.roost.admin.listOutbox", params=params)
    messages: list[dict[str, Any]] = out.get("messages") or []  # type: ignore[assignment]
    if not messages:
        print("no messages")
    for message in messages:
        to = message.get("recipient") or "(no email)"
        print(f"#{message['id']}  {message['createdAt']}  {message['did']}  to {to}")
        print(f"  {message['subject']}")
        if message.get("token"):
            print(f"  token: {message['token']}")
        for line in str(message["body"]).splitlines():
            print(f"    {line}")


@_admin_command
def _admin_invite(args: argparse.Namespace) -> None:
    if args.uses < 1:
        raise _AdminCallError("--uses must be at least 1")
    out = _admin_call(args, "com.atproto.server.createInviteCode", body={"useCount": args.uses})
    print(out["code"])


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``roost`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 0
    return handler(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
