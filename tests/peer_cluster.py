"""Two load-balancer nodes with a knotify router on each: the site of issue 11.

lb1 (priority 100) and lb2 (50) run keepalived 2.2.7 in network namespaces on one
bridge (:class:`netns_cluster.BridgedCluster`); each node's namespace also runs
``knotify run``, listening with CURVE on the node's own address (port 5599). The
routers share one key pair (``router.key``), as the hooks have one ``server_key``;
each node's hooks and its ``knotify agent`` send to **both** routers (``[hook]
endpoints`` lists both). The receivers, a webhook HTTP server and aiosmtpd, run in
this process but listen in the hub namespace on the bridge address (their sockets
are made by a thread that joined that namespace), so both routers' sender workers
reach them.

keepalived's instance VI_1 tracks two file-driven checks per node: ``prio`` (weight
-60: failing it drops lb1 from 100 to 40, below lb2, so a failover needs nothing
restarted) and ``fault`` (weight 0: failing it puts the node in FAULT).

The cuts, all inside lb1's namespace with nftables (nothing in the host's):
:meth:`PeerSite.cut_routers` drops TCP to and from the other node's router port, so
the routers cannot reach each other (nor the other node's hooks) while VRRP goes on;
:meth:`PeerSite.cut_vrrp` drops VRRP adverts only, so both nodes become MASTER
(a split brain) while the routers still talk.

Used by tests/test_peers_keepalived.py and bench/page_topology.py.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import subprocess
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import netns
import netns_cluster
from alert_servers import HttpSink, SmtpSink
from conftest import ROOT, KEnv, wait_for
from netns import Node

PORT = 5599
PRIOS = {"lb1": 100, "lb2": 50}
INSTANCE = "VI_1"
#: Longer than a delivery takes on a loaded machine: the router that goes second must
#: find the first one's message in the log when its turn comes, or both send.
PEER_TIMEOUT = "5s"
CLONE_NEWNET = 0x40000000
NFT_TABLE = "knotify_test"
#: The environment of the processes the site starts in the namespaces (no KNOTIFY_*).
CLEAN_ENV = {k: v for k, v in os.environ.items() if not k.startswith("KNOTIFY_")}

T = TypeVar("T")


def usable() -> tuple[bool, str]:
    """Whether this machine can run the site, and if not why (for ``conftest.need``)."""
    ok, reason = netns.usable()
    if not ok:
        return ok, reason
    if shutil.which("nft") is None:
        return False, "nft is not installed (Debian: apt-get install nftables)"
    return True, ""


def in_netns(ns: str, fn: Callable[[], T]) -> T:
    """``fn()`` run by a thread that joined network namespace ``ns``.

    setns(2) moves only the calling thread, and threads it starts inherit its
    namespace: a server started here listens (and serves) inside ``ns``, while the
    test's own threads stay where they are.
    """
    result: list[T] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
            try:
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns into {ns}: {os.strerror(err)}")
            finally:
                os.close(fd)
            result.append(fn())
        except BaseException as exc:  # handed to the caller
            failure.append(exc)

    thread = threading.Thread(target=run, name=f"in-{ns}")
    thread.start()
    thread.join(60)
    if failure:
        raise failure[0]
    assert result, f"nothing came back from the thread in {ns}"
    return result[0]


def keepalived_conf(node: Node, hook: Path, check: Path, cfg: Path, vip: str,
                    extra_notify: Iterable[str] = ()) -> str:
    """VI_1 with unicast peers, the generic notify hook and the two file-driven checks."""
    run = f"{hook} -c {cfg}"
    return "\n".join([
        "global_defs {", f"    router_id {node.name}", "    script_user root",
        "    enable_script_security", "}", "",
        "vrrp_script chk_prio {", f'    script "{check} {node.name}.prio"', "    interval 1",
        "    weight -60", "    fall 1", "    rise 1", "}", "",
        "vrrp_script chk_fault {", f'    script "{check} {node.name}.fault"',
        "    interval 1", "    weight 0", "    fall 1", "    rise 1", "}", "",
        f"vrrp_instance {INSTANCE} {{", "    state BACKUP", f"    interface {node.ifname}",
        "    virtual_router_id 71", f"    priority {node.prio}", "    advert_int 1",
        f"    unicast_src_ip {node.addr}", "    unicast_peer {",
        *(f"        {a}" for a in netns_cluster.peers(node)), "    }",
        "    virtual_ipaddress {", f"        {vip}", "    }",
        "    track_script {", "        chk_prio", "        chk_fault", "    }",
        f'    notify "{run}"', *(f"    {line}" for line in extra_notify),
        "}", ""])


class PeerSite:
    """lb1 and lb2, a router on each, receivers in the hub. Make it with :meth:`create`."""

    def __init__(self, root: Path, cluster: netns_cluster.BridgedCluster,
                 subnet: str = "10.217.0") -> None:
        self.root = root
        self.cluster = cluster
        self.subnet = subnet
        self.work = cluster.workdir
        self.nodes: dict[str, Node] = {}
        self.kenvs: dict[str, KEnv] = {}
        self.routers: dict[str, netns_cluster.NamespaceRouter] = {}
        self.agents: dict[str, subprocess.Popen[bytes]] = {}
        self.node_configs: dict[str, Path] = {}
        self.chat: HttpSink | None = None
        self.mail: SmtpSink | None = None
        self.cuts: set[str] = set()

    # -- set-up ---------------------------------------------------------------------------

    def create(self, extra_notify: Callable[[Node], Iterable[str]] | None = None) -> PeerSite:
        """The namespaces, the receivers, the keys and every config. ``extra_notify(node)``
        adds lines to each node's VRRP instance (the receivers exist by then)."""
        self.nodes = self.cluster.create_bridged(PRIOS, subnet=self.subnet)
        hub = self.cluster.hub_ns
        self.chat = in_netns(hub, lambda: HttpSink(host=self.cluster.hub_addr).start())
        self.mail = in_netns(hub, lambda: SmtpSink(host=self.cluster.hub_addr).start())
        self.keys, self.clients = self.work / "keys", self.work / "clients"
        self.clients.mkdir()
        names = ("router", *PRIOS)
        for name in names:
            subprocess.run(netns_cluster.knotify_argv("keygen", name, "--dir", str(self.keys)),
                           check=True, capture_output=True, env=CLEAN_ENV, timeout=60)
        for name in names:
            (self.clients / f"{name}.key").write_bytes((self.keys / f"{name}.key").read_bytes())
        self.bin = netns.secure_dir(self.work / "bin")
        self.hook = netns_cluster.install_hook(self.bin, ROOT)
        self.checks = netns.secure_dir(self.work / "checks")
        self.check = netns.install_script(
            self.bin / "check", f'#!/bin/sh\nexit "$(cat {self.checks}/$1 2>/dev/null '
                                '|| echo 0)"\n')
        for name in PRIOS:
            self.set_check(name, "prio", True)
            self.set_check(name, "fault", True)
            (self.root / name).mkdir()
            self.kenvs[name] = KEnv(self.root / name)
            self.routers[name] = netns_cluster.NamespaceRouter(
                self.kenvs[name], self.nodes[name].ns, ready_timeout=40)
        self.write_node_configs()
        for node in self.nodes.values():
            node.keepalived_conf.write_text(keepalived_conf(
                node, self.hook, self.check, self.node_configs[node.name],
                f"{self.subnet}.100/24", extra_notify(node) if extra_notify else ()))
        return self

    def endpoint(self, name: str) -> str:
        return f"tcp://{self.nodes[name].addr}:{PORT}"

    def write_node_configs(self, routers: Iterable[str] = tuple(PRIOS),
                           ack_timeout: str | None = "2s",
                           heartbeat: str | None = "500ms") -> None:
        """Each node's hook and agent config: send to ``routers`` (both by default).

        The hook reads its config at every event: a new list takes effect at once.
        The tests' ``ack_timeout`` is generous, so that a hook on a loaded machine rarely
        misses an ack (it would spool the event for the agent to deliver a moment later),
        and their agents beat every 500 ms; None leaves knotify's default (250 ms, 5 s).
        """
        endpoints = [self.endpoint(r) for r in routers]
        for name in PRIOS:
            cfg = self.work / f"{name}.toml"
            cfg.write_text(f"""
[paths]
runtime_dir = "{self.work}/{name}-node-run"
state_dir = "{self.work}/{name}-node-state"
[hook]
host = "{name}"
endpoints = {json.dumps(endpoints)}
""" + (f'ack_timeout = "{ack_timeout}"\n' if ack_timeout else "") + f"""
[hook.curve]
server_key = "{self.keys}/router.key"
secret_key = "{self.keys}/{name}.key_secret"
[agent]
timeout = "1s"
""" + (f'heartbeat = "{heartbeat}"\n' if heartbeat else ""))
            cfg.chmod(0o644)
            self.node_configs[name] = cfg

    def router_config(self, name: str, body: str, peers: bool = True,
                      peer_timeout: str = PEER_TIMEOUT) -> str:
        """Router ``name``'s config: listen on its node's address with the shared key pair,
        then ``body`` (alerts, receivers, rules); with ``peers`` the ``[peers]`` table
        naming the other router."""
        others = [n for n in PRIOS if n != name]
        text = f"""
[hook]
host = "{name}"

[router]
listen = ["{self.endpoint(name)}"]

[router.curve]
secret_key = "{self.keys}/router.key_secret"
clients = "{self.clients}"
admins = ["router"]
"""
        text += body
        if peers:
            text += f"""
[peers]
name = "{name}"
peer_timeout = "{peer_timeout}"
order = {json.dumps(list(PRIOS))}
""" + "".join(f"""
[peers.routers.{other}]
endpoint = "{self.endpoint(other)}"
host = "{other}"
""" for other in others)
        return text

    def configure(self, body: str, peers: bool = True, peer_timeout: str = PEER_TIMEOUT) -> None:
        for name, kenv in self.kenvs.items():
            kenv.write_config(self.router_config(name, body, peers, peer_timeout))

    def start(self, routers: Iterable[str] = tuple(PRIOS), agents: bool = True) -> None:
        """The routers, the agents (which deliver what a hook spooled for a router), then
        keepalived on lb1 (MASTER on its own) and on lb2 (BACKUP)."""
        for name in routers:
            self.routers[name].start()
        if agents:
            for name in PRIOS:
                self.start_agent(name)
        self.cluster.start(self.nodes["lb1"])
        self.wait_vrrp({"lb1": "MASTER"}, "lb1 MASTER on its own", routers)
        self.cluster.start(self.nodes["lb2"])
        self.wait_vrrp({"lb1": "MASTER", "lb2": "BACKUP"}, "lb1 MASTER, lb2 BACKUP", routers)

    def start_agent(self, name: str) -> None:
        self.agents[name] = netns_cluster.popen_in(
            self.nodes[name].ns, netns_cluster.knotify_argv(
                "agent", "-c", str(self.node_configs[name]), "--log-format", "json"),
            self.work / f"{name}.agent.log", CLEAN_ENV)

    def stop_agent(self, name: str) -> None:
        proc = self.agents.pop(name)
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)

    # -- what keepalived does -------------------------------------------------------------

    def set_check(self, node: str, check: str, passing: bool) -> None:
        path = self.checks / f"{node}.{check}"
        path.write_text("0\n" if passing else "1\n")
        path.chmod(0o644)

    def fail_over(self, to: str) -> None:
        """Make ``to`` the MASTER: lb2 by failing lb1's ``prio`` check, lb1 by passing it."""
        self.set_check("lb1", "prio", to == "lb1")

    def wait_failover(self, to: str, routers: Iterable[str] | None = None,
                      timeout: float = 40) -> None:
        other = next(n for n in PRIOS if n != to)
        self.wait_vrrp({to: "MASTER", other: "BACKUP"}, f"{to} to take over", routers,
                       timeout)

    # -- the routers' views ---------------------------------------------------------------

    def states(self, router: str) -> dict[str, str]:
        return {s["host"]: s["state"] for s in self.kenvs[router].status()
                if (s["kind"], s["name"]) == ("INSTANCE", INSTANCE)}

    def wait_vrrp(self, want: dict[str, str], what: str, routers: Iterable[str] | None = None,
                  timeout: float = 40) -> None:
        names = [r for r in (routers if routers is not None else PRIOS)
                 if self.routers[r].alive]

        def reached() -> bool:
            self.cluster.check_scripts()
            self.cluster.check_running()
            return all(all(self.states(r).get(h) == s for h, s in want.items())
                       for r in names)

        try:
            wait_for(reached, timeout, interval=0.25, what=what)
        except AssertionError as exc:
            seen = {r: self.states(r) for r in names}
            raise AssertionError(f"{exc}; the routers see {seen}") from None

    def history(self, router: str, **filters: str) -> list[dict[str, Any]]:
        return self.kenvs[router].history(10_000, **filters)

    # -- cuts -----------------------------------------------------------------------------

    def _nft(self, *args: str) -> None:
        proc = subprocess.run(["ip", "netns", "exec", self.nodes["lb1"].ns, "nft", *args],
                              capture_output=True, text=True, timeout=30)
        if proc.returncode != 0:
            raise RuntimeError(f"nft {' '.join(args)}: {proc.stderr.strip()}")

    def _cut(self, what: str, rules: list[str]) -> None:
        assert what not in self.cuts, f"{what} is already cut"
        if not self.cuts:
            self._nft("add", "table", "inet", NFT_TABLE)
            for chain, hook in (("in", "input"), ("out", "output")):
                self._nft("add", "chain", "inet", NFT_TABLE, chain,
                          f"{{ type filter hook {hook} priority 0; }}")
        for rule in rules:
            chain, _, text = rule.partition(" ")
            self._nft("add", "rule", "inet", NFT_TABLE, chain, *text.split())
        self.cuts.add(what)

    def _mend(self, what: str) -> None:
        self.cuts.discard(what)
        self._nft("flush", "table", "inet", NFT_TABLE)
        self._nft("delete", "table", "inet", NFT_TABLE)
        remaining, self.cuts = set(self.cuts), set()
        for other in remaining:
            (self.cut_routers if other == "routers" else self.cut_vrrp)()

    def cut_routers(self) -> None:
        """lb1 and lb2 no longer reach each other's router port (either way); VRRP goes on.

        Each router then hears only its own node's hooks and agent (the other node's
        spool them for it)."""
        lb2 = self.nodes["lb2"].addr
        self._cut("routers", [f"in ip saddr {lb2} tcp dport {PORT} drop",
                              f"out ip daddr {lb2} tcp dport {PORT} drop"])

    def mend_routers(self) -> None:
        self._mend("routers")

    def cut_vrrp(self) -> None:
        """lb1 and lb2 no longer hear each other's adverts: both MASTER; routers still talk."""
        self._cut("vrrp", ["in ip protocol vrrp drop", "out ip protocol vrrp drop"])

    def mend_vrrp(self) -> None:
        self._mend("vrrp")

    # -- teardown -------------------------------------------------------------------------

    def logs(self) -> str:
        out = [self.cluster.logs()]
        for name, router in self.routers.items():
            out.append(f"===== router {name} log (tail)\n{router.log_text()[-20000:]}")
        for name in PRIOS:
            log = self.work / f"{name}.agent.log"
            if log.exists():
                out.append(f"===== {name} agent log (tail)\n{log.read_text()[-3000:]}")
        return "\n".join(out)

    def close(self) -> None:
        """Stop the agents and the routers (gracefully), then the receivers."""
        for name in list(self.agents):
            try:
                self.stop_agent(name)
            except subprocess.TimeoutExpired:
                pass
        for router in self.routers.values():
            if router.alive:
                try:
                    router.stop()
                except AssertionError:
                    pass
        for sink in (self.chat, self.mail):
            if sink is not None:
                sink.stop()

