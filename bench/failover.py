"""Failover latency: keepalived's transition to the exec action starting, real keepalived.

Two keepalived 2.2.7 nodes in network namespaces (tests/netns.py), one router reading
both nodes' notify FIFOs (the ordered source), a rule that runs an ``exec`` action on
every MASTER transition.

Each cycle makes node1's health check fail (weight -60: priority 100 -> 40, below
node2's 50, which takes over) and pass again (node1 preempts back): two failovers per
cycle, nothing restarted. For each failover the reference is keepalived's own clock:
``last_transition`` of the instance in keepalived's JSON dump (microseconds, read
right after the change). The
figures are the time from there to (a) the router reading the FIFO line, (b) the
router journaling the action as started, (c) the action's program running its first
line. Median and p99 over the failovers (20 by default). The baseline printed beside
them is keepalived's own lag from the change to its FIFO write, as seen by the router.

Needs root, ip netns and keepalived (Debian: apt-get install keepalived iproute2).

    .venv/bin/python bench/failover.py [--failovers 20] [--json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

from _common import ROOT, KEnv, Router, load, machine, median, percentile, revision, table

sys.path.insert(0, str(ROOT / "tests"))
import netns

from knotify import resync

# A shell action (no interpreter start-up to speak of): its first line takes the time.
SCRIPT = """#!/bin/sh
t=$(date +%s%N)
printf '{{"t": %s, "host": "%s", "event": "%s"}}\\n' "$t" "$KNOTIFY_HOST" "$KNOTIFY_ID" >> {out}
"""


def keepalived_conf(node: netns.Node, check: Path) -> str:
    return f"""global_defs {{
    router_id {node.name}
    vrrp_notify_fifo {node.fifo}
    script_user root
    enable_script_security
}}
vrrp_script chk {{
    script "{check} {node.name}"
    interval 1
    weight -60
    fall 1
    rise 1
}}
vrrp_instance VI_1 {{
    state BACKUP
    interface {node.ifname}
    virtual_router_id 91
    priority {node.prio}
    advert_int 1
    unicast_src_ip {node.addr}
    unicast_peer {{
        {node.peer}
    }}
    virtual_ipaddress {{
        10.215.0.100/24
    }}
    track_script {{
        chk
    }}
}}
"""


def masters(kenv: KEnv) -> dict[str, str]:
    with sqlite3.connect(f"file:{kenv.journal}?mode=ro", uri=True) as db:
        return {host: state for host, state in db.execute(
            "SELECT host, state FROM state WHERE kind = 'INSTANCE' AND name = 'VI_1'")}


def wait(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def last_transition_ns(node: netns.Node) -> int:
    pid = int(node.pidfile("main").read_text().split()[0])
    for inst in resync.snapshot(pid, str(node.tmpdir / "keepalived.json")):
        if inst["name"] == "VI_1" and inst["state"] == "MASTER":
            return int(float(inst["last_transition"]) * 1e9)
    raise RuntimeError(f"{node.name} is not MASTER in its own dump")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--failovers", type=int, default=20)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    ok, reason = netns.usable()
    if not ok:
        print(f"cannot run: {reason}")
        return 0

    kenv = KEnv("knf-")
    cluster = netns.Cluster(kenv.root / "ka")
    router: Router | None = None
    try:
        nodes = cluster.create({"node1": 100, "node2": 50}, subnet="10.215.0")
        out = kenv.root / "acted.jsonl"
        script = kenv.root / "act.py"
        script.write_text(SCRIPT.format(out=str(out)))
        script.chmod(0o755)
        fifos = "\n".join(f'[[router.fifos]]\npath = "{n.fifo}"\nhost = "{n.name}"\n'
                          for n in nodes.values())
        kenv.write_config(fifos + f"""
[[rule]]
id = "on-master"
kind = "INSTANCE"
state = "MASTER"
[[rule.action]]
type = "exec"
argv = ["{script}"]
""")
        router = Router(kenv)
        bindir = netns.secure_dir(kenv.root / "sbin")
        check = netns.install_script(bindir / "chk", f"#!/bin/sh\nexit $(cat {bindir}/$1.fail "
                                     "2>/dev/null || echo 0)\n")
        for node in nodes.values():
            node.keepalived_conf.write_text(keepalived_conf(node, check))
            cluster.start(node)
        node1, node2 = nodes["node1"], nodes["node2"]
        wait(lambda: masters(kenv) == {"node1": "MASTER", "node2": "BACKUP"}, 60,
             "node1 MASTER, node2 BACKUP")
        samples: list[dict[str, Any]] = []
        while len(samples) < args.failovers:
            for fail, to in ((True, node2), (False, node1)):
                if len(samples) >= args.failovers:
                    break
                before = out.read_text().count("\n") if out.exists() else 0
                (bindir / "node1.fail").write_text("1" if fail else "0")

                def took_over(to: netns.Node = to, before: int = before) -> bool:
                    return (masters(kenv).get(to.name) == "MASTER" and out.exists()
                            and out.read_text().count("\n") > before)

                wait(took_over, 60, f"{to.name} to take over")
                keepalived_ns = last_transition_ns(to)
                acted = json.loads(out.read_text().splitlines()[-1])
                with sqlite3.connect(f"file:{kenv.journal}?mode=ro", uri=True) as db:
                    recv_ns, started_ns = db.execute(
                        "SELECT e.recv_ns, r.started_ns FROM events e JOIN runs r "
                        "ON r.event_id = e.id WHERE e.id = ?", (acted["event"],)).fetchone()
                samples.append({"host": to.name, "read_ms": (recv_ns - keepalived_ns) / 1e6,
                                "journaled_start_ms": (started_ns - keepalived_ns) / 1e6,
                                "program_ms": (acted["t"] - keepalived_ns) / 1e6})
                other = "node1" if fail else "node2"
                wait(lambda other=other: masters(kenv).get(other) == "BACKUP", 30,
                     f"{other} BACKUP")
                time.sleep(0.5)
        result = {name: {"median": median([s[name] for s in samples]),
                         "p99": percentile([s[name] for s in samples], 99),
                         "max": max(s[name] for s in samples)}
                  for name in ("read_ms", "journaled_start_ms", "program_ms")}
        if args.json:
            print(json.dumps({"samples": samples, "summary": result}, indent=2))
            return 0
        print(f"knotify failover latency — {time.strftime('%Y-%m-%d %H:%M:%S %z')}")
        print(f"machine: {machine()}")
        print(f"knotify: {revision()}; load average {load()}")
        print(f"{len(samples)} failovers (node1's check fails/passes), keepalived 2.2.7 in network "
              "namespaces, router reading both FIFOs, exec action on MASTER\n")
        rows = [[label, f"{result[key]['median']:.1f}", f"{result[key]['p99']:.1f}",
                 f"{result[key]['max']:.1f}"]
                for label, key in (("FIFO line read by the router (baseline)", "read_ms"),
                                   ("action journaled as started", "journaled_start_ms"),
                                   ("action program running", "program_ms"))]
        print(table(["from keepalived's transition to", "median ms", "p99 ms", "max ms"], rows))
        extra = result["program_ms"]["median"] - result["read_ms"]["median"]
        print(f"\nknotify's own part (program running minus FIFO read), median: {extra:.1f} ms")
        return 0
    finally:
        cluster.destroy()
        if router is not None:
            router.stop()
        shutil.rmtree(kenv.root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
