"""End to end: three real keepalived hosts report to one router over TCP with CURVE.

node1 (priority 100), node2 (50) and node3 (30) run keepalived 2.2.7 in their own
network namespaces on one bridge; the router runs in the hub namespace on the same
bridge and listens on TCP with CURVE. Each node's hooks (the generic ``notify`` and
``notify_master_rx_lower_pri``) and its ``knotify agent`` (heartbeats) send there
with the node's own key pair.

The scenario, each step waiting for the router's verdict:

1. node1 MASTER, node2 and node3 BACKUP: no cluster event.
2. node1 is cut off from its peers (bogus permanent neighbour entries, as in the
   reference recipe): node2 takes over while node1 stays MASTER -> SPLIT_BRAIN;
   the neighbours are restored -> SPLIT_BRAIN_RESOLVED.
3. node3's agent stops -> PEER_SILENT node3; it starts again -> PEER_BACK.
4. every keepalived stops -> NO_MASTER; node1 starts again -> MASTER_BACK.

A rule pages (an exec action) on every CLUSTER and PEER event: it must run once for
each, in order.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import netns
import netns_cluster
import pytest
from conftest import ROOT, KEnv, need, wait_for

pytestmark = [pytest.mark.keepalived, pytest.mark.slow, pytest.mark.timeout(300)]

PORT = 5599
PRIOS = {"node1": 100, "node2": 50, "node3": 30}


@pytest.fixture
def hub(kenv: KEnv) -> Iterator[netns_cluster.BridgedCluster]:
    ok, reason = netns.usable()
    need(ok, reason)
    made = netns_cluster.BridgedCluster(kenv.root / "ka")
    try:
        yield made
    finally:
        forced = made.destroy()
        assert not made.namespaces, \
            f"network namespaces left behind: {made.namespaces} ({forced})"


class Setup:
    def __init__(self, kenv: KEnv, hub: netns_cluster.BridgedCluster) -> None:
        self.kenv = kenv
        self.hub = hub
        self.work = hub.workdir
        self.nodes = hub.create_bridged(PRIOS)
        keys, clients = self.work / "keys", self.work / "clients"
        clients.mkdir()
        for name in ("router", *PRIOS):
            kenv.cli("keygen", name, "--dir", str(keys))
        for name in PRIOS:
            (clients / f"{name}.key").write_bytes((keys / f"{name}.key").read_bytes())
        self.pages = self.work / "pages.log"
        kenv.write_config(f"""
[router]
listen = ["tcp://{hub.hub_addr}:{PORT}"]
[router.curve]
secret_key = "{keys}/router.key_secret"
clients = "{clients}"

[cluster]
split_brain_grace = "3s"
no_master_grace = "3s"
silent_after = "4s"

[[rule]]
id = "log-all"
on = "every"
[[rule.action]]
type = "log"

[[rule]]
id = "page"
kind = ["CLUSTER", "PEER"]
[[rule.action]]
type = "exec"
argv = ["/bin/sh", "-c", 'echo "$1 $2 $3" >> {self.pages}', "page", "{{kind}}", "{{name}}",
        "{{state}}"]
""")
        self.hook = netns_cluster.install_hook(self.work / "bin", ROOT)
        self.configs: dict[str, Path] = {}
        for name, node in self.nodes.items():
            cfg = self.work / f"{name}.toml"
            cfg.write_text(f"""
