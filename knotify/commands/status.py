"""knotify status: the current state of every host/kind/name, and since when."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from knotify.client import RouterRefused, RouterUnavailable, request
from knotify.commands import client_settings, fail
from knotify.commands.table import fmt_time, render
from knotify.units import format_duration

HELP = "show the current state per host, kind and name, and since when"


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON")


def run(args: argparse.Namespace) -> int:
    settings = client_settings(args)
    try:
        answer = request(settings, "status")
    except (RouterUnavailable, RouterRefused) as exc:
        return fail(str(exc))
    states: list[dict[str, Any]] = answer["states"]
    if args.json:
        print(json.dumps({"states": states, "router": answer.get("router", {})}, indent=2))
        return 0
    if not states:
        print("no events yet")
        return 0
    now = time.time_ns()
    rows = [
        [s["host"], s["kind"], s["name"] + (f" in {s['vs']}" if s["vs"] else ""), s["state"],
         "" if s["prio"] is None else str(s["prio"]), fmt_time(s["since_ns"]),
         format_duration(max(0, now - s["since_ns"]) / 1e9)]
        for s in states
    ]
    print(render(["HOST", "KIND", "NAME", "STATE", "PRIO", "SINCE", "FOR"], rows))
    return 0
