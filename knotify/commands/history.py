"""knotify history: events newest first, with the outcome of the actions each triggered."""

from __future__ import annotations

import argparse
import json
from typing import Any

from knotify.alerts.report import alert_lines
from knotify.client import RouterRefused, RouterUnavailable, request
from knotify.commands import client_settings, fail
from knotify.commands.table import clean, fmt_time
from knotify.units import format_duration

HELP = "show events newest first, with the actions each one triggered and how they ended"


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.add_argument("--limit", "-n", type=int, default=20, help="how many events (default 20)")
    parser.add_argument("--host", help="only this host")
    parser.add_argument("--kind", help="only this kind (INSTANCE, GROUP, VS, RS, ...)")
    parser.add_argument("--name", help="only this name")


def run(args: argparse.Namespace) -> int:
    settings = client_settings(args)
    if not 1 <= args.limit <= 100_000:
        return fail("--limit must be 1..100000", 2)
    filters = {k: v for k in ("host", "kind", "name") if (v := getattr(args, k)) is not None}
    if "kind" in filters:
        filters["kind"] = filters["kind"].upper()
    events: list[dict[str, Any]] = []
    before: int | None = None
    try:
        while len(events) < args.limit:  # the router answers a page (1,000) at a time
            page = {"before": before} if before is not None else {}
            answer = request(settings, "history", timeout=30.0,
                             limit=args.limit - len(events), **filters, **page)
            events.extend(answer["events"])
            before = answer.get("next_before")
            if not isinstance(before, int) or not answer["events"]:
                break
    except (RouterUnavailable, RouterRefused) as exc:
        return fail(str(exc))
    if args.json:
        print(json.dumps(events, indent=2))
        return 0
    if not events:
        print("no events")
        return 0
    for ev in events:
        print(clean(_line(ev)))
        for act in ev["actions"]:
            print(clean("    -> " + _action(act)))
        for line in alert_lines(ev.get("alerts", [])):
            print(clean(line))
    return 0


def _line(ev: dict[str, Any]) -> str:
    name = ev["name"] + (f" in {ev['vs']}" if ev["vs"] else "")
    state = ev["reported"]
    if ev["class"] == "transition":
        what = f"{ev['prev_state']} -> {ev['state']}"
    elif ev["class"] == "invalid":
        what = f"INVALID: {ev['error']}"
    elif ev["class"] == "refused":
        what = f"{state} (refused: {ev['error']})"
    else:
        what = f"{state} ({ev['class']})"
    prio = "" if ev["prio"] is None else f" prio {ev['prio']}"
    extra = ev.get("extra") or {}
    via = " via spool" if extra.get("via") == "spool" else ""
    clock = extra.get("clock")
    if isinstance(clock, dict) and isinstance(clock.get("ahead_s"), int | float):
        what += (f" (clock ahead by {format_duration(clock['ahead_s'])}: ordered as "
                 "received)")
    return (f"{fmt_time(ev['ts_ns'])}  {ev['host']}  {ev['kind']} {name}  {what}{prio}  "
            f"[{ev['source']}{via} seq {ev['seq']}] {ev['id']}")


def _action(act: dict[str, Any]) -> str:
    text = f"{act['rule']}#{act['index']} {act['kind']}: {act['status']}"
    if act.get("exit_code") is not None:
        text += f" (exit {act['exit_code']})"
    if act.get("started_ns") and act.get("ended_ns"):
        text += f" in {(act['ended_ns'] - act['started_ns']) / 1e9:.2f}s"
    if act.get("detail"):
        text += f" - {act['detail']}"
    return text
