"""knotify fifo: read a keepalived notify FIFO and forward each line (as *_fifo_script)."""

from __future__ import annotations

import argparse
import os
import sys

from knotify import fifo, resync
from knotify.commands import client_settings

HELP = ("read keepalived's notify FIFO and forward its lines in order; use it as "
        "notify_fifo_script / vrrp_notify_fifo_script (keepalived appends the FIFO path)")


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", help="the FIFO (keepalived passes it as the last argument)")
    parser.add_argument("--verbose", action="store_true",
                        help="print each line and what happened to it")
    parser.add_argument("--no-resync", action="store_true",
                        help="do not ask keepalived (our parent) for its states after each open")


def run(args: argparse.Namespace) -> int:
    settings = client_settings(args, strict=False)  # the lines must flow, with the reason

    def out(text: str) -> None:
        print(text, flush=True)

    parent = os.getppid()
    resync_pid = None if args.no_resync or not resync.is_keepalived(parent) else parent
    try:
        return fifo.run_script_reader(args.path, settings, out=out if args.verbose else None,
                                      resync_pid=resync_pid)
    except KeyboardInterrupt:
        return 0
    except OSError as exc:
        print(f"knotify fifo: {exc}", file=sys.stderr)
        return 1
