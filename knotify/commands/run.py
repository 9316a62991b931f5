"""knotify run: the router in the foreground."""

from __future__ import annotations

import argparse
import asyncio
import os

from knotify import config as configmod
from knotify import log as logmod
from knotify import paths
from knotify.commands import fail, load_config
from knotify.errors import RouterError
from knotify.router import Router

HELP = "run the router (knotifyd) in the foreground"


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--log-format", choices=("auto", "json", "console"),
                        help="override [log] format")
    parser.add_argument("--log-level", choices=("debug", "info", "warning", "error"),
                        help="override [log] level")


def production_journal(config: configmod.Config, euid: int | None = None,
                       env: dict[str, str] | None = None) -> str | None:
    """Why this start would touch a production journal unasked, or None.

    The embedded default config (no rules) as root uses /var/lib/knotify: where a real
    install keeps its journal. Starting there would mark that journal's pending
    actions ``skipped`` (their rules are not in the embedded config).
    """
    euid = os.geteuid() if euid is None else euid
    env = dict(os.environ) if env is None else env
    if config.path != configmod.EMBEDDED or euid != 0 or env.get("KNOTIFY_STATE_DIR"):
        return None
    if not os.path.exists(config.journal):
        return None
    return (f"{config.journal} already exists (a production journal?) and no config file was "
            f"found, so this would run the embedded default config (no rules) on it. Give "
            f"the config with -c (e.g. -c {paths.SYSTEM_CONFIG}), or set KNOTIFY_STATE_DIR "
            "to try knotify in another folder")


def run(args: argparse.Namespace) -> int:
    config = load_config(args)
    refusal = production_journal(config)
    if refusal is not None:
        return fail(refusal, 2)
    logmod.setup(args.log_format or config.log_format, args.log_level or config.log_level)
    router = Router(config)
    try:
        asyncio.run(router.run())
    except RouterError as exc:
        return fail(str(exc))
    return 0
