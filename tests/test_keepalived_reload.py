"""Real keepalived reloading and restarting while knotify reads its FIFO.

keepalived closes and unlinks its FIFO on every reload and stop (the reader sees
EOF) and makes a new one; after a reload it re-announces nothing. The router must
reopen the FIFO, read every line exactly once, and, when lines died with an old
FIFO while no one read them, re-learn the state from keepalived's JSON dump.
"""

from __future__ import annotations

import json
import signal
import time

import netns
import pytest
from conftest import KEnv, RouterProcess, wait_for

pytestmark = [pytest.mark.keepalived, pytest.mark.slow, pytest.mark.timeout(180)]


def write_conf(node: netns.Node, instances: tuple[str, ...]) -> None:
    out = ["global_defs {", f"    router_id {node.name}", f"    vrrp_notify_fifo {node.fifo}",
           "}"]
    for n, inst in enumerate(instances, 1):
        out += [f"vrrp_instance {inst} {{", "    state BACKUP", f"    interface {node.ifname}",
                f"    virtual_router_id {80 + n}", f"    priority {node.prio}",
                "    advert_int 1", "    notify_deleted", "    virtual_ipaddress {",
                f"        10.214.0.{100 + n}/24", "    }", "}"]
    node.keepalived_conf.write_text("\n".join(out) + "\n")
    node.keepalived_conf.chmod(0o644)


def router_config(kenv: KEnv, node: netns.Node) -> None:
    fifo = json.dumps(str(node.fifo))
    kenv.write_config(f"""
[[router.fifos]]
path = {fifo}
host = "{node.name}"
resync = true
pidfile = {json.dumps(str(node.pidfile("main")))}
json_file = {json.dumps(str(node.tmpdir / "keepalived.json"))}

[[rule]]
id = "log"
on = "every"
[[rule.action]]
type = "log"
""")


def fifo_lines(kenv: KEnv) -> list[str]:
    return [e["raw"] for e in reversed(kenv.history()) if e["source"] == "fifo"]


def states(kenv: KEnv) -> dict[str, str]:
    return {s["name"]: s["state"] for s in kenv.status() if s["kind"] == "INSTANCE"}


def resyncs(router: RouterProcess) -> int:
    return len([r for r in router.records() if r.get("event") == "resync.done"])


def test_reload_and_restart_lose_and_repeat_no_line(
    kenv: KEnv, router: RouterProcess, cluster: netns.Cluster
) -> None:
    node = cluster.create_single("node1", 100, "eth0", "10.214.0.1/24")
    write_conf(node, ("VI_1", "VI_2"))
    router_config(kenv, node)
    router.start()
    cluster.start(node)
    wait_for(lambda: states(kenv) == {"VI_1": "MASTER", "VI_2": "MASTER"}, 30,
             what="both instances MASTER")
    start = ['INSTANCE "VI_1" BACKUP 100', 'INSTANCE "VI_2" BACKUP 100']
    assert fifo_lines(kenv)[:2] == start
    assert sorted(fifo_lines(kenv)[2:]) == ['INSTANCE "VI_1" MASTER 100',
                                             'INSTANCE "VI_2" MASTER 100']
    # Reload with the same config: EOF, a new FIFO, nothing re-announced.
    assert node.proc is not None
    done = resyncs(router)
    node.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: resyncs(router) > done, 20, what="a resync after the FIFO reopened")
    assert len(fifo_lines(kenv)) == 4
    # Reload without VI_2: DELETED (notify_deleted is set).
    write_conf(node, ("VI_1",))
    node.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: len(fifo_lines(kenv)) == 5, 20, what="the DELETED line")
    assert fifo_lines(kenv)[4] == 'INSTANCE "VI_2" DELETED 100'
    # Restart: STOP, EOF, then a new keepalived and a new FIFO.
    cluster.stop(node)
    wait_for(lambda: len(fifo_lines(kenv)) == 6, 20, what="the STOP line")
    assert fifo_lines(kenv)[5] == 'INSTANCE "VI_1" STOP 100'
    cluster.start(node)
    wait_for(lambda: states(kenv).get("VI_1") == "MASTER" and len(fifo_lines(kenv)) == 8, 30,
             what="start-up and MASTER after the restart")
    assert fifo_lines(kenv)[6:] == ['INSTANCE "VI_1" BACKUP 100', 'INSTANCE "VI_1" MASTER 100']
    # Every resync of an unchanged state was a repeat: no action fired for it.
    for ev in kenv.history():
        if ev["source"] == "resync":
            assert ev["class"] in ("repeat", "transition")
    transitions = [(e["name"], e["prev_state"], e["state"]) for e in reversed(kenv.history())
                   if e["class"] == "transition"]
    assert transitions[:2] == [("VI_1", "INIT", "BACKUP"), ("VI_2", "INIT", "BACKUP")]
    assert sorted(transitions[2:4]) == [("VI_1", "BACKUP", "MASTER"), ("VI_2", "BACKUP", "MASTER")]
    assert transitions[4:] == [("VI_2", "MASTER", "DELETED"), ("VI_1", "MASTER", "STOP"),
                               ("VI_1", "STOP", "BACKUP"), ("VI_1", "BACKUP", "MASTER")]


def test_state_lost_with_an_unread_fifo_is_relearned(
    kenv: KEnv, router: RouterProcess, cluster: netns.Cluster
) -> None:
    node = cluster.create_single("node1", 100, "eth0", "10.214.0.1/24")
    write_conf(node, ("VI_1",))
    router_config(kenv, node)
    router.start()
    cluster.start(node)
    wait_for(lambda: states(kenv) == {"VI_1": "MASTER"}, 30, what="VI_1 MASTER")
    router.stop()
    # While no one reads: the link goes down (FAULT is written into the FIFO)...
    netns.ip("-n", node.ns, "link", "set", node.ifname, "down")
    time.sleep(2)
    # ...and a reload throws that FIFO away; keepalived re-announces nothing.
    assert node.proc is not None
    node.proc.send_signal(signal.SIGHUP)
    time.sleep(2)
    router.start()
    wait_for(lambda: states(kenv) == {"VI_1": "FAULT"}, 20,
             what="the FAULT to be re-learned from keepalived's state dump")
    [ev] = [e for e in kenv.history() if e["class"] == "transition" and e["state"] == "FAULT"]
    assert ev["source"] == "resync" and ev["prev_state"] == "MASTER"
    assert "VI_1" in [e["name"] for e in kenv.history() if e["source"] == "resync"]
