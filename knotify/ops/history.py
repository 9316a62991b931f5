"""knotify history: events newest first, with the outcome of the actions each triggered.

The ``history`` op: the router answers a page (:data:`PAGE` events at most) with each
event's runs and alerts, and where the next page starts; the CLI asks on and prints.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from knotify.alerts.render import arrow, detail_text
from knotify.alerts.report import alert_lines
from knotify.client import request
from knotify.commands import client_settings, fail
from knotify.commands.table import clean
from knotify.errors import RouterRefused, RouterUnavailable, WireError
from knotify.event import ID_CHARS
from knotify.ops.base import Answer, Op, OpContext, journal_of, outbox_of
from knotify.templates import iso_time
from knotify.units import format_duration
from knotify.vocab import OWN_HOSTS

COMMAND = "history"
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


# -- the daemon side ----------------------------------------------------------------------

#: Events in one reply at most (``next_before`` asks for the rest).
PAGE = 1000


def execute(ctx: OpContext, msg: dict[str, Any]) -> Answer:
    limit = msg.get("limit", 50)
    if type(limit) is not int or not 1 <= limit <= 100_000:
        raise WireError("history 'limit' must be an integer 1..100000")
    filters: dict[str, str | None] = {}
    for k in ("host", "kind", "name"):
        v = msg.get(k)
        if v is not None and (not isinstance(v, str) or len(v) > 255):
            raise WireError(f"history {k!r} must be a string (a pattern)")
        filters[k] = v
    event_id = msg.get("id")
    if event_id is not None and (not isinstance(event_id, str) or not 1 <= len(event_id) <= 64
                                 or any(c not in ID_CHARS for c in event_id)):
        raise WireError("history 'id' must be an event id (letters, digits, _ and -) or its "
                        "first characters")
    transitions = msg.get("transitions", False)
    if type(transitions) is not bool:
        raise WireError("history 'transitions' must be true or false")
    before = msg.get("before")
    if before is not None and (type(before) is not int or not 0 < before < 2**62):
        raise WireError("history 'before' must be an event number (rowid)")
    page = journal_of(ctx).history(min(limit, PAGE), before=before, event_id=event_id,
                                   transitions=transitions, host=filters["host"],
                                   kind=filters["kind"], name=filters["name"])
    outbox_of(ctx).attach_history({event["id"]: event for event in page})
    more = limit > PAGE and len(page) == PAGE
    return {"events": page, "next_before": page[-1]["rowid"] if more else None}


OPS = (Op("history", execute, access=OWN_HOSTS),)
