"""knotify run: the router in the foreground."""

from __future__ import annotations

import argparse
import asyncio

from knotify import log as logmod
from knotify.commands import fail, load_config
from knotify.router import Router, RouterError

HELP = "run the router (knotifyd) in the foreground"


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--log-format", choices=("auto", "json", "console"),
                        help="override [log] format")
    parser.add_argument("--log-level", choices=("debug", "info", "warning", "error"),
                        help="override [log] level")


def run(args: argparse.Namespace) -> int:
    config = load_config(args)
    logmod.setup(args.log_format or config.log_format, args.log_level or config.log_level)
    router = Router(config)
    try:
        asyncio.run(router.run())
    except RouterError as exc:
        return fail(str(exc))
    return 0
