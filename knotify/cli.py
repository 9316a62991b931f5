"""knotify: the command line. Each command lives in knotify/commands/<name>.py."""

from __future__ import annotations

import argparse
import sys
from importlib import import_module

from knotify import __version__

COMMANDS = ("run", "send", "status", "history", "check_config", "fifo", "reload", "keygen",
            "silence", "test_alert", "watch", "agent", "forget_peer", "web", "report",
            "install_hooks")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="knotify",
        description="Ordered, durable routing of keepalived notify events to actions.",
    )
    parser.add_argument("--version", action="version", version=f"knotify {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-c", "--config", metavar="FILE",
                        help="config file (default: $KNOTIFY_CONFIG, then the search path)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        module = import_module(f"knotify.commands.{name}")
        command = sub.add_parser(name.replace("_", "-"), parents=[common],
                                 help=module.HELP, description=module.HELP)
        module.register(command)
        command.set_defaults(func=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


def run_main() -> int:
    """``knotifyd``: the same as ``knotify run``."""
    return main(["run", *sys.argv[1:]])


if __name__ == "__main__":
    sys.exit(main())
