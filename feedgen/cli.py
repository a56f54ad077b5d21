"""``roost feedgen serve|backfill|publish|unpublish|doctor``: the feed generator's commands.

:func:`add_commands` adds them to the ``roost`` parser; each handler imports
what it needs when it runs, so building the parser stays cheap.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

__all__ = ["add_commands"]

Handler = Callable[[argparse.Namespace], int]


def add_commands(
    commands: argparse._SubParsersAction,  # type: ignore[type-arg]
    add_service_flags: Callable[[argparse.ArgumentParser], None],
) -> None:
    """Add ``feedgen`` and its actions to the ``roost`` subcommands."""
    group = commands.add_parser("feedgen", help="run a feed generator host")
    sub = group.add_subparsers(dest="action", metavar="ACTION", required=True)

    serve = sub.add_parser("serve", help="serve a feed generator host")
    add_service_flags(serve)
    serve.add_argument("--relay-url", help="firehose to index: a relay or a PDS")
    serve.add_argument("--start-cursor", type=int,
                       help="first run: read the firehose from after this seq (default: live)")
    serve.add_argument("--plc-url", help="did:plc directory (default https://plc.directory)")
    serve.add_argument("--hostname", help="public host name (default localhost:<port>)")
    serve.add_argument("--public-url", help="URL the network uses to reach this service")
    serve.add_argument("--service-did", help="the service's DID (default did:web:<hostname>)")
    serve.add_argument("--publisher-did", help="default publisher of the feeds")
    serve.add_argument("--feeds", dest="feeds_file", help="feeds file (TOML)")
    serve.add_argument("--database", help="index database: a SQLite file (default "
                       "<data-dir>/feedgen.sqlite) or a postgresql:// URL")
    serve.add_argument(
        "--role", choices=("all", "indexer", "server"),
        help="all: index and serve (default); indexer: only index (one per index); "
             "server: only serve feeds from an index another process writes",
    )
    serve.add_argument(
        "--plugin", action="append", dest="plugins", metavar="MODULE[:NAME]",
        help="load algorithms from a module (repeatable)",
    )
    serve.add_argument("--verify", action="store_true", default=None, dest="verify_firehose",
                       help="verify every commit's signature and MST inversion")
    serve.add_argument("--retention-days", type=float, help="forget posts older than this")
    serve.add_argument("--fulltext", action=argparse.BooleanOptionalAction, default=None,
                       help="keep a full-text index of posts (default: when a keyword feed is served)")
    serve.add_argument("--allow-local", action="store_true", default=None,
                       help="allow outbound requests to loopback/private addresses")
    serve.set_defaults(handler=_serve)

    backfill = sub.add_parser("backfill", help="index whole repos of accounts or hosts")
    backfill.add_argument("--data-dir", help="the feed generator's data directory")
    backfill.add_argument("--database", help="index database: a SQLite file (default "
                          "<data-dir>/feedgen.sqlite) or a postgresql:// URL")
    backfill.add_argument("--did", action="append", dest="dids", default=[], metavar="DID",
                          help="an account to index (repeatable)")
    backfill.add_argument("--host", action="append", dest="hosts", default=[], metavar="URL",
                          help="index every account of this PDS (repeatable)")
    backfill.add_argument("--plc-url", help="did:plc directory (default https://plc.directory)")
    backfill.add_argument("--allow-local", action="store_true", default=None)
    backfill.set_defaults(handler=_backfill)

    publish = sub.add_parser("publish", help="write a feed's app.bsky.feed.generator record")
    publish.add_argument("rkey", help="the feed's record key (its short name)")
    _add_login_flags(publish)
    publish.add_argument("--service-did", required=True, help="DID of the feed generator service")
    publish.add_argument("--display-name", required=True, help="at most 24 characters")
    publish.add_argument("--description", help="at most 300 characters")
    publish.add_argument("--avatar", type=Path, help="PNG or JPEG, at most 1 MB")
    publish.add_argument("--content-mode", choices=("unspecified", "video"))
    publish.add_argument("--accepts-interactions", action="store_true", default=None)
    publish.set_defaults(handler=_publish)

    unpublish = sub.add_parser("unpublish", help="delete a feed's record")
    unpublish.add_argument("rkey")
    _add_login_flags(unpublish)
    unpublish.set_defaults(handler=_unpublish)

    doctor = sub.add_parser("doctor", help="check a published feed end to end")
    doctor.add_argument("feed_uri", metavar="FEED_URI",
                        help="at://<publisher>/app.bsky.feed.generator/<rkey>")
    doctor.add_argument("--plc-url", help="did:plc directory (default https://plc.directory)")
    doctor.add_argument("--limit", type=int, default=10, help="posts per page to fetch")
    doctor.add_argument("--as", dest="identifier", metavar="HANDLE",
                        help="fetch as this reader, logged in on their PDS")
    doctor.add_argument("--password", help="the reader's app password (or $ROOST_APP_PASSWORD)")
    doctor.add_argument("--pds-url", help="the reader's PDS (default: from their DID)")
    doctor.add_argument("--allow-local", action="store_true", default=None)
    doctor.set_defaults(handler=_doctor)


def _add_login_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--identifier", required=True, help="the publisher's handle or DID")
    parser.add_argument("--password", help="an app password (default $ROOST_APP_PASSWORD)")
    parser.add_argument("--pds-url", help="the publisher's PDS (default: from their DID)")
    parser.add_argument("--plc-url", help="did:plc directory (default https://plc.directory)")
    parser.add_argument("--allow-local", action="store_true", default=None)


def _fail(command: str, message: str, status: int = 1) -> int:
    print(f"roost feedgen {command}: {message}", file=sys.stderr)
    return status


# -- serve ----------------------------------------------------------------------------------


def _serve(args: argparse.Namespace) -> int:
    from feedgen.app import build_feeds, build_registry, create_app
    from feedgen.config import FeedgenConfig
    from feedgen.storage import open_store
    from roost.errors import RoostError

    try:
        config = FeedgenConfig.from_env(
            host=args.host,
            port=args.port,
            data_dir=args.data_dir,
            relay_url=args.relay_url,
            start_cursor=args.start_cursor,
            plc_url=args.plc_url,
            hostname=args.hostname,
            public_url=args.public_url,
            service_did=args.service_did,
            publisher_did=args.publisher_did,
            feeds_file=args.feeds_file,
            database=args.database,
            plugins=tuple(args.plugins) if args.plugins else None,
            verify_firehose=args.verify_firehose,
            retention_days=args.retention_days,
            fulltext=args.fulltext,
            allow_local=args.allow_local,
            role=args.role,
        )
        config.data_dir.mkdir(parents=True, exist_ok=True)
        registry = build_registry(config)
        feeds = build_feeds(config, registry)
    except (ValueError, OSError) as exc:
        return _fail("serve", str(exc), 2)
    # The index is opened here, not in the app, so that a second indexer or an
    # unreachable database stops the start with a plain message.
    fulltext = config.fulltext
    if fulltext is None and config.indexes:
        fulltext = any(feed.algorithm.name == "keyword" for feed in feeds.values())
    try:
        store = open_store(config.database_location, fulltext=fulltext)
    except (ValueError, OSError) as exc:
        return _fail("serve", str(exc))
    with contextlib.ExitStack() as held:
        held.callback(store.close)
        try:
            if config.indexes and config.relay_url:
                held.enter_context(_indexer_claim(store, config.database_location))
            app = create_app(config, registry=registry, feeds=list(feeds.values()), store=store)
        except (RoostError, ValueError, OSError) as exc:
            return _fail("serve", str(exc))
        return _run_app(app, config)


@contextlib.contextmanager
def _indexer_claim(store: Any, location: str) -> Iterator[None]:
    """Be the one indexer of this index while the block runs; refuse a second one."""
    claim = getattr(store, "claim_indexer", None)
    if claim is not None:  # PostgreSQL: a session advisory lock, released when the store closes
        claim()
        yield
        return
    import fcntl

    with open(f"{location}.indexer-lock", "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ValueError(
                f"another indexer is already writing {location} "
                "(run this process with --role server, or stop the other indexer)"
            ) from None
        yield


def _run_app(app: Any, config: Any) -> int:
    from roost.database import redact_url
    from roost.server import run_command

    fg = app.state.feedgen
    print(f"role {config.role}: index {redact_url(config.database_location)}", file=sys.stderr)
    for uri, feed in fg.feeds.items():
        who = "anyone" if feed.anonymous else "signed-in readers"
        print(f"feed {uri} ({feed.algorithm.name}, {who})", file=sys.stderr)
    for where, why in fg.registry.failures:
        print(f"plugin not loaded: {where}: {why}", file=sys.stderr)
    return run_command("roost feedgen serve", "feedgen", lambda: (app, config.host, config.port))


# -- backfill ---------------------------------------------------------------------------------


def _identity(plc_url: str | None, allow_local: bool | None) -> Any:
    from roost.identity import PLC_DIRECTORY_URL, IdentityDirectory, IdentityResolver

    resolver = IdentityResolver.create(
        plc_url=plc_url or os.environ.get("ROOST_PLC_URL") or PLC_DIRECTORY_URL,
        allow_local=bool(allow_local),
    )
    return resolver, IdentityDirectory(resolver)


def _http(allow_local: bool | None, timeout: float = 30.0) -> Any:
    import httpx

    from roost.netguard import GuardedTransport, OutboundPolicy

    return httpx.AsyncClient(
        transport=GuardedTransport(OutboundPolicy(allow_local=bool(allow_local))),
        timeout=httpx.Timeout(timeout),
        follow_redirects=False,
    )


def _backfill(args: argparse.Namespace) -> int:
    from feedgen.backfill import backfill
    from feedgen.config import FeedgenConfig
    from feedgen.storage import open_store

    if not args.dids and not args.hosts:
        return _fail("backfill", "name accounts with --did or hosts with --host", 2)
    try:
        config = FeedgenConfig.from_env(
            data_dir=args.data_dir, database=args.database, plc_url=args.plc_url,
            allow_local=args.allow_local,
        )
        store = open_store(config.database_location)
    except (ValueError, OSError) as exc:
        return _fail("backfill", str(exc), 2)

    async def go() -> Any:
        resolver, identity = _identity(config.plc_url, config.allow_local)
        try:
            async with _http(config.allow_local) as http:
                return await backfill(
                    store, http, identity, dids=args.dids, hosts=args.hosts,
                    progress=lambda line: print(line, flush=True),
                )
        finally:
            await identity.aclose()
            await resolver.aclose()

    try:
        report = asyncio.run(go())
    except Exception as exc:  # noqa: BLE001 - reported, not a traceback
        return _fail("backfill", f"{type(exc).__name__}: {exc}")
    finally:
        store.close()
    print(f"indexed {report.records} records from {report.repos} repos")
    for did, why in report.failed:
        print(f"failed: {did}: {why}", file=sys.stderr)
    return 1 if report.failed else 0


# -- publish / unpublish ------------------------------------------------------------------------


def _password(args: argparse.Namespace) -> str | None:
    return args.password or os.environ.get("ROOST_APP_PASSWORD")


async def _session(args: argparse.Namespace, http: Any, identity: Any) -> Any:
    from feedgen.publish import find_pds, login

    password = _password(args)
    if not password:
        from feedgen.publish import PublishError

        raise PublishError("no password: pass --password or set ROOST_APP_PASSWORD")
    pds_url = args.pds_url or await find_pds(identity, args.identifier)
    return await login(http, pds_url, args.identifier, password)


def _run_remote(command: str, args: argparse.Namespace, body: Callable[..., Any]) -> int:
    from feedgen.publish import PublishError

    async def go() -> int:
        resolver, identity = _identity(args.plc_url, args.allow_local)
        try:
            async with _http(args.allow_local) as http:
                result: int = await body(http, identity)
                return result
        finally:
            await identity.aclose()
            await resolver.aclose()

    try:
        return asyncio.run(go())
    except PublishError as exc:
        return _fail(command, str(exc))


def _publish(args: argparse.Namespace) -> int:
    from feedgen.publish import publish

    async def body(http: Any, identity: Any) -> int:
        session = await _session(args, http, identity)
        out = await publish(
            http, session, args.rkey,
            service_did=args.service_did,
            display_name=args.display_name,
            description=args.description,
            avatar=args.avatar,
            content_mode=args.content_mode,
            accepts_interactions=args.accepts_interactions,
        )
        print(f"published {out['uri']}")
        return 0

    return _run_remote("publish", args, body)


def _unpublish(args: argparse.Namespace) -> int:
    from feedgen.publish import unpublish

    async def body(http: Any, identity: Any) -> int:
        session = await _session(args, http, identity)
        if await unpublish(http, session, args.rkey):
            print(f"deleted at://{session.did}/app.bsky.feed.generator/{args.rkey}")
        else:
            print(f"no feed record {args.rkey} in {session.did}'s repository")
        return 0

    return _run_remote("unpublish", args, body)


# -- doctor --------------------------------------------------------------------------------------


def _doctor(args: argparse.Namespace) -> int:
    from feedgen.doctor import diagnose

    if not 1 <= args.limit <= 100:
        return _fail("doctor", "--limit must be from 1 to 100", 2)

    async def body(http: Any, identity: Any) -> int:
        reader = await _session(args, http, identity) if args.identifier else None
        report = await diagnose(
            args.feed_uri, http=http, identity=identity, limit=args.limit, reader=reader
        )
        for line in report.lines():
            print(line)
        print("the feed works" if report.ok else "the feed is broken: see FAIL above")
        return 0 if report.ok else 1

    return _run_remote("doctor", args, body)
