"""knotify history: events newest first, with the outcome of the actions each triggered."""

from __future__ import annotations

import argparse
import json
from typing import Any

from knotify.alerts.render import arrow, detail_text
from knotify.alerts.report import alert_lines
from knotify.client import request
from knotify.commands import client_settings, fail
from knotify.commands.table import clean
from knotify.errors import RouterRefused, RouterUnavailable
from knotify.event import ID_CHARS
from knotify.templates import iso_time
from knotify.units import format_duration

HELP = "show events newest first, with the actions each one triggered and how they ended"


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.add_argument("--limit", "-n", type=int, default=20, help="how many events (default 20)")
    parser.add_argument("--host", help="only this host (wildcards * and ?, !negation, as in "
                        "watch and the rules)")
    parser.add_argument("--kind", help="only this kind (INSTANCE, GROUP, VS, RS, CLUSTER, ...)")
    parser.add_argument("--name", help="only this name (wildcards: --name 'VI_*')")
    parser.add_argument("--id", dest="event_id", metavar="ID",
                        help="the event with this id (as printed in every alert), or whose "
                        "id starts with it")
    parser.add_argument("--transitions", action="store_true",
                        help="only events that changed a state (no repeats, notices or "
                        "stale reports)")


def run(args: argparse.Namespace) -> int:
    settings = client_settings(args)
    if not 1 <= args.limit <= 100_000:
        return fail("--limit must be 1..100000", 2)
    filters: dict[str, Any] = {
        k: v for k in ("host", "kind", "name") if (v := getattr(args, k)) is not None}
    if "kind" in filters:
        filters["kind"] = filters["kind"].upper()
    if args.event_id is not None:
        event_id = args.event_id.strip()
        if not 1 <= len(event_id) <= 64 or any(c not in ID_CHARS for c in event_id):
            return fail(f"--id: {args.event_id!r} is not an event id (letters, digits, _ "
                        "and -, as in 'knotify event 3f2a...' at the end of an alert)", 2)
        filters["id"] = event_id
    if args.transitions:
        filters["transitions"] = True
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
        if args.event_id is not None:
            return fail(f"no event with id {args.event_id} in the journal (older events are "
                        "pruned: [router] keep_events)")
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
        what = arrow(ev["kind"], ev["prev_state"], ev["state"])
    elif ev["class"] == "invalid":
        what = f"INVALID: {ev['error']}"
    elif ev["class"] == "refused":
        what = f"{state} (refused: {ev['error']})"
    else:
        what = f"{state} ({ev['class']})"
    prio = "" if ev["prio"] is None else f" prio {ev['prio']}"
    extra = ev.get("extra") or {}
    if ev["source"] == "cluster" and isinstance(extra.get("detail"), str):
        # What knotify saw: the hosts and states, for how long, since when.
        what += f": {detail_text(name, extra['detail'])}"
    via = " via spool" if extra.get("via") == "spool" else ""
    clock = extra.get("clock")
    if isinstance(clock, dict) and isinstance(clock.get("ahead_s"), int | float):
        what += (f" (clock ahead by {format_duration(clock['ahead_s'])}: ordered as "
                 "received)")
    return (f"{_when(ev['ts_ns'])}  {ev['host']}  {ev['kind']} {name}  {what}{prio}  "
            f"[{ev['source']}{via} seq {ev['seq']}] {ev['id']}")


def _when(ns: int) -> str:
    """``2025-03-14 09:26:53.123+01:00``: the date, and the zone's UTC offset."""
    return iso_time(ns, "milliseconds").replace("T", " ", 1)


def _action(act: dict[str, Any]) -> str:
    text = f"{act['rule']}#{act['index']} {act['kind']}: {act['status']}"
    if act.get("exit_code") is not None:
        text += f" (exit {act['exit_code']})"
    if act.get("started_ns") and act.get("ended_ns"):
        text += f" in {(act['ended_ns'] - act['started_ns']) / 1e9:.2f}s"
    if act.get("detail"):
        text += f" - {act['detail']}"
    return text
