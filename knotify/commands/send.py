"""knotify send: fire an event by hand, exactly as keepalived would."""

from __future__ import annotations

import argparse
import time

from knotify import keepalived, spool
from knotify.client import deliver
from knotify.commands import client_settings, fail
from knotify.errors import ParseError
from knotify.stamp import stamp

HELP = "send an event by hand: KIND NAME STATE [PRIO] (e.g. INSTANCE VI_1 MASTER 100)"


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("kind", help="INSTANCE, GROUP, VS or RS")
    parser.add_argument("name", help="instance/group name; for RS: 'RS VS' in one argument")
    parser.add_argument("state", help="MASTER, BACKUP, FAULT, STOP, DELETED, ... or UP/DOWN")
    parser.add_argument("prio", nargs="?", help="priority 0..255 (VRRP only)")
    parser.add_argument("--host", help="host to report (default: this host's name)")
    parser.add_argument("--timeout", type=float, default=2.0,
                        help="seconds to wait for the router's ack (default 2)")


def run(args: argparse.Namespace) -> int:
    ts_ns = time.time_ns()
    try:
        fields = keepalived.build_manual(args.kind, args.name, args.state, args.prio)
    except ParseError as exc:
        return fail(str(exc), 2)
    settings = client_settings(args)
    settings.ack_timeout = max(settings.ack_timeout, args.timeout)
    if args.host:
        settings.host = args.host
    fields["argv"] = [args.kind, args.name, args.state] + ([args.prio] if args.prio else [])
    event = stamp(fields, "send", settings.host, spool.next_seq(settings.spool_dir), ts_ns)
    result = deliver(event, settings)
    if result == "acked":
        print(f"acked {event['id']} (seq {event['seq']})")
        return 0
    if result.startswith("spooled:"):
        print(f"the router did not answer in {settings.ack_timeout:g}s; event {event['id']} "
              f"spooled to {result[8:]} (delivered when the router runs)")
        return 0
    return fail(f"event {event['id']} could not be delivered or spooled")