[paths]
runtime_dir = "{self.work}/{name}-run"
state_dir = "{self.work}/{name}-state"
[hook]
host = "{name}"
endpoints = ["tcp://{hub.hub_addr}:{PORT}"]
[hook.curve]
server_key = "{keys}/router.key"
secret_key = "{keys}/{name}.key_secret"
[agent]
heartbeat = "500ms"
timeout = "1s"
""")
            cfg.chmod(0o644)
            self.configs[name] = cfg
            node.keepalived_conf.write_text(
                netns_cluster.keepalived_conf(node, self.hook, cfg))
        self.router = netns_cluster.NamespaceRouter(kenv, hub.hub_ns)
        self.agents: dict[str, subprocess.Popen[bytes]] = {}

    def start_agent(self, name: str) -> None:
        self.agents[name] = netns_cluster.popen_in(
            self.nodes[name].ns, netns_cluster.knotify_argv(
                "agent", "-c", str(self.configs[name]), "--log-format", "json"),
            self.work / f"{name}.agent.log", self.kenv.env)

    def stop_agent(self, name: str) -> None:
        proc = self.agents.pop(name)
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)

    def status(self) -> dict[str, Any]:
        return dict(json.loads(self.kenv.cli("status", "--json").stdout))

    def states(self) -> dict[str, str]:
        return {s["host"]: s["state"] for s in self.status()["states"]
                if (s["kind"], s["name"]) == ("INSTANCE", "VI_1")}

    def synthetic(self) -> list[tuple[str, str, str]]:
        return [(e["kind"], e["name"], e["reported"]) for e in reversed(self.kenv.history())
                if e["kind"] in ("CLUSTER", "PEER")]

    def wait_states(self, want: dict[str, str], timeout: float, what: str) -> None:
        def reached() -> bool:
            self.hub.check_scripts()
            self.hub.check_running()
            now = self.states()
            return all(now.get(h) == s for h, s in want.items())

        try:
            wait_for(reached, timeout, interval=0.25, what=what)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; router status: {self.states()}") from None

    def wait_event(self, event: tuple[str, str, str], timeout: float) -> dict[str, Any]:
        wait_for(lambda: event in self.synthetic(), timeout, interval=0.25,
                 what=" ".join(event))
        return next(e for e in self.kenv.history() if (e["kind"], e["name"], e["reported"])
                    == event)

    def cleanup(self) -> None:
        for name in list(self.agents):
            self.stop_agent(name)
        if self.router.alive:
            self.router.stop()


def test_three_hosts_split_brain_silent_peer_no_master(kenv: KEnv,
                                                       hub: netns_cluster.BridgedCluster) -> None:
    started = time.monotonic()
    setup = Setup(kenv, hub)

    def mark(what: str) -> None:
        print(f"{time.monotonic() - started:6.2f}s {what}")

    try:
        _scenario(setup, mark)
    except BaseException:
        print(hub.logs())
        print("===== router log (tail)\n" + setup.router.log_text()[-30000:])
        for name in PRIOS:
            log = setup.work / f"{name}.agent.log"
            print(f"===== {name} agent log\n" + (log.read_text()[-3000:] if log.exists()
                                                    else "(none)"))
        raise
    finally:
        setup.cleanup()


def _scenario(s: Setup, mark: Any) -> None:
    kenv, hub, nodes = s.kenv, s.hub, s.nodes
    s.router.start()
    for name in PRIOS:
        s.start_agent(name)

    def watched() -> bool:
        peers = {p["host"]: p for p in s.status()["cluster"]["peers"]}
        return all(peers.get(n, {}).get("via") == "heartbeat" for n in PRIOS)

    wait_for(watched, 30, interval=0.25, what="every agent's heartbeat")
    mark("agents heartbeating over TCP+CURVE")
    # node1 alone first, so it is surely the one elected; then the others join as BACKUP.
    hub.start(nodes["node1"])
    s.wait_states({"node1": "MASTER"}, 30, "node1 MASTER")
    hub.start(nodes["node2"])
    hub.start(nodes["node3"])
    s.wait_states({"node1": "MASTER", "node2": "BACKUP", "node3": "BACKUP"}, 30,
                  "node2 and node3 BACKUP")
    hub.check_scripts()
    mark("node1 MASTER, node2 and node3 BACKUP")
    assert s.synthetic() == []
    assert {e["source"] for e in kenv.history()} == {"hook"}  # over TCP, from each node

    # -- split brain ------------------------------------------------------------------------
    netns_cluster.cut_off(nodes["node1"])
    mark("node1 cut off from its peers")
    s.wait_states({"node1": "MASTER", "node2": "MASTER"}, 30, "node2 MASTER too")
    split = s.wait_event(("CLUSTER", "VI_1", "SPLIT_BRAIN"), 30)
    mark(f"SPLIT_BRAIN: {split['extra']['detail']}")
    assert {"node1", "node2"} <= set(split["extra"]["masters"])
    [group] = s.status()["cluster"]["groups"]
    assert group["condition"] == "SPLIT_BRAIN" and {"node1", "node2"} <= set(group["masters"])
    text = kenv.cli("status", "--cluster").stdout
    assert "SPLIT_BRAIN" in text, text
    # node1 hears node2's lower-priority adverts: keepalived says so (rx-lower-pri hook)
    wait_for(lambda: any(e["host"] == "node1" and e["reported"] == "MASTER_RX_LOWER_PRI"
                         for e in kenv.history(host="node1")), 30,
             what="MASTER_RX_LOWER_PRI from node1")
    netns_cluster.reconnect(nodes["node1"])
    mark("node1 reconnected")
    s.wait_states({"node1": "MASTER", "node2": "BACKUP", "node3": "BACKUP"}, 30,
                  "node2 back to BACKUP")
    resolved = s.wait_event(("CLUSTER", "VI_1", "SPLIT_BRAIN_RESOLVED"), 30)
    mark(f"SPLIT_BRAIN_RESOLVED: {resolved['extra']['detail']}")
    assert resolved["extra"]["masters"] == ["node1"]

    # -- a silent peer -------------------------------------------------------------------------
    s.stop_agent("node3")
    mark("node3's agent stopped")
    silent = s.wait_event(("PEER", "node3", "PEER_SILENT"), 30)
    mark(f"PEER_SILENT: {silent['extra']['detail']}")
    s.start_agent("node3")
    s.wait_event(("PEER", "node3", "PEER_BACK"), 30)
    mark("PEER_BACK node3")

    # -- no master -------------------------------------------------------------------------------
    for node in nodes.values():
        assert node.proc is not None
        node.stopped = True
        node.proc.send_signal(signal.SIGTERM)
    for name, node in nodes.items():
        assert node.proc is not None
        assert node.proc.wait(30) == 0, f"{name}: {node.log_text()[-3000:]}"
    s.wait_states({n: "STOP" for n in PRIOS}, 30, "every node STOP")
    mark("every keepalived stopped")
    no_master = s.wait_event(("CLUSTER", "VI_1", "NO_MASTER"), 30)
    mark(f"NO_MASTER: {no_master['extra']['detail']}")
    hub.start(nodes["node1"])
    s.wait_event(("CLUSTER", "VI_1", "MASTER_BACK"), 30)
    mark("MASTER_BACK")
    hub.check_scripts()

    # -- routed like any event: the page action ran once for each, in order ------------------
    expected = [("CLUSTER", "VI_1", "SPLIT_BRAIN"), ("CLUSTER", "VI_1", "SPLIT_BRAIN_RESOLVED"),
                ("PEER", "node3", "PEER_SILENT"), ("PEER", "node3", "PEER_BACK"),
                ("CLUSTER", "VI_1", "NO_MASTER"), ("CLUSTER", "VI_1", "MASTER_BACK")]
    assert s.synthetic() == expected
    lines = wait_for(lambda: s.pages.exists() and len(s.pages.read_text().splitlines())
                     == len(expected) and s.pages.read_text().splitlines(), 30,
                     what="one page per cluster event")
    assert [tuple(ln.split()) for ln in lines] == expected
    events = kenv.history()
    assert not [e for e in events if e["class"] in ("invalid", "stale")]
    assert {e["host"] for e in events if e["kind"] == "INSTANCE"} == set(PRIOS)
