"""knotify agent: heartbeat to the routers and deliver this host's spool to them."""

from __future__ import annotations

import argparse

from knotify import log as logmod
from knotify.agent import Agent
from knotify.commands import fail, load_config
from knotify.errors import AgentBusy

HELP = ("on a keepalived host: heartbeat to every router in [hook] endpoints (so a silent "
        "host is noticed) and deliver the events the hooks spooled")


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--once", action="store_true",
                        help="one heartbeat and delivery round, then exit (0 if a router "
                        "answered)")
    parser.add_argument("--verbose", action="store_true", help="print each round's result")
    parser.add_argument("--log-format", choices=("auto", "json", "console"),
                        help="override [log] format")
    parser.add_argument("--log-level", choices=("debug", "info", "warning", "error"),
                        help="override [log] level")


def run(args: argparse.Namespace) -> int:
    config = load_config(args)
    logmod.setup(args.log_format or config.log_format, args.log_level or config.log_level)

    def out(text: str) -> None:
        print(text, flush=True)

    agent = Agent(config, logmod.get(component="agent"), out if args.verbose else None)
    try:
        agent.lock()
    except AgentBusy as exc:
        return fail(str(exc))
    try:
        if args.once:
            return 0 if any(agent.cycle().values()) else 1
        agent.run()
        return 0
    finally:
        agent.unlock()
