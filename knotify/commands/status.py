"""knotify status: the current state of every host/kind/name, and the cluster view."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from knotify.client import request
from knotify.commands import client_settings, fail
from knotify.commands.table import fmt_time, render
from knotify.errors import RouterRefused, RouterUnavailable
from knotify.units import format_duration

HELP = ("show the current state per host, kind and name, and per cluster who is MASTER, "
        "who is BACKUP and since when (split brain, no master and silent hosts flagged)")


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.add_argument("--cluster", action="store_true",
                        help="only the cluster view (clusters and hosts heard from)")


def run(args: argparse.Namespace) -> int:
    settings = client_settings(args)
    try:
        answer = request(settings, "status")
        states: list[dict[str, Any]] = answer["states"]
        offset = answer.get("next")
        while isinstance(offset, int) and offset == len(states):  # 1,000 states a reply
            more = request(settings, "status", offset=offset)
            if not more["states"]:
                break
            states.extend(more["states"])
            offset = more.get("next")
    except (RouterUnavailable, RouterRefused) as exc:
        return fail(str(exc))
    cluster: dict[str, Any] = answer.get("cluster") or {}
    if args.json:
        print(json.dumps({"states": states, "router": answer.get("router", {}),
                          "cluster": cluster}, indent=2))
        return 0
    now = time.time_ns()
    blocks = []
    if not args.cluster:
        if not states:
            blocks.append("no events yet")
        else:
            rows = [
                [s["host"], s["kind"], s["name"] + (f" in {s['vs']}" if s["vs"] else ""),
                 s["state"], "" if s["prio"] is None else str(s["prio"]),
                 fmt_time(s["since_ns"]), format_duration(max(0, now - s["since_ns"]) / 1e9)]
                for s in states
            ]
            blocks.append(render(["HOST", "KIND", "NAME", "STATE", "PRIO", "SINCE", "FOR"],
                                 rows))
    if cluster.get("groups"):
        blocks.append(clusters_table(cluster["groups"], now))
    peers = cluster.get("peers", [])
    if peers and (args.cluster or any(p["watched"] for p in peers)):
        blocks.append(peers_table(peers, now))
    if args.cluster and not cluster.get("groups"):
        blocks.insert(0, "no cluster yet (an instance reported by two or more hosts, or a "
                      "[[cluster.group]])")
    router_peers = (answer.get("router") or {}).get("peers")
    if router_peers and not args.cluster:
        blocks.append(router_peers_table(router_peers))
    warnings = spool_warnings(answer.get("router") or {})
    if warnings:
        blocks.append("\n".join(warnings))
    loops = answer.get("router", {}).get("loops")
    if loops and not args.cluster:
        blocks.append(loops_table(loops))
    print("\n\n".join(blocks))
    return 0


def spool_warnings(router: dict[str, Any]) -> list[str]:
    """What the operator must hear about the spool: events whose hook could not read its
    config, and events waiting where this router does not look."""
    out = []
    report = router.get("spool") or {}
    last = report.get("last_config_problem")
    if router.get("hook_config_problems") and isinstance(last, dict):
        out.append(f"warning: {router['hook_config_problems']} event(s) came from a hook that "
                   f"could not read its config and used the defaults (last: {last.get('host')}"
                   f": {last.get('problem')})"
                   + (f"; replayed from {last['spool']}" if last.get("spool") else "")
                   + "; fix the hook's -c path")
    unread = report.get("unread")
    if isinstance(unread, dict):
        out.append(f"warning: {unread.get('events')} event(s) wait in {unread.get('spool')}, a "
                   "spool this router does not read (a hook given a config path that does not "
                   "exist spools there)")
    return out
def loops_table(loops: dict[str, dict[str, Any]]) -> str:
    """The router's background loops: when each last turned, restarts, the last error."""
    rows = []
    for name, loop in loops.items():
        turn = loop.get("last_turn_s")
        rows.append([name, "-" if turn is None else f"{format_duration(turn)} ago",
                     "running" if loop.get("running") else "DOWN",
                     str(loop.get("restarts", 0)), str(loop.get("last_error") or "")])
    return render(["LOOP", "LAST TURN", "STATE", "RESTARTS", "LAST ERROR"], rows)


