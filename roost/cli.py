"""The ``roost`` command line.

One command with a subcommand per job. Commands whose service is not built
yet say so and exit with status 2; none pretends to work.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, BinaryIO

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
    from roost.server import ServerStartupError, run

    try:
        config = PlcConfig.from_env(
            host=args.host,
            port=args.port,
            data_dir=args.data_dir,
            database=args.database,
            upstream=args.upstream,
        )
        config.data_dir.mkdir(parents=True, exist_ok=True)
    except (ValueError, OSError) as exc:
        print(f"roost plc serve: {exc}", file=sys.stderr)
        return 2
    try:
        run(create_app(config), config.host, config.port, name="plc")
    except ServerStartupError as exc:
        print(f"roost plc serve: {exc}", file=sys.stderr)
        return 1
    return 0


def _pds_serve(args: argparse.Namespace) -> int:
    from pds.app import create_app
    from pds.config import PdsConfig
    from roost.server import ServerStartupError, run

    try:
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
        app = create_app(config)
    except (ValueError, OSError) as exc:
        print(f"roost pds serve: {exc}", file=sys.stderr)
        return 2
    try:
        run(app, config.host, config.port, name="pds")
    except ServerStartupError as exc:
        print(f"roost pds serve: {exc}", file=sys.stderr)
        return 1
    return 0


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
    up.add_argument("--data-dir", default="./roost-data")
    up.add_argument("--base-port", type=int, default=2582)
    up.add_argument("--demo", action="store_true", help="seed demo accounts and posts")
    up.set_defaults(handler=_unavailable("up"))

    plc = commands.add_parser("plc", help="run the did:plc directory")
    plc_sub = plc.add_subparsers(dest="action", metavar="ACTION", required=True)
    plc_serve = plc_sub.add_parser("serve", help="serve the did:plc directory")
    _add_service_flags(plc_serve)
    plc_serve.add_argument("--database", help="SQLite file (default <data-dir>/plc.sqlite)")
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

    for name, text in (
        ("relay", "a relay"),
        ("feedgen", "a feed generator host"),
    ):
        group = commands.add_parser(name, help=f"run {text}")
        sub = group.add_subparsers(dest="action", metavar="ACTION", required=True)
        serve = sub.add_parser("serve", help=f"serve {text}")
        _add_service_flags(serve)
        serve.set_defaults(handler=_unavailable(f"{name} serve"))

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
    tail.add_argument("url")
    tail.add_argument("--cursor", type=int)
    tail.add_argument("--json", action="store_true")
    tail.set_defaults(handler=_unavailable("firehose tail"))

    account = commands.add_parser("account", help="account tools")
    acct_sub = account.add_subparsers(dest="action", metavar="ACTION", required=True)
    for action, text in (("migrate", "move an account between hosts"), ("status", "show status")):
        cmd = acct_sub.add_parser(action, help=text)
        cmd.set_defaults(handler=_unavailable(f"account {action}"))

    return parser


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
