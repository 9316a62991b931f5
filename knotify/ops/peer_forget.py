"""knotify forget-peer: stop expecting heartbeats from a host that is gone for good.

Its wire op is ``peer_forget``, answered by the cluster monitor.
"""

from __future__ import annotations

import argparse
from typing import Any

from knotify.client import request
from knotify.commands import client_settings, fail
from knotify.errors import RouterRefused, RouterUnavailable
from knotify.ops.base import Answer, Op, OpContext, unknown

COMMAND = "forget-peer"
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


# -- the daemon side ----------------------------------------------------------------------

def execute(ctx: OpContext, msg: dict[str, Any]) -> Answer:
    if ctx.cluster is None:
        raise unknown(msg["op"])
    return ctx.cluster.forget(msg)


OPS = (Op("peer_forget", execute),)
