"""Real keepalived nodes in network namespaces, for the end-to-end tests.

A :class:`Cluster` makes one network namespace per node, joined by one veth pair
(created straight into the namespaces, so nothing is ever left in the host's own
namespace), runs ``keepalived -n -l -D --vrrp`` in each through ``ip netns exec``
and keeps its console log. :meth:`Cluster.destroy` removes every namespace and
every process it made, whatever state the test left them in: keepalived first
(SIGTERM, so it runs its STOP hooks), then everything still inside a namespace
by pid (``ip netns pids``), SIGTERM then SIGKILL, then the namespaces.

Names start with ``kne`` and carry a short random tag, so parallel runs and
other people's namespaces are never touched. Hook scripts must pass keepalived's
``enable_script_security``: :func:`secure_dir` and :func:`install_script` make
root-owned 0755 folders and files.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

PREFIX = "kne"
#: A clean environment for keepalived, like systemd gives it: hooks must not rely on ours.
KEEPALIVED_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                  "LANG": "C.UTF-8"}
#: keepalived log lines saying a script was refused or will not run as configured.
SCRIPT_PROBLEM = re.compile(
    r"disabling|SECURITY|Unsafe permissions|Invalid user|cannot be accessed|"
    r"Cannot find script|could not find script|not executable|Error exec", re.IGNORECASE)


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and proc.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed ({proc.returncode}): "
                           f"{proc.stderr.strip()}")
    return proc


def usable() -> tuple[bool, str]:
    """Whether this machine can run the cluster, and if not, why (for a skip reason)."""
    if os.geteuid() != 0:
        return False, "needs root (network namespaces, keepalived)"
    for program in ("keepalived", "ip"):
        if shutil.which(program) is None:
            return False, f"{program} is not installed (Debian: apt-get install keepalived " \
                          "iproute2)"
    probe = f"{PREFIX}probe{secrets.token_hex(3)}"
    try:
        made = ip("netns", "add", probe, check=False)
        if made.returncode != 0:
            return False, f"`ip netns add` does not work here: {made.stderr.strip()}"
        ran = subprocess.run(["ip", "netns", "exec", probe, "true"], capture_output=True,
                             text=True, timeout=30)
        if ran.returncode != 0:
            return False, f"`ip netns exec` does not work here: {ran.stderr.strip()}"
    finally:
        ip("netns", "del", probe, check=False)
    return True, ""


def secure_dir(path: Path) -> Path:
    """A folder keepalived's script security accepts: root-owned, 0755."""
    path.mkdir(parents=True, exist_ok=True)
    os.chown(path, 0, 0)
    path.chmod(0o755)
    return path


def install_script(path: Path, text: str) -> Path:
    """A root-owned 0755 script (the folder must come from :func:`secure_dir`)."""
    path.write_text(text)
    os.chown(path, 0, 0)
    path.chmod(0o755)
    return path


def netns_pids(ns: str) -> list[int]:
    proc = ip("netns", "pids", ns, check=False)
    return [int(w) for w in proc.stdout.split() if w.isdigit()]


def cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [w.decode(errors="replace") for w in raw.split(b"\0") if w]