def _for(since_ns: int | None, now: int) -> str:
    return format_duration(max(0, now - since_ns) / 1e9) if since_ns else "?"


def clusters_table(groups: list[dict[str, Any]], now: int) -> str:
    rows = []
    for group in groups:
        condition = group["condition"]
        if condition == "OK":
            status = "ok"
            since = ""
            if group.get("pending"):
                status = f"ok ({group['pending']}? {_for(group['pending_since_ns'], now)})"
        else:
            status = condition
            since = f"{fmt_time(group['since_ns'])[11:19]} ({_for(group['since_ns'], now)})"
        by_state: dict[str, list[str]] = {"MASTER": [], "BACKUP": [], "OTHER": []}
        for m in group["members"]:
            who = m["host"] if m["name"] == group["label"] else f"{m['host']}:{m['name']}"
            text = f"{who} {_for(m['since_ns'], now)}"
            if m["silent"]:
                text += " (silent)"
            if m["evidence"]:
                text += " (hears a lower-priority MASTER)"
            column = m["state"] if m["state"] in ("MASTER", "BACKUP") else "OTHER"
            by_state[column].append(text if column != "OTHER" else f"{text} {m['state']}")
        if condition == "SPLIT_BRAIN":
            by_state["MASTER"] = [f"{t} !" for t in by_state["MASTER"]]
        rows.append([group["label"], status, since, ", ".join(by_state["MASTER"]) or "-",
                     ", ".join(by_state["BACKUP"]), ", ".join(by_state["OTHER"])])
    return render(["CLUSTER", "STATUS", "SINCE", "MASTER", "BACKUP", "OTHER"], rows)


def peers_table(peers: list[dict[str, Any]], now: int) -> str:
    rows = []
    for p in peers:
        status = ("SILENT" if p["silent"] else "ok") if p["watched"] else "-"
        heard = (f"{format_duration(max(0, now - p['heard_ns']) / 1e9)} ago"
                 if p["heard_ns"] else "not since router start")
        rows.append([p["host"], status, heard, p["via"] or "-",
                     "" if p["interval_s"] is None else format_duration(p["interval_s"]),
                     "" if p["spool"] is None else str(p["spool"])])
    return render(["HOST", "WATCHED", "LAST HEARD", "VIA", "HEARTBEAT", "SPOOLED"], rows)


def router_peers_table(info: dict[str, Any]) -> str:
    """Router peering: the other routers, whether they answer, what they have not had yet,
    and this router's position per cluster (0 sends first)."""
    rows = []
    for r in info["routers"]:
        state = "up" if r["up"] else ("not yet" if r["up"] is None else "DOWN")
        last = r.get("last_sync_s")
        lag = r.get("lag") or {}
        rows.append([r["name"], r["host"], state,
                     "never" if last is None else f"{format_duration(last)} ago",
                     f"{lag.get('nflog', 0)} log, {lag.get('silences', 0)} silences",
                     str(r.get("last_error") or "")])
    table = render(["PEER ROUTER", "BESIDE", "REACHABLE", "LAST SYNC", "NOT YET SENT",
                    "LAST ERROR"], rows)
    positions = info.get("positions") or {}
    where = ", ".join(f"{label} {pos}" for label, pos in positions.items()) or "-"
    deduped = sum(info.get("deduped", {}).values())
    return (f"this router: {info['name']} (beside {info['host']}), peer_timeout "
            f"{format_duration(info['peer_timeout_s'])}, position per cluster: {where}; "
            f"{deduped} message(s) left to a peer\n" + table)
