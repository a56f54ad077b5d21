"""The ``roost`` command line.

One command with a subcommand per job. Commands whose service is not built
yet say so and exit with status 2; none pretends to work.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from roost import __version__

__all__ = ["main", "build_parser"]

Handler = Callable[[argparse.Namespace], int]

#: Exit status for a command that is known but not available in this version.
EXIT_UNAVAILABLE = 2


def _unavailable(name: str) -> Handler:
    def handler(args: argparse.Namespace) -> int:
        print(f"roost {name}: not yet available in roost {__version__}", file=sys.stderr)
        return EXIT_UNAVAILABLE

    return handler


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

    for name, text in (
        ("plc", "the did:plc directory"),
        ("pds", "a personal data server"),
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
    for action, text in (("inspect", "describe a repo CAR file"), ("verify", "verify a repo CAR")):
        cmd = repo_sub.add_parser(action, help=text)
        cmd.add_argument("file", metavar="FILE.car")
        cmd.add_argument("--did")
        cmd.set_defaults(handler=_unavailable(f"repo {action}"))

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
