"""knotify: the command line.

A command is either an op of the router (its CLI side lives with its daemon side in
knotify/ops/<name>.py) or a command of its own (knotify/commands/<name>.py); both are
modules with ``HELP``, ``register(parser)`` and ``run(args) -> exit code``.
"""

from __future__ import annotations

import argparse
import sys
from importlib import import_module
from types import ModuleType

from knotify import __version__, ops
from knotify.ops.base import CommandModule

#: In the order ``knotify --help`` lists them.
COMMANDS = ("run", "send", "status", "history", "check-config", "fifo", "reload", "keygen",
            "silence", "test-alert", "watch", "agent", "forget-peer", "web", "report",
            "install-hooks")


def command_module(name: str) -> CommandModule | ModuleType:
    """The module that holds command ``name``: an op's, or one of knotify/commands/."""
    return ops.COMMANDS.get(name) or import_module(f"knotify.commands.{name.replace('-', '_')}")


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
        module = command_module(name)
        command = sub.add_parser(name, parents=[common], help=module.HELP,
                                 description=module.HELP)
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
