"""A failover's time to the page per topology: one router, a pair, a pair with one dead.

Issue 11's site (tests/peer_cluster.py): lb1 and lb2 run keepalived 2.2.7 in network
namespaces, a knotify router in each node's namespace (CURVE over TCP, one shared
router key pair), the hooks sending to the routers, a webhook receiver in the hub
namespace recording when each POST arrives. A failover is lb1's ``prio`` check
failing (lb2 takes over) or passing again (lb1 takes back); nothing is restarted.

The baseline, in every phase of the same run: what sites do today, keepalived's
``notify_master`` running a ``/bin/sh`` script that ``curl``s the same receiver.
Both are timed from keepalived's own clock (``last_transition`` of the new MASTER in
its JSON dump) to the POST's arrival; knotify's figure has ``group_wait`` subtracted
(the wait it adds on purpose, so that one failover is one message).

Phases, in this order (each router has heard every event before it is measured):

- **pair**: both routers with ``[peers]``, the hooks sending to both;
- **pair, one dead**: lb1's router killed; the hooks still name it first (each hook
  waits its share of ``ack_timeout`` on it), and when lb1 becomes MASTER the router
  that should go first is the dead one: lb2's router must not wait for it long;
- **one router**: lb2's router alone, without ``[peers]``, the hooks sending to it only.

Each failover must give exactly one page (more is counted and reported as a failure
of the pair: ``dup``). Needs root, ip netns, keepalived, nftables' kernel side, curl.

    .venv/bin/python bench/page_topology.py [--failovers 6] [--group-wait 1s]
        [--peer-timeout 5s] [--ack-timeout 250ms] [--heartbeat 5s] [--json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import ROOT, load, machine, median, percentile, revision, table

sys.path.insert(0, str(ROOT / "tests"))
import netns
import netns_cluster
import peer_cluster
from alert_servers import HttpSink, settled
from peer_cluster import PeerSite

from knotify import resync, units

PHASES = ("pair", "pair, one dead", "one router")


def baseline_script(url: str) -> str:
    return ("#!/bin/sh\n# keepalived's notify_master as sites write it: curl the webhook.\n"
            "exec curl -s -m 10 -o /dev/null -H 'Content-Type: application/json' "
            f"-d \"{{\\\"title\\\": \\\"$1 is MASTER\\\"}}\" {url}/$1\n")


def last_transition_ns(node: netns.Node) -> int:
    pid = int(node.pidfile("main").read_text().split()[0])
    for inst in resync.snapshot(pid, str(node.tmpdir / "keepalived.json")):
        if inst["name"] == peer_cluster.INSTANCE and inst["state"] == "MASTER":
            return int(float(inst["last_transition"]) * 1e9)
    raise RuntimeError(f"{node.name} is not MASTER in its own dump")


def wait(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def rules(site: PeerSite, group_wait: str) -> str:
    assert site.chat is not None
    return f"""
[alerts]
group_wait = "{group_wait}"
retry_initial = "200ms"
retry_max = "1s"
flap_threshold = 0

[receivers.chat]
urls = ["{site.chat.url()}"]

