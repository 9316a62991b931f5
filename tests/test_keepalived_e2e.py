"""End to end with real keepalived: a two-node VRRP cluster in network namespaces.

node1 (priority 100) and node2 (priority 50) run keepalived 2.2.7 in their own
network namespaces (tests/netns.py) and report to ONE router (the ``router``
fixture; its ipc socket is a path, so processes in other network namespaces reach
it). Each node has its own knotify config (the router's ``[paths]`` plus
``[hook] host``), passed with ``-c`` in keepalived's command strings, so events
carry node1/node2; each has its own TMPDIR, where keepalived writes its state dump.

The scenario: node1 becomes MASTER, node2 BACKUP; node1's keepalived is stopped
(SIGTERM); node2 takes over. It runs once per intake channel:

- ``hooks``: generic ``notify`` on the instances and the sync group, plus the
  specific ``notify_master``/``_backup``/``_stop`` hooks on VI_1 and the group
  (so every change of VI_1 arrives twice);
- ``fifo-script``: the same hooks *and* ``vrrp_notify_fifo`` read by
  ``knotify fifo`` as ``vrrp_notify_fifo_script`` (each change up to three times,
  plus a ``resync`` from keepalived's JSON dump after the FIFO opens);
- ``router-fifo``: no hooks; the router reads both nodes' FIFOs itself, each
  labelled with its host (with ``resync = true``).

What must hold: each host's events follow keepalived's order (BACKUP, MASTER,
STOP) in sequence order; node2's take-over and node1's STOP both come after the
SIGTERM, node1's MASTER before it (which of node1's STOP and node2's MASTER the
router hears first is not guaranteed: separate processes, separate hosts); the
``exec`` action for MASTER runs exactly once per MASTER transition however many
times keepalived reported it; the FIFO channels catch node1's STOP lines at
shutdown (keepalived SIGTERMs its FIFO script just before writing them).

Also here: the README's worked example (config/keepalived.conf) checked and run,
and test_late_hook_does_not_undo_a_newer_fifo_state: a hook keepalived forked before a
change but that runs late must not undo the FIFO's newer state (ordered by fork time).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import netns
import pytest
from conftest import ROOT, KEnv, RouterProcess, need, wait_for

pytestmark = [pytest.mark.keepalived, pytest.mark.slow, pytest.mark.timeout(120)]

VENV_PYTHON = "/opt/knotify/venv/bin/python"
PHASE = {"BACKUP": 0, "MASTER": 1, "STOP": 2}
INSTANCES = ("VI_1", "VI_2")
GROUP = "G1"
SUBJECTS = (("INSTANCE", "VI_1"), ("INSTANCE", "VI_2"), ("GROUP", GROUP))

VARIANTS = {
    "hooks": {"hooks": True, "fifo_script": False, "router_fifo": False},
    "fifo-script": {"hooks": True, "fifo_script": True, "router_fifo": False},
    "router-fifo": {"hooks": False, "fifo_script": False, "router_fifo": True},
}


def toml_str(text: str) -> str:
    """A TOML basic string (JSON's escaping is valid TOML for these values)."""
    return json.dumps(text)


def install_wrappers(bindir: Path) -> dict[str, Path]:
    """The repo's hook wrappers, pointed at this interpreter, installed as keepalived wants."""
    netns.secure_dir(bindir)
    out = {}
    for name in ("knotify-notify", "knotify-fifo"):
        text = (ROOT / "hooks" / name).read_text()
        assert VENV_PYTHON in text, f"hooks/{name} no longer execs {VENV_PYTHON}"
        assert text.startswith("#!/bin/sh\n")
        out[name] = netns.install_script(bindir / name, text.replace(VENV_PYTHON,
                                                                     sys.executable))
    return out


def node_config(kenv: KEnv, node: netns.Node) -> Path:
    """The node's own knotify config: the router's [paths], its own host name."""
    path = node.workdir / f"{node.name}.toml"
    path.write_text(f"[paths]\nruntime_dir = {toml_str(str(kenv.runtime))}\n"
                    f"state_dir = {toml_str(str(kenv.state))}\n\n"
                    f"[hook]\nhost = {toml_str(node.name)}\n")
    path.chmod(0o644)
    return path


def keepalived_conf(node: netns.Node, wrappers: dict[str, Path], cfg: Path, *, hooks: bool,
                    fifo_script: bool, fifo: bool) -> str:
    hook = f"{wrappers['knotify-notify']} -c {cfg}"
    out = ["global_defs {", f"    router_id {node.name}", "    script_user root",
           "    enable_script_security"]
    if fifo:
        out.append(f"    vrrp_notify_fifo {node.fifo}")
    if fifo_script:
        # keepalived appends the FIFO path: knotify fifo -c CFG PATH
        out.append(f'    vrrp_notify_fifo_script "{wrappers["knotify-fifo"]} -c {cfg}"')
    out += ["}", "", f"vrrp_sync_group {GROUP} {{", "    group {",
            *(f"        {i}" for i in INSTANCES), "    }"]
    if hooks:
        out += [f'    notify "{hook}"', f'    notify_master "{hook} group master {GROUP}"']
    out.append("}")
    for n, inst in enumerate(INSTANCES, 1):
        out += [
            "", f"vrrp_instance {inst} {{", "    state BACKUP", f"    interface {node.ifname}",
            f"    virtual_router_id {70 + n}", f"    priority {node.prio}", "    advert_int 1",
            f"    unicast_src_ip {node.addr}", "    unicast_peer {", f"        {node.peer}",
            "    }", "    virtual_ipaddress {", f"        10.213.0.{100 + n}/24", "    }",
        ]
        if hooks:
            out.append(f'    notify "{hook}"')
            if inst == "VI_1":
                out += [f'    notify_master "{hook} master {inst}"',
                        f'    notify_backup "{hook} backup {inst}"',
                        f'    notify_stop "{hook} stop {inst}"']
        out.append("}")
    return "\n".join(out) + "\n"


def router_config(masters_file: Path, fifos: list[netns.Node]) -> str:
    script = ('printf "%s %s %s %s\\n" "$KNOTIFY_HOST" "$KNOTIFY_NAME" "$KNOTIFY_ID" '
              f'"$KNOTIFY_PREV_STATE" >> {masters_file}')
    text = f"""
[[rule]]
id = "log-all"
on = "every"
[[rule.action]]
type = "log"

[[rule]]
id = "on-master"
kind = "INSTANCE"
state = "MASTER"
[[rule.action]]
type = "exec"
argv = ["/bin/sh", "-c", {toml_str(script)}]
timeout = "20s"
"""
    if fifos:
        items = ", ".join(
            f"{{path = {toml_str(str(n.fifo))}, host = {toml_str(n.name)}, resync = true, "
            f"pidfile = {toml_str(str(n.pidfile('main')))}, "
            f"json_file = {toml_str(str(n.tmpdir / 'keepalived.json'))}}}" for n in fifos)
        text += f"\n[router]\nfifos = [{items}]\n"
    return text


def states(kenv: KEnv) -> dict[tuple[str, str, str], str]:
    return {(s["host"], s["kind"], s["name"]): s["state"] for s in kenv.status()}


def wait_states(kenv: KEnv, cl: netns.Cluster, want: dict[tuple[str, str, str], str],
                timeout: float, what: str) -> None:
    def reached() -> bool:
        cl.check_scripts()
        cl.check_running()
        now = states(kenv)
        return all(now.get(k) == v for k, v in want.items())

    try:
        wait_for(reached, timeout, interval=0.2, what=what)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; router status: {states(kenv)}") from None


def in_flight(cl: netns.Cluster, wrappers: dict[str, Path]) -> list[str]:
    """Hook processes still running, and keepalived children forked but not yet exec'd."""
    busy = []
    for node in cl.nodes.values():
        keepalived = 0
        for pid in node.pids():
            argv = netns.cmdline(pid)
            text = " ".join(argv)
            if "knotify.hook" in text or str(wrappers["knotify-notify"]) in text:
                busy.append(f"{node.name} hook {pid}: {text[:200]}")
            elif argv and argv[0].endswith("keepalived"):
                keepalived += 1
        # a running node is its parent and its VRRP child; a third is a fork before exec
        if keepalived > (2 if node.running else 0):
            busy.append(f"{node.name}: {keepalived} keepalived processes")
    return busy


def wait_quiet(kenv: KEnv, cl: netns.Cluster, wrappers: dict[str, Path]) -> None:
    """Until no hook is in flight and the spool is empty: then the journal is complete."""
    calm: list[bool] = []

    def quiet() -> bool:
        ok = not in_flight(cl, wrappers) and not kenv.spooled()
        calm.append(ok)
        return len(calm) >= 2 and all(calm[-2:])

    try:
        wait_for(quiet, 30, interval=0.25, what="hooks to finish and the spool to empty")
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {in_flight(cl, wrappers)} spool={kenv.spooled()}") \
            from None


def runs_settled(kenv: KEnv) -> list[dict[str, Any]]:
    events = kenv.history()
    busy = [a for e in events for a in e["actions"] if a["status"] in ("pending", "running")]
    return [] if busy else events


def describe(events: list[dict[str, Any]]) -> str:
    """One line per event, oldest first (for failure messages and the log)."""
    return "\n".join(
        f"  #{e['rowid']:<3} seq {e['seq']:<4} {e['host']} {e['source']:<5} {e['kind']:<8} "
        f"{e['name']} {e['reported']:<7} {e['class']:<10} {e['prev_state']}->{e['state']}"
        for e in events)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_failover_two_nodes(variant: str, kenv: KEnv, router: RouterProcess,
                            cluster: netns.Cluster) -> None:
    opts = VARIANTS[variant]
    started = time.monotonic()
    cluster.create({"node1": 100, "node2": 50})
    work = cluster.workdir
    wrappers = install_wrappers(work / "bin")
    masters_file = work / "masters.log"
    node1, node2 = cluster.nodes["node1"], cluster.nodes["node2"]
    fifos = [node1, node2] if opts["router_fifo"] else []
    kenv.write_config(router_config(masters_file, fifos))
    for node in (node1, node2):
        cfg = node_config(kenv, node)
        node.keepalived_conf.write_text(keepalived_conf(
            node, wrappers, cfg, hooks=opts["hooks"], fifo_script=opts["fifo_script"],
            fifo=opts["fifo_script"] or opts["router_fifo"]))
    router.start()
    try:
        _scenario(variant, opts, kenv, router, cluster, wrappers, masters_file, started)
    except BaseException:
        print(cluster.logs())
        print("===== router log (tail)\n" + router.log_text()[-20000:])
        print("===== masters file\n" + (masters_file.read_text() if masters_file.exists()
                                         else "(none)"))
        raise


def _scenario(variant: str, opts: dict[str, bool], kenv: KEnv, router: RouterProcess,
              cluster: netns.Cluster, wrappers: dict[str, Path], masters_file: Path,
              started: float) -> None:
    node1, node2 = cluster.nodes["node1"], cluster.nodes["node2"]

    def mark(what: str) -> None:
        print(f"[{variant}] {time.monotonic() - started:6.2f}s {what}")

    # node1 first, node2 once node1 runs: node1's down timer is then surely first to
    # expire, so node2 is never MASTER at start-up and the history is deterministic.
    cluster.start(node1)
    wait_states(kenv, cluster, {("node1", k, n): "BACKUP" for k, n in SUBJECTS}, 20,
                "node1 to report BACKUP at start-up")
    mark("node1 BACKUP")
    cluster.start(node2)
    wait_states(kenv, cluster, {**{("node1", k, n): "MASTER" for k, n in SUBJECTS},
                                **{("node2", k, n): "BACKUP" for k, n in SUBJECTS}}, 30,
                "node1 MASTER and node2 BACKUP")
    mark("node1 MASTER, node2 BACKUP")
    cluster.check_scripts()
    # Let every hook of the MASTER change land before the next change: a hook is ordered
    # by when its process runs, not when keepalived forked it, so one still starting
    # when node1's STOP arrives is taken for a newer report (see
    # test_late_hook_does_not_undo_a_newer_fifo_state).
    wait_quiet(kenv, cluster, wrappers)

    term_ns = time.time_ns()
    code = cluster.stop(node1, signal.SIGTERM, timeout=20)
    mark(f"node1 keepalived exited {code}")
    assert code == 0, node1.log_text()[-4000:]
    wait_states(kenv, cluster, {**{("node1", k, n): "STOP" for k, n in SUBJECTS},
                                **{("node2", k, n): "MASTER" for k, n in SUBJECTS}}, 30,
                "node1 STOP and node2 MASTER")
    mark("node1 STOP, node2 MASTER")
    wait_quiet(kenv, cluster, wrappers)
    events = wait_for(lambda: runs_settled(kenv), 30, interval=0.2,
                      what="every action run to finish")
    mark("quiet; actions settled")
    cluster.check_scripts()
    events = list(reversed(events))  # oldest first (journal order)
    print(describe(events))
    ctx = "\n" + describe(events)

    # -- what arrived ----------------------------------------------------------------------
    assert {e["host"] for e in events} == {"node1", "node2"}, ctx  # -c configs honoured
    assert not [e for e in events if e["class"] in ("invalid", "stale")], ctx
    sources = {e["source"] for e in events}
    expected_sources = ({"hook"} if opts["hooks"] else set()) | (
        {"fifo", "resync"} if opts["fifo_script"] or opts["router_fifo"] else set())
    assert sources == expected_sources, ctx
    if "resync" in expected_sources:
        # after opening the FIFO, knotify asked each keepalived for its states (JSON dump)
        for host in ("node1", "node2"):
            assert [e for e in events if (e["host"], e["source"]) == (host, "resync")], \
                f"no resync events from {host}{ctx}"
    if opts["hooks"]:
        # notify_master "... master VI_1" / "... group master G1" and the generic notify
        # both reported each MASTER of VI_1 and G1
        for host in ("node1", "node2"):
            for name in ("VI_1", GROUP):
                forms = sorted(e["form"] for e in events if e["source"] == "hook" and
                               (e["host"], e["name"], e["reported"]) == (host, name, "MASTER"))
                assert forms == ["master", "notify"], (host, name, forms, ctx)

    # -- per host: keepalived's order, in sequence order --------------------------------------
    expected = {
        "node1": [("INIT", "BACKUP"), ("BACKUP", "MASTER"), ("MASTER", "STOP")],
        "node2": [("INIT", "BACKUP"), ("BACKUP", "MASTER")],
    }
    for host, steps in expected.items():
        mine = [e for e in events if e["host"] == host]
        by_seq = sorted(mine, key=lambda e: e["seq"])
        assert len({e["seq"] for e in mine}) == len(mine), f"{host}: seq repeats{ctx}"
        phases = [PHASE[e["reported"]] for e in by_seq]
        assert phases == sorted(phases), f"{host}: seq order is not BACKUP, MASTER, STOP{ctx}"
        for kind, name in SUBJECTS:
            trans = [e for e in mine if (e["kind"], e["name"]) == (kind, name)
                     and e["class"] == "transition"]
            assert [(e["prev_state"], e["state"]) for e in trans] == steps, \
                f"{host} {kind} {name}{ctx}"
            assert [e["seq"] for e in trans] == sorted(e["seq"] for e in trans), ctx

    # -- across hosts: only what causality guarantees ------------------------------------------
    def transition(host: str, name: str, state: str) -> dict[str, Any]:
        ev: dict[str, Any]
        [ev] = [e for e in events if (e["host"], e["name"], e["state"], e["class"])
                == (host, name, state, "transition")]
        return ev

    for kind, name in SUBJECTS:
        n1_master = transition("node1", name, "MASTER")
        n1_stop = transition("node1", name, "STOP")
        n2_master = transition("node2", name, "MASTER")
        assert n1_master["ts_ns"] < term_ns < n1_stop["ts_ns"], (kind, name, ctx)
        # node2 hears node1's adverts until node1 stops: it can only take over after SIGTERM
        assert term_ns < n2_master["ts_ns"], (kind, name, ctx)
        # the journal order across hosts is not guaranteed (separate processes); report it
        mark(f"{name}: node1 STOP {(n1_stop['ts_ns'] - term_ns) / 1e9:+.3f}s "
             f"(row {n1_stop['rowid']}), node2 MASTER {(n2_master['ts_ns'] - term_ns) / 1e9:+.3f}s "
             f"(row {n2_master['rowid']}) after SIGTERM")

    # -- FIFO: keepalived's exact order, and the STOP lines at shutdown ------------------------
    if opts["fifo_script"] or opts["router_fifo"]:
        for node in (node1, node2):
            lines = [e for e in events if e["host"] == node.name and e["source"] == "fifo"]
            assert [e["seq"] for e in lines] == sorted(e["seq"] for e in lines), ctx
            raw = [e["raw"] for e in lines]
            p = node.prio
            backup = [f'GROUP "{GROUP}" BACKUP 0', f'INSTANCE "VI_1" BACKUP {p}',
                      f'INSTANCE "VI_2" BACKUP {p}']
            master = {f'INSTANCE "VI_1" MASTER {p}', f'INSTANCE "VI_2" MASTER {p}'}
            want_len = 6 + (3 if node is node1 else 0)
            assert len(raw) == want_len, (node.name, raw)
            assert raw[:3] == backup, (node.name, raw)
            assert set(raw[3:5]) == master and raw[5] == f'GROUP "{GROUP}" MASTER 0', \
                (node.name, raw)
            if node is node1:
                assert raw[6:] == [f'INSTANCE "VI_1" STOP {p}', f'INSTANCE "VI_2" STOP {p}',
                                   f'GROUP "{GROUP}" STOP 0'], (node.name, raw)

    # -- the exec action: once per MASTER transition ------------------------------------------
    master_transitions = {e["id"]: e for e in events if e["kind"] == "INSTANCE"
                          and e["state"] == "MASTER" and e["class"] == "transition"}
    assert len(master_transitions) == 4, ctx  # VI_1 and VI_2 on each node
    lines = masters_file.read_text().splitlines()
    runs: dict[str, list[str]] = defaultdict(list)
    for line in lines:
        host, name, event_id, prev = line.split()
        runs[event_id].append(line)
        ev = master_transitions.get(event_id)
        assert ev is not None, f"the action ran for a non-transition event: {line}{ctx}"
        assert (host, name, prev) == (ev["host"], ev["name"], ev["prev_state"]), line
    assert len(lines) == len(master_transitions), (lines, ctx)
    assert set(runs) == set(master_transitions), (lines, ctx)
    for ev in events:
        on_master = [a for a in ev["actions"] if a["rule"] == "on-master"]
        if ev["id"] in master_transitions:
            assert [a["status"] for a in on_master] == ["ok"], ev
        else:
            assert on_master == [], ev
    repeats = [e for e in events if e["reported"] == "MASTER" and e["class"] == "repeat"]
    if opts["hooks"]:
        assert repeats, "hooks report each MASTER more than once: expected repeats" + ctx
    mark(f"{len(events)} events, {len(master_transitions)} MASTER transitions, "
         f"{len(repeats)} MASTER repeats, {len(lines)} action runs")



def test_worked_example_runs_clean(kenv: KEnv, router: RouterProcess,
                                   cluster: netns.Cluster) -> None:
    """config/keepalived.conf (the README's worked example) passes keepalived's check, and,
    run for real on one node, every hook it wires is accepted and reports to the router.

    Paths are moved into the test's folder (/usr/local/sbin -> a root-owned 0755 folder,
    the FIFO next to it), the interface is a veth of the example's name inside the node's
    namespace. check_haproxy is the real script for --config-test but a stub that exits 0
    for the run: the real one would try to restart haproxy through systemctl.
    """
    example = ROOT / "config" / "keepalived.conf"
    need(example.exists(), f"{example} (the README's worked example) does not exist")
    work = cluster.workdir
    bindir = work / "bin"
    wrappers = install_wrappers(bindir)
    check = ROOT / "config" / "check_haproxy.sh"
    if check.exists():
        netns.install_script(bindir / "check_haproxy", check.read_text())
    text = example.read_text()
    text = re.sub(r"/usr/local/sbin/", f"{bindir}/", text)
    text = re.sub(r"^(\s*(?:vrrp_|lvs_)?notify_fifo)\s+(\S+)",
                  lambda m: f"{m.group(1)} {work / os.path.basename(m.group(2))}", text,
                  flags=re.MULTILINE)
    conf = work / "example.conf"
    conf.write_text(text)
    # --config-test: its verdict comes from a child that may finish after the parent,
    # so read the output to EOF (the pipe closes only when every writer has gone).
    proc = subprocess.run(["keepalived", "--config-test", "-f", str(conf)],
                          capture_output=True, text=True, timeout=60,
                          env=netns.KEEPALIVED_ENV)
    output = (proc.stdout + proc.stderr).strip()
    assert proc.returncode == 0 and not output, f"exit {proc.returncode}:\n{output}"

    ifname = re.search(r"^\s*interface\s+(\S+)", text, re.MULTILINE)
    vip = re.search(r"virtual_ipaddress\s*\{\s*(\d+\.\d+\.\d+)\.(\d+)/(\d+)", text)
    instances = re.findall(r"^\s*vrrp_instance\s+(\S+)", text, re.MULTILINE)
    groups = re.findall(r"^\s*vrrp_sync_group\s+(\S+)", text, re.MULTILINE)
    assert ifname and vip and instances, "the example has no interface/VIP/instance?"
    last = 250 if vip.group(2) != "250" else 251
    node = cluster.create_single("example", 0, ifname.group(1),
                                 f"{vip.group(1)}.{last}/{vip.group(3)}")
    cfg = node_config(kenv, node)
    node.keepalived_conf.write_text(text)
    netns.install_script(bindir / "check_haproxy", "#!/bin/sh\nexit 0\n")
    kenv.write_config('[[rule]]\nid = "log-all"\non = "every"\n[[rule.action]]\ntype = "log"\n')
    router.start()
    subjects = [("INSTANCE", i) for i in instances] + [("GROUP", g) for g in groups]
    try:
        # The example's hooks have no -c: the config comes from keepalived's environment,
        # as a systemd drop-in (Environment=KNOTIFY_CONFIG=...) would give it.
        cluster.start(node, env={"KNOTIFY_CONFIG": str(cfg)})
        wait_states(kenv, cluster, {("example", k, n): "MASTER" for k, n in subjects}, 30,
                    "the example node to become MASTER")
        cluster.check_scripts()
        wait_quiet(kenv, cluster, wrappers)  # as in test_failover_two_nodes
        assert cluster.stop(node, signal.SIGTERM, timeout=20) == 0
        wait_states(kenv, cluster, {("example", k, n): "STOP" for k, n in subjects}, 30,
                    "the example node to report STOP")
        wait_quiet(kenv, cluster, wrappers)
        events = list(reversed(kenv.history()))
        print(describe(events))
        ctx = "\n" + describe(events)
        assert {e["host"] for e in events} == {"example"}, ctx
        assert not [e for e in events if e["class"] in ("invalid", "stale")], ctx
        # knotify fifo, keepalived's child, also re-reads keepalived's state (resync)
        wired = {"hook"} | ({"fifo", "resync"} if "vrrp_notify_fifo_script" in text
                            else set())
        assert {e["source"] for e in events} == wired, ctx
        for kind, name in subjects:
            trans = [(e["prev_state"], e["state"]) for e in events
                     if (e["kind"], e["name"], e["class"]) == (kind, name, "transition")]
            assert trans == [("INIT", "BACKUP"), ("BACKUP", "MASTER"), ("MASTER", "STOP")], \
                (kind, name, ctx)
        if "fifo" in wired:
            stops = [e["raw"] for e in events if e["source"] == "fifo"
                     and e["reported"] == "STOP"]
            assert len(stops) == len(subjects), ("the FIFO's STOP lines", ctx)
        cluster.check_scripts()
    except BaseException:
        print(cluster.logs())
        print("===== router log (tail)\n" + router.log_text()[-20000:])
        raise


class LateHookOrdering(AssertionError):
    """The known ordering bug test_late_hook_does_not_undo_a_newer_fifo_state pins down."""


def test_late_hook_does_not_undo_a_newer_fifo_state(kenv: KEnv, router: RouterProcess,
                                                     cluster: netns.Cluster) -> None:
    """FIFO and hooks wired together (as the README allows): a slow notify_master hook
    must not resurrect MASTER after the FIFO has reported STOP.

    The hook is made slow on purpose: its wrapper waits until the test has seen STOP
    (it ignores SIGTERM, as keepalived sends one to every script when it exits).
    """
    work = cluster.workdir
    wrappers = install_wrappers(work / "bin")
    go = work / "go"
    slow = netns.install_script(
        work / "bin" / "knotify-notify-slow",
        "#!/bin/sh\n# starts late, as a hook on a loaded machine may\ntrap '' TERM\n"
        f"i=0\nwhile [ ! -e {go} ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done\n"
        f'exec {wrappers["knotify-notify"]} "$@"\n')
    node = cluster.create_single("solo", 100, "kneeth0", "10.214.0.1/24")
    cfg = node_config(kenv, node)
    node.keepalived_conf.write_text(
        "global_defs {\n    script_user root\n    enable_script_security\n"
        f"    vrrp_notify_fifo {node.fifo}\n}}\n"
        "vrrp_instance VI_1 {\n    state BACKUP\n    interface kneeth0\n"
        "    virtual_router_id 81\n    priority 100\n    advert_int 1\n"
        "    virtual_ipaddress {\n        10.214.0.101/24\n    }\n"
        f'    notify_master "{slow} -c {cfg} master VI_1"\n}}\n')
    masters_file = work / "masters.log"
    kenv.write_config(router_config(masters_file, [node]))
    router.start()
    key = ("solo", "INSTANCE", "VI_1")
    try:
        cluster.start(node)
        wait_states(kenv, cluster, {key: "MASTER"}, 30, "solo MASTER (from its FIFO)")
        assert cluster.stop(node, signal.SIGTERM, timeout=20) == 0
        wait_states(kenv, cluster, {key: "STOP"}, 30, "solo STOP (from its FIFO)")
        go.touch()  # now let the MASTER hook run
        wait_quiet(kenv, cluster, wrappers)
        wait_for(lambda: runs_settled(kenv), 30, interval=0.2, what="every action run")
        events = list(reversed(kenv.history()))
        print(describe(events))
        late = [e for e in events if e["source"] == "hook"]
        assert [(e["reported"], e["form"]) for e in late] == [("MASTER", "master")], \
            describe(events)
    except BaseException:
        print(cluster.logs())
        raise
    trans = [(e["prev_state"], e["state"]) for e in events if e["class"] == "transition"]
    runs = masters_file.read_text().splitlines()
    now = states(kenv)[key]
    if (trans != [("INIT", "BACKUP"), ("BACKUP", "MASTER"), ("MASTER", "STOP")]
            or now != "STOP" or len(runs) != 1):
        raise LateHookOrdering(f"status says {now} for a stopped node; {len(runs)} MASTER "
                               f"action runs; transitions {trans}\n{describe(events)}")