def _signal(pids: Iterable[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


@dataclass
class Node:
    """One keepalived host: its namespace, its end of the veth, its files."""

    name: str
    ns: str
    ifname: str
    addr: str
    peer: str
    prio: int
    workdir: Path
    proc: subprocess.Popen[bytes] | None = None
    stopped: bool = False
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def keepalived_conf(self) -> Path:
        return self.workdir / f"{self.name}.keepalived.conf"

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}.keepalived.log"

    @property
    def tmpdir(self) -> Path:
        """The node's own TMPDIR: keepalived writes its dumps (keepalived.json) there."""
        return self.workdir / f"{self.name}.tmp"

    @property
    def fifo(self) -> Path:
        return self.workdir / f"{self.name}.vrrp.fifo"

    def pidfile(self, what: str) -> Path:
        return self.workdir / f"{self.name}.{what}.pid"

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def script_problems(self) -> list[str]:
        return [f"{self.name}: {line}" for line in self.log_text().splitlines()
                if SCRIPT_PROBLEM.search(line)]

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def pids(self) -> list[int]:
        """Every process in this node's namespace (keepalived, its hooks, its FIFO reader)."""
        return netns_pids(self.ns)


class Cluster:
    """Two (or more) keepalived nodes on one veth link, in their own namespaces."""

    def __init__(self, workdir: Path, tag: str | None = None) -> None:
        self.tag = tag or secrets.token_hex(3)
        self.workdir = secure_dir(workdir)
        self.nodes: dict[str, Node] = {}
        self.namespaces: list[str] = []

    def create(self, prios: dict[str, int], subnet: str = "10.213.0") -> dict[str, Node]:
        """Two nodes, e.g. ``{"node1": 100, "node2": 50}``, joined by one veth pair."""
        assert len(prios) == 2, "one veth pair joins exactly two nodes"
        (n1, p1), (n2, p2) = prios.items()
        ns1, ns2 = f"{PREFIX}{self.tag}n1", f"{PREFIX}{self.tag}n2"
        if1, if2 = f"{PREFIX}{self.tag}a", f"{PREFIX}{self.tag}b"
        for ns in (ns1, ns2):
            ip("netns", "add", ns)
            self.namespaces.append(ns)
        # Both ends are born inside their namespaces: nothing to leak in the host's.
        ip("link", "add", if1, "netns", ns1, "type", "veth", "peer", "name", if2, "netns", ns2)
        a1, a2 = f"{subnet}.1", f"{subnet}.2"
        for ns, ifname, addr in ((ns1, if1, a1), (ns2, if2, a2)):
            ip("-n", ns, "addr", "add", f"{addr}/24", "dev", ifname)
            ip("-n", ns, "link", "set", "lo", "up")
            ip("-n", ns, "link", "set", ifname, "up")
        # The kernel reports carrier (IFF_RUNNING) a moment after "link set up"; keepalived
        # started before that puts its instances in FAULT (then BACKUP once it sees the
        # link come up). Wait, so that start-up is always INIT -> BACKUP.
        for ns, ifname in ((ns1, if1), (ns2, if2)):
            self.wait_link_up(ns, ifname)
        self.nodes[n1] = Node(n1, ns1, if1, a1, a2, p1, self.workdir)
        self.nodes[n2] = Node(n2, ns2, if2, a2, a1, p2, self.workdir)
        return self.nodes

    def create_single(self, name: str, prio: int, ifname: str, addr: str) -> Node:
        """One node whose interface has a fixed name (e.g. ``eth0`` of an example config).

        Both ends of its veth stay inside its namespace, so the name cannot clash with
        the host's own interface.
        """
        ns = f"{PREFIX}{self.tag}n1"
        peer = f"{PREFIX}{self.tag}p"
        ip("netns", "add", ns)
        self.namespaces.append(ns)
        ip("-n", ns, "link", "add", ifname, "type", "veth", "peer", "name", peer)
        ip("-n", ns, "addr", "add", addr, "dev", ifname)
        for link in ("lo", ifname, peer):
            ip("-n", ns, "link", "set", link, "up")
        self.wait_link_up(ns, ifname)
        node = Node(name, ns, ifname, addr.split("/")[0], "", prio, self.workdir)
        self.nodes[name] = node
        return node

    @staticmethod
    def wait_link_up(ns: str, ifname: str, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while True:
            info = json.loads(ip("-n", ns, "-j", "link", "show", "dev", ifname).stdout)
            if info and info[0].get("operstate") == "UP" and "LOWER_UP" in info[0].get(
                    "flags", []):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{ifname} in {ns} is not up after {timeout}s: {info}")
            time.sleep(0.05)

    def start(self, node: Node, env: dict[str, str] | None = None) -> None:
        """keepalived in the foreground (-n), VRRP only, logging to the console (captured).

        ``env`` adds to keepalived's clean environment (as systemd's ``Environment=``);
        keepalived hands its environment to every script. Each node gets its own TMPDIR,
        as each machine has its own /tmp: keepalived writes its state dumps there
        (``$TMPDIR/keepalived.json``), and two nodes must not share one.
        """
        secure_dir(node.tmpdir)
        assert not node.running, f"{node.name} already runs"
        log = open(node.log_path, "ab")  # noqa: SIM115 - closed right after the fork
        try:
            node.proc = subprocess.Popen(
                ["ip", "netns", "exec", node.ns, "keepalived", "-n", "-l", "-D", "--vrrp",
                 "-f", str(node.keepalived_conf),
                 "-p", str(node.pidfile("main")), "-r", str(node.pidfile("vrrp")),
                 "-c", str(node.pidfile("checker")), "-b", str(node.pidfile("bfd"))],
                env={**KEEPALIVED_ENV, "TMPDIR": str(node.tmpdir), **(env or {})},
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd="/",
            )
        finally:
            log.close()
        node.stopped = False

    def stop(self, node: Node, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        """Signal keepalived (``ip netns exec`` execs it: the Popen pid is keepalived's)."""
        assert node.proc is not None
        node.stopped = True
        if node.proc.poll() is None:
            node.proc.send_signal(sig)
        return node.proc.wait(timeout)

    def script_problems(self) -> list[str]:
        return [p for node in self.nodes.values() for p in node.script_problems()]

    def check_scripts(self) -> None:
        """Fail with keepalived's own words if it refused or disabled any script."""
        problems = self.script_problems()
        if problems:
            raise AssertionError("keepalived refused scripts (hooks would be lost):\n"
                                 + "\n".join(problems))

    def check_running(self) -> None:
        for node in self.nodes.values():
            if node.proc is not None and not node.stopped and node.proc.poll() is not None:
                raise AssertionError(f"keepalived on {node.name} exited "
                                     f"{node.proc.returncode}:\n{node.log_text()[-4000:]}")

    def logs(self) -> str:
        return "\n".join(f"===== {n.name} ({n.ns}) keepalived log\n{n.log_text()}"
                         for n in self.nodes.values())

    def destroy(self) -> list[str]:
        """Remove everything this cluster made; returns what had to be forced (for a report)."""
        forced: list[str] = []
        for node in self.nodes.values():
            if node.running:
                assert node.proc is not None
                node.proc.send_signal(signal.SIGTERM)
        for node in self.nodes.values():
            if node.proc is None:
                continue
            try:
                node.proc.wait(10)
            except subprocess.TimeoutExpired:
                forced.append(f"{node.name}: keepalived ignored SIGTERM")
                node.proc.kill()
                node.proc.wait(10)
        for sig, grace in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 5.0)):
            left = {ns: netns_pids(ns) for ns in self.namespaces}
            left = {ns: pids for ns, pids in left.items() if pids}
            if not left:
                break
            if sig == signal.SIGKILL:
                forced.append(f"SIGKILL to {left}")
            for pids in left.values():
                _signal(pids, sig)
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline and any(netns_pids(ns) for ns in left):
                time.sleep(0.05)
        for ns in self.namespaces:
            proc = ip("netns", "del", ns, check=False)
            if proc.returncode != 0 and ns in ip("netns", "list").stdout.split():
                forced.append(f"could not delete netns {ns}: {proc.stderr.strip()}")
        self.namespaces = [ns for ns in self.namespaces
                           if ns in ip("netns", "list").stdout.split()]
        return forced
