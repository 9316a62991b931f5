"""Three (or more) keepalived nodes on one bridge, and a hub namespace for the router.

Builds on :mod:`netns` (its Cluster starts, stops and tears down keepalived and
every namespace): :meth:`BridgedCluster.create_bridged` makes a *hub* namespace
holding a Linux bridge (address ``SUBNET.254``, where the router listens) and one
namespace per node, each joined to the bridge by a veth pair born inside the two
namespaces, so nothing is left in the host's own namespace. Processes run inside a
namespace through ``ip netns exec`` (:func:`popen_in`); :meth:`Cluster.destroy`
kills whatever is still in any of them.

:func:`cut_off` is the reference recipe's way of splitting a cluster: permanent
neighbour entries with a bogus MAC on one node for each peer, so its adverts go
nowhere while it still hears theirs.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import netns
from conftest import KEnv, RouterProcess
from netns import PREFIX, Cluster, Node, ip

BOGUS_MAC = "02:00:00:00:00:99"


class BridgedCluster(Cluster):
    hub_ns = ""
    hub_addr = ""

    def create_bridged(self, prios: dict[str, int], subnet: str = "10.214.0") -> dict[str, Node]:
        """Nodes ``{"node1": 100, ...}`` at SUBNET.1, .2, ... on a bridge in the hub (.254)."""
        hub = f"{PREFIX}{self.tag}h"
        ip("netns", "add", hub)
        self.namespaces.append(hub)
        self.hub_ns, self.hub_addr = hub, f"{subnet}.254"
        ip("-n", hub, "link", "add", "br0", "type", "bridge")
        ip("-n", hub, "addr", "add", f"{self.hub_addr}/24", "dev", "br0")
        for link in ("lo", "br0"):
            ip("-n", hub, "link", "set", link, "up")
        addrs = {name: f"{subnet}.{i}" for i, name in enumerate(prios, 1)}
        for i, (name, prio) in enumerate(prios.items(), 1):
            ns, ifname, port = f"{PREFIX}{self.tag}n{i}", f"{PREFIX}{self.tag}{i}", f"hp{i}"
            ip("netns", "add", ns)
            self.namespaces.append(ns)
            ip("link", "add", ifname, "netns", ns, "type", "veth", "peer", "name", port,
               "netns", hub)
            ip("-n", hub, "link", "set", port, "master", "br0")
            ip("-n", hub, "link", "set", port, "up")
            ip("-n", ns, "addr", "add", f"{addrs[name]}/24", "dev", ifname)
            ip("-n", ns, "link", "set", "lo", "up")
            ip("-n", ns, "link", "set", ifname, "up")
            peers = [a for n, a in addrs.items() if n != name]
            node = Node(name, ns, ifname, addrs[name], peers[0], prio, self.workdir,
                        extra={"peers": peers})
            self.nodes[name] = node
        for node in self.nodes.values():
            self.wait_link_up(node.ns, node.ifname)
        return self.nodes


def peers(node: Node) -> list[str]:
    found = node.extra["peers"]
    assert isinstance(found, list)
    return [str(a) for a in found]


def cut_off(node: Node) -> None:
    """``node`` no longer reaches its peers (its adverts go to a bogus MAC); they reach it."""
    for addr in peers(node):
        ip("-n", node.ns, "neigh", "replace", addr, "lladdr", BOGUS_MAC, "dev", node.ifname,
           "nud", "permanent")


def reconnect(node: Node) -> None:
    for addr in peers(node):
        ip("-n", node.ns, "neigh", "del", addr, "dev", node.ifname, check=False)


def popen_in(ns: str, argv: Sequence[str], log: Path, env: dict[str, str]
             ) -> subprocess.Popen[bytes]:
    """A process inside a namespace (``ip netns exec`` execs it: the pid is the program's)."""
    out = open(log, "ab")  # noqa: SIM115 - closed right after the fork
    try:
        return subprocess.Popen(["ip", "netns", "exec", ns, *argv], env=env,
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    finally:
        out.close()


def knotify_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "knotify.cli", *args]


def install_hook(bindir: Path, root: Path) -> Path:
    """hooks/knotify-notify pointed at this interpreter, installed as keepalived wants."""
    netns.secure_dir(bindir)
    text = (root / "hooks" / "knotify-notify").read_text()
    venv = "/opt/knotify/venv/bin/python"
    assert venv in text, f"hooks/knotify-notify no longer execs {venv}"
    return netns.install_script(bindir / "knotify-notify", text.replace(venv, sys.executable))


def keepalived_conf(node: Node, hook: Path, cfg: Path, vrid: int = 81,
                    vip: str = "10.214.0.100/24") -> str:
    """One instance VI_1 with unicast peers; the generic notify and rx-lower-pri hooks."""
    run = f"{hook} -c {cfg}"
    return "\n".join([
        "global_defs {", f"    router_id {node.name}", "    script_user root",
        "    enable_script_security", "}", "",
        "vrrp_instance VI_1 {", "    state BACKUP", f"    interface {node.ifname}",
        f"    virtual_router_id {vrid}", f"    priority {node.prio}", "    advert_int 1",
        f"    unicast_src_ip {node.addr}", "    unicast_peer {",
        *(f"        {a}" for a in peers(node)), "    }",
        "    virtual_ipaddress {", f"        {vip}", "    }",
        f'    notify "{run}"',
        f'    notify_master_rx_lower_pri "{run} rx-lower-pri VI_1"',
        "}", ""])


class NamespaceRouter(RouterProcess):
    """``knotify run`` inside network namespace ``ns`` (its ipc sockets still reach the CLI)."""

    def __init__(self, kenv: KEnv, ns: str, ready_timeout: float = 20.0) -> None:
        super().__init__(kenv)
        self.ns = ns
        self.ready_timeout = ready_timeout

    def start(self, wait: bool = True, extra: list[str] | None = None) -> NamespaceRouter:
        self._offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        self.proc = popen_in(self.ns, knotify_argv("run", "--log-format", "json", "--log-level",
                                                   "debug", *(extra or [])),
                             self.log_path, self.kenv.env)
        if wait:
            self.wait_ready(self.ready_timeout)
        return self
