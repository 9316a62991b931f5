"""knotify watch: follow the router live (its PUB socket): events, action and alert outcomes."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import zmq

from knotify import paths
from knotify.alerts.render import arrow
from knotify.commands import client_settings, fail
from knotify.commands.table import clean, fmt_time
from knotify.rules import Pattern

HELP = "follow the router live: every event and every action and alert outcome as it happens"
TOPICS = ("event", "action", "alert")


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true",
                        help="one JSON object per line (with a 'topic' field)")
    parser.add_argument("--topic", action="append", choices=TOPICS,
                        help="only these topics (repeatable; default all)")
    parser.add_argument("--host", help="only this host (wildcards, !negation)")
    parser.add_argument("--kind", help="only events of this kind (INSTANCE, CLUSTER, PEER, ...)")
    parser.add_argument("--name", help="only this name (wildcards, !negation)")
    parser.add_argument("--state", help="only events in this state (wildcards, !negation)")
    parser.add_argument("--transitions", action="store_true",
                        help="only events that changed a state (no repeats or notices)")
    parser.add_argument("--count", type=int, metavar="N", help="exit after N messages")
    parser.add_argument("--timeout", type=float, metavar="SECONDS",
                        help="exit 1 if --count messages have not come by then")
    parser.add_argument("--endpoint", help="the PUB socket (default: events.sock in the "
                        "router's runtime_dir)")


class Filter:
    def __init__(self, args: argparse.Namespace) -> None:
        self.topics = set(args.topic or TOPICS)
        self.host = Pattern.parse([args.host]) if args.host else None
        self.kind = Pattern.parse([args.kind], upper=True) if args.kind else None
        self.name = Pattern.parse([args.name]) if args.name else None
        self.state = Pattern.parse([args.state], upper=True) if args.state else None
        self.transitions = args.transitions

    def __call__(self, topic: str, data: dict[str, Any]) -> bool:
        if topic not in self.topics:
            return False
        if topic == "event":
            if self.kind and not self.kind(str(data.get("kind", ""))):
                return False
            if self.state and not (self.state(str(data.get("state", "")))
                                   or self.state(str(data.get("effective", "")))):
                return False
            if self.transitions and data.get("class") != "transition":
                return False
        elif self.kind or self.state or self.transitions:
            return False  # those describe events; outcomes follow only unfiltered
        if self.host and not self.host(str(data.get("host", ""))):
            return False
        return not (self.name and not self.name(str(data.get("name", ""))))


def line(topic: str, data: dict[str, Any], now_ns: int) -> str:
    """One readable line per message."""
    if topic == "event":
        when = fmt_time(data.get("ts_ns") or now_ns)[11:]
        name = str(data.get("name", "")) + (f" in {data['vs']}" if data.get("vs") else "")
        cls = data.get("class")
        if cls == "transition":
            what = arrow(str(data.get("kind")), str(data.get("prev_state")),
                         str(data.get("effective")))
        elif cls == "invalid":
            what = "INVALID"
        else:
            what = f"{data.get('state')} ({cls})"
        prio = "" if data.get("prio") is None else f" prio {data['prio']}"
        detail = f"  {data['detail']}" if data.get("detail") else ""
        return (f"{when}  {data.get('host')}  {data.get('kind')} {name}  {what}{prio}  "
                f"[{data.get('source')}]{detail}")
    when = fmt_time(now_ns)[11:]
    if topic == "action":
        text = (f"{when}    -> {data.get('rule')} {data.get('kind')} for {data.get('host')} "
                f"{data.get('name')} {data.get('state')}: {data.get('status')}")
        if data.get("exit_code") is not None:
            text += f" (exit {data['exit_code']})"
        return text + (f" - {data['detail']}" if data.get("detail") else "")
    if topic == "alert":
        return (f"{when}    => alert to {data.get('receiver')} (attempt {data.get('attempt')}): "
                f"{data.get('status')} - {data.get('title')}")
    return f"{when}  {topic} {json.dumps(data)}"


def run(args: argparse.Namespace) -> int:
    if args.count is not None and args.count < 1:
        return fail("--count must be 1 or more", 2)
    endpoint = args.endpoint or paths.pub_endpoint(client_settings(args).runtime_dir)
    if endpoint.startswith("ipc://") and not os.path.exists(endpoint[6:]):
        print(f"knotify: waiting for the router (no socket at {endpoint[6:]} yet)",
              file=sys.stderr)
    keep = Filter(args)
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVHWM, 100_000)
    for topic in keep.topics:
        sock.setsockopt(zmq.SUBSCRIBE, topic.encode())
    try:
        sock.connect(endpoint)
    except zmq.ZMQError as exc:
        sock.close()
        ctx.term()
        return fail(f"cannot connect to {endpoint}: {exc}")
    deadline = time.monotonic() + args.timeout if args.timeout else None
    shown = 0
    try:
        while args.count is None or shown < args.count:
            wait = 1.0 if deadline is None else min(1.0, deadline - time.monotonic())
            if deadline is not None and wait <= 0:
                return fail(f"{shown} of {args.count} messages before the timeout")
            if not sock.poll(int(wait * 1000)):
                continue
            frames = sock.recv_multipart()
            if len(frames) != 2:
                continue
            topic = frames[0].decode(errors="replace")
            try:
                data = json.loads(frames[1])
            except ValueError:
                continue
            if not isinstance(data, dict) or not keep(topic, data):
                continue
            if args.json:
                print(json.dumps({"topic": topic, **data}), flush=True)
            else:
                print(clean(line(topic, data, time.time_ns())), flush=True)
            shown += 1
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        sock.close(linger=0)
        ctx.term()
