"""knotify silence: mute alerts (and exec actions of rules that honour silences) for a while.

Its wire ops, ``silence_add``, ``silence_list`` and ``silence_expire``, are answered by
the alert engine (which owns the silences).
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import time
from typing import Any

from knotify.client import request
from knotify.commands import client_settings, fail
from knotify.commands.table import clean, fmt_time, render
from knotify.errors import RouterRefused, RouterUnavailable
from knotify.ops.base import Answer, Op, OpContext, unknown
from knotify.units import format_duration, parse_duration

COMMAND = "silence"
HELP = ("silences: `add MATCHER... --for 2h --reason TEXT`, `list`, `expire ID` "
        "(matchers: name=VI_1 host=node* state!=BACKUP)")


def register(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="silence_command", metavar="add|list|expire", required=True)
    add = sub.add_parser("add", help="mute what the matchers select, for a while",
                         description="Mute alerts for events that match every MATCHER. "
                         "MATCHER is FIELD=GLOB or FIELD!=GLOB; FIELD is host, kind, name, "
                         "vs, subject, state, from, rule, source or receiver; a comma "
                         "separates alternatives (state=FAULT,STOP).")
    add.add_argument("matchers", nargs="+", metavar="MATCHER")
    add.add_argument("--for", dest="duration", required=True, metavar="DURATION",
                     help="how long, e.g. 30m, 2h, 1d")
    add.add_argument("--reason", required=True, help="why (shown in history and alerts)")
    add.add_argument("--by", help="who (default: the login name)")
    lst = sub.add_parser("list", help="show active and pending silences")
    lst.add_argument("--all", action="store_true", help="include expired and ended ones")
    exp = sub.add_parser("expire", help="end a silence now")
    exp.add_argument("id", type=int)
    for command in (add, lst, exp):
        command.add_argument("-c", "--config", metavar="FILE", default=argparse.SUPPRESS,
                             help="config file (default: $KNOTIFY_CONFIG, then the search path)")
        command.add_argument("--json", action="store_true", help="print JSON")


def _who() -> str:
    for name in ("SUDO_USER", "USER", "LOGNAME"):
        if os.environ.get(name):
            return os.environ[name]
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())


def _describe(s: dict[str, Any]) -> str:
    """One line; an ended silence says when and how it ended, not when it was to end."""
    status = s["status"]
    planned = fmt_time(s["ends_ns"])[:19]
    if status == "expired" and s.get("expired_ns"):
        when = (f"expired by hand at {fmt_time(s['expired_ns'])[:19]}, it was to last until "
                f"{planned}")
    elif status == "ended":
        when = f"ran out at {planned}"
    else:
        when = f"until {planned}"
    return (f"silence {s['id']} ({status}): {' '.join(s['matchers'])} {when} - {s['reason']} "
            f"(by {s['by'] or '?'})")


def _until_and_left(s: dict[str, Any], now: int) -> tuple[str, str]:
    """The UNTIL and LEFT cells: the real end of an ended silence, and how it ended."""
    if s["status"] == "expired" and s.get("expired_ns"):
        return fmt_time(s["expired_ns"])[:19], "expired by hand"
    if s["status"] == "ended":
        return fmt_time(s["ends_ns"])[:19], "ran out"
    return fmt_time(s["ends_ns"])[:19], format_duration(max(0, s["ends_ns"] - now) / 1e9)


def run(args: argparse.Namespace) -> int:
    settings = client_settings(args)
    try:
        if args.silence_command == "add":
            try:
                duration = parse_duration(args.duration)
            except ValueError as exc:
                return fail(f"--for: {exc}", 2)
            answer = request(settings, "silence_add", matchers=args.matchers,
                             duration_s=duration, reason=args.reason, by=args.by or _who())
            if args.json:
                print(json.dumps({"silence": answer["silence"], "matching": answer["matching"]},
                                 indent=2))
                return 0
            print(clean(f"added {_describe(answer['silence'])}, for "
                        f"{format_duration(duration)}"))
            matching = answer.get("matching", [])
            if matching:
                print(f"it covers {len(matching)} current state(s):")
                for m in matching:
                    name = m["name"] + (f" in {m['vs']}" if m["vs"] else "")
                    print(clean(f"  {m['host']} {m['kind']} {name} ({m['state']})"))
            else:
                print("it covers no current state (yet): check the matchers if that is a surprise")
            return 0
        if args.silence_command == "list":
            answer = request(settings, "silence_list", all=args.all)
            silences: list[dict[str, Any]] = answer["silences"]
            if args.json:
                print(json.dumps(silences, indent=2))
                return 0
            if not silences:
                print("no silences")
                return 0
            now = time.time_ns()
            rows = [[str(s["id"]), s["status"], fmt_time(s["starts_ns"])[:19],
                     *_until_and_left(s, now), s["by"], " ".join(s["matchers"]), s["reason"]]
                    for s in silences]
            print(render(["ID", "STATUS", "FROM", "UNTIL", "LEFT", "BY", "MATCHERS", "REASON"],
                         rows))
            return 0
        answer = request(settings, "silence_expire", id=args.id)
        if args.json:
            print(json.dumps(answer["silence"], indent=2))
        else:
            ended = answer["silence"]
            print(clean(f"expired silence {ended['id']} now (it was to last until "
                        f"{fmt_time(ended['ends_ns'])[:19]}): {' '.join(ended['matchers'])} - "
                        f"{ended['reason']} (by {ended['by'] or '?'})"))
        return 0
    except (RouterUnavailable, RouterRefused) as exc:
        return fail(str(exc))


# -- the daemon side ----------------------------------------------------------------------

def execute(ctx: OpContext, msg: dict[str, Any]) -> Answer:
    if ctx.alerts is None:
        raise unknown(msg["op"])
    return ctx.alerts.command(msg["op"], msg)


OPS = (Op("silence_add", execute), Op("silence_list", execute), Op("silence_expire", execute))
