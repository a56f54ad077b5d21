"""``roost relay serve``: build the config from flags and ``ROOST_*`` variables, then serve."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["serve"]


def serve(args: argparse.Namespace) -> int:
    """Run a relay until SIGINT/SIGTERM; the exit status of the command."""
    from relay.app import SERVER_OPTIONS, create_app
    from relay.config import RelayConfig
    from roost.server import run_command

    def build() -> tuple[Any, str, int]:
        config = RelayConfig.from_env(
            host=args.host,
            port=args.port,
            data_dir=args.data_dir,
            database=args.database,
            role=getattr(args, "role", None),
            plc_url=args.plc_url,
            crawl=tuple(args.crawl) if args.crawl else None,
            admin_password=args.admin_password,
            allow_local=args.allow_local,
        )
        config.data_dir.mkdir(parents=True, exist_ok=True)
        return create_app(config), config.host, config.port

    return run_command("roost relay serve", "relay", build, **SERVER_OPTIONS)