[[rule]]
id = "page"
kind = "INSTANCE"
state = "MASTER"
from = "BACKUP"
[[rule.action]]
type = "alert"
receivers = ["chat"]
"""


def measure(site: PeerSite, chat: HttpSink, phase: str, count: int, group_wait: float,
            alive: tuple[str, ...]) -> list[dict[str, Any]]:
    samples: list[dict[str, Any]] = []
    to = "lb2" if site.states(alive[0]).get("lb1") == "MASTER" else "lb1"
    for _ in range(count):
        pages0, base0 = len(chat.got("/hook")), len(chat.got(f"/baseline/{to}"))
        site.fail_over(to)
        wait(lambda to=to, pages0=pages0, base0=base0: len(chat.got("/hook")) > pages0
             and len(chat.got(f"/baseline/{to}")) > base0, 120, f"{to}'s page and baseline")
        ref_ns = last_transition_ns(site.nodes[to])
        site.wait_failover(to, routers=alive, timeout=60)
        # every router has decided (sent, or skipped what its peer sent): count the pages
        wait(lambda: all(settled(site.history(r)) for r in alive), 120, "the routers to settle")
        time.sleep(0.3)
        pages = chat.got("/hook")[pages0:]
        base = chat.got(f"/baseline/{to}")[base0]
        assert f"{to} BACKUP -> MASTER" in pages[0].json["title"], pages[0].json
        heard, sent_by = {}, []
        for r in alive:
            ev = next(e for e in site.history(r) if e["host"] == to
                      and e["state"] == "MASTER" and e["class"] == "transition")
            # when the new MASTER's event reached this router (hook, or the agent's drain
            # of what the hook spooled for it)
            heard[r] = (int(ev["recv_ns"]) - ref_ns) / 1e6
            if any((a.get("message") or {}).get("status") == "sent" for a in ev["alerts"]):
                sent_by.append(r)
        samples.append({
            "phase": phase, "to": to, "pages": len(pages),
            "page_ms": (pages[0].t_start - ref_ns / 1e9 - group_wait) * 1000,
            "baseline_ms": (base.t_start - ref_ns / 1e9) * 1000,
            "heard_ms": heard, "sent_by": sent_by,
        })
        to = "lb1" if to == "lb2" else "lb2"
    return samples


def summary(samples: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for phase in PHASES:
        mine = [s for s in samples if s["phase"] == phase]
        if not mine:
            continue
        page = [s["page_ms"] for s in mine]
        base = [s["baseline_ms"] for s in mine]
        out[phase] = {
            "failovers": len(mine), "dup": sum(s["pages"] - 1 for s in mine),
            "page_median_ms": median(page), "page_p90_ms": percentile(page, 90),
            "page_max_ms": max(page), "baseline_median_ms": median(base),
            "ratio": median(page) / median(base),
            "page_median_to": {to: median([s["page_ms"] for s in mine if s["to"] == to])
                               for to in ("lb1", "lb2") if any(s["to"] == to for s in mine)},
            "heard_median_ms": {r: median([s["heard_ms"][r] for s in mine])
                                for r in mine[0]["heard_ms"]},
            "sent_by": {r: sum(r in s["sent_by"] for s in mine) for r in mine[0]["heard_ms"]},
        }
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--failovers", type=int, default=6, help="per phase (6)")
    parser.add_argument("--group-wait", default="1s")
    parser.add_argument("--peer-timeout", default="5s")
    parser.add_argument("--ack-timeout", default=None,
                        help="the hooks' [hook] ack_timeout (default: knotify's, 250ms)")
    parser.add_argument("--heartbeat", default=None,
                        help="the agents' [agent] heartbeat (default: knotify's, 5s)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    ok, reason = peer_cluster.usable()
    if ok and shutil.which("curl") is None:
        ok, reason = False, "curl is not installed (the baseline's notify script uses it)"
    if not ok:
        print(f"cannot run: {reason}")
        return 0
    group_wait = units.parse_duration(args.group_wait)
    root = Path(tempfile.mkdtemp(prefix="knt-", dir="/tmp"))
    cluster = netns_cluster.BridgedCluster(root / "ka")
    site = PeerSite(root, cluster, subnet="10.218.0")
    samples: list[dict[str, Any]] = []
    load_before = load()
    try:
        script: list[Path] = []

        def notify_master(node: netns.Node) -> list[str]:
            if not script:
                assert site.chat is not None
                bindir = netns.secure_dir(site.work / "bench-bin")
                script.append(netns.install_script(
                    bindir / "baseline", baseline_script(site.chat.url("/baseline", "http"))))
            return [f'notify_master "{script[0]} {node.name}"']

        site.create(extra_notify=notify_master)
        chat = site.chat
        assert chat is not None
        site.write_node_configs(ack_timeout=args.ack_timeout, heartbeat=args.heartbeat)
        body = rules(site, args.group_wait)
        site.configure(body, peer_timeout=args.peer_timeout)
        site.start()
        wait(lambda: all(settled(site.history(r)) for r in peer_cluster.PRIOS), 60,
             "start-up to settle")

        samples += measure(site, chat, "pair", args.failovers, group_wait, ("lb1", "lb2"))

        site.routers["lb1"].kill()
        samples += measure(site, chat, "pair, one dead", args.failovers, group_wait, ("lb2",))

        site.routers["lb2"].stop()
        site.kenvs["lb2"].write_config(site.router_config("lb2", body, peers=False))
        site.write_node_configs(routers=("lb2",), ack_timeout=args.ack_timeout,
                                heartbeat=args.heartbeat)
        site.routers["lb2"].start()
        samples += measure(site, chat, "one router", args.failovers, group_wait, ("lb2",))
    finally:
        site.close()
        cluster.destroy()
        shutil.rmtree(root, ignore_errors=True)
    result = summary(samples)
    if args.json:
        print(json.dumps({"samples": samples, "summary": result, "revision": revision(),
                          "load": [load_before, load()]}, indent=2))
        return 0
    print(f"knotify time to the page per topology — {time.strftime('%Y-%m-%d %H:%M:%S %z')}")
    print(f"machine: {machine()}")
    print(f"knotify: {revision()}; load average before {load_before}, after {load()}")
    print(f"{args.failovers} failovers per phase (lb1 <-> lb2, keepalived 2.2.7 in network "
          f"namespaces), group_wait {args.group_wait} subtracted, peer_timeout "
          f"{args.peer_timeout}, ack_timeout {args.ack_timeout or '250ms (default)'}, "
          f"agent heartbeat {args.heartbeat or '5s (default)'}; from keepalived's "
          "transition to the webhook POST\n")
    rows = []
    for phase, r in result.items():
        to = ", ".join(f"to {h} {v:.0f}" for h, v in r["page_median_to"].items())
        rows.append([phase, str(r["failovers"]), str(r["dup"]), f"{r['page_median_ms']:.0f}",
                     f"{r['page_p90_ms']:.0f}", f"{r['page_max_ms']:.0f}", to,
                     f"{r['baseline_median_ms']:.0f}", f"{r['ratio']:.1f}x"])
    print(table(["topology", "n", "dup", "median ms", "p90 ms", "max ms", "median by MASTER",
                 "shell+curl ms", "x baseline"], rows))
    print("\nwhere the time goes: when the new MASTER's event reached each router (median ms "
          "from keepalived's transition), and which router sent the pages")
    print(table(["topology", "event reached", "pages sent by"],
                [[phase, ", ".join(f"{k} {v:.0f}" for k, v in r["heard_median_ms"].items()),
                  ", ".join(f"{k} {v}" for k, v in r["sent_by"].items())]
                 for phase, r in result.items()]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
