"""knotify forget-peer: stop expecting heartbeats from a host that is gone for good."""

from __future__ import annotations

import argparse

from knotify.client import request
from knotify.commands import client_settings, fail
from knotify.errors import RouterRefused, RouterUnavailable

HELP = ("stop watching a decommissioned host: no more PEER_SILENT for it (it is watched "
        "again if it heartbeats)")


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("host", help="the host name its events and heartbeats carry")


def run(args: argparse.Namespace) -> int:
    settings = client_settings(args)
    try:
        request(settings, "peer_forget", host=args.host)
    except (RouterUnavailable, RouterRefused) as exc:
        return fail(str(exc))
    print(f"{args.host}: no longer watched")
    return 0
