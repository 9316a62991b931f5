"""The cluster view with a real router: CLUSTER/PEER events routed like any other,
heartbeats from ``knotify agent``, ``knotify watch``, metrics, and two routers that agree."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import KEnv, RouterProcess, wait_for

CLUSTER_CONFIG = """
[cluster]
split_brain_grace = "1s"
no_master_grace = "1s"
silent_after = "2s"

[[rule]]
id = "log-all"
on = "every"
[[rule.action]]
type = "log"

[[rule]]
id = "on-cluster"
kind = ["CLUSTER", "PEER"]
[[rule.action]]
type = "exec"
argv = ["/bin/sh", "-c", 'echo "$1|$2|$3|$4" >> {out}', "x",
        "{{kind}}", "{{name}}", "{{state}}", "{{detail}}"]
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def synthetic(kenv: KEnv) -> list[tuple[str, str, str]]:
    """(kind, name, state) of the CLUSTER and PEER events, oldest first."""
    return [(e["kind"], e["name"], e["reported"]) for e in reversed(kenv.history())
            if e["kind"] in ("CLUSTER", "PEER")]


def send(kenv: KEnv, host: str, name: str, state: str) -> None:
    kenv.cli("send", "--host", host, "INSTANCE", name, state, "100")


def agent_config(kenv: KEnv, host: str, endpoints: list[str], extra: str = "") -> Path:
    path = kenv.root / f"{host}.toml"
    path.write_text(f'[paths]\nruntime_dir = "{kenv.root}/{host}-run"\n'
                    f'state_dir = "{kenv.root}/{host}-state"\n'
                    f'[hook]\nhost = "{host}"\nendpoints = {json.dumps(endpoints)}\n'
                    'ack_timeout = "1s"\n'
                    f'[agent]\nheartbeat = "300ms"\ntimeout = "1s"\n{extra}')
    return path


class Agent:
    def __init__(self, kenv: KEnv, config: Path) -> None:
        self.kenv = kenv
        self.config = config
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Agent:
        log = open(self.kenv.root / f"{self.config.stem}.agent.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "knotify.cli", "agent", "-c", str(self.config),
             "--log-format", "json"], env=self.kenv.env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def agents() -> Iterator[list[Agent]]:
    made: list[Agent] = []
    try:
        yield made
    finally:
        for agent in made:
            agent.stop()


def test_split_brain_and_no_master_are_routed_like_any_event(
    kenv: KEnv, router: RouterProcess
) -> None:
    out = kenv.root / "cluster.log"
    kenv.write_config(CLUSTER_CONFIG.format(out=out))
    router.start()
    for host, state in (("n1", "MASTER"), ("n2", "BACKUP"), ("n3", "BACKUP")):
        send(kenv, host, "VI_1", state)
    send(kenv, "n2", "VI_1", "MASTER")
    wait_for(lambda: ("CLUSTER", "VI_1", "SPLIT_BRAIN") in synthetic(kenv), 20,
             what="SPLIT_BRAIN")
    # The status groups by cluster and flags it.
    status = json.loads(kenv.cli("status", "--json").stdout)
    [group] = status["cluster"]["groups"]
    assert (group["label"], group["condition"], group["masters"]) == (
        "VI_1", "SPLIT_BRAIN", ["n1", "n2"])
    text = kenv.cli("status", "--cluster").stdout
    assert text.splitlines()[0].split() == ["CLUSTER", "STATUS", "SINCE", "MASTER", "BACKUP",
                                            "OTHER"]
    assert "VI_1     SPLIT_BRAIN" in text and "n1" in text and "n3" in text
    send(kenv, "n2", "VI_1", "BACKUP")
    wait_for(lambda: ("CLUSTER", "VI_1", "SPLIT_BRAIN_RESOLVED") in synthetic(kenv), 20,
             what="SPLIT_BRAIN_RESOLVED")
    for host in ("n1", "n2", "n3"):
        send(kenv, host, "VI_1", "STOP")
    wait_for(lambda: ("CLUSTER", "VI_1", "NO_MASTER") in synthetic(kenv), 20,
             what="NO_MASTER")
    send(kenv, "n3", "VI_1", "MASTER")
    wait_for(lambda: ("CLUSTER", "VI_1", "MASTER_BACK") in synthetic(kenv), 20,
             what="MASTER_BACK")
    assert synthetic(kenv) == [("CLUSTER", "VI_1", s) for s in (
        "SPLIT_BRAIN", "SPLIT_BRAIN_RESOLVED", "NO_MASTER", "MASTER_BACK")]
    # The exec action ran for each, with the detail as a template field.
    lines = wait_for(lambda: out.exists() and len(out.read_text().splitlines()) == 4 and
                     out.read_text().splitlines(), 20, what="four action runs")
    assert [ln.split("|")[:3] for ln in lines] == [["CLUSTER", "VI_1", s] for s in (
        "SPLIT_BRAIN", "SPLIT_BRAIN_RESOLVED", "NO_MASTER", "MASTER_BACK")]
    assert "n1, n2 are all MASTER" in lines[0] and "n3 BACKUP" in lines[0]
    [split] = [e for e in kenv.history(kind="CLUSTER") if e["reported"] == "SPLIT_BRAIN"]
    assert split["source"] == "cluster" and split["extra"]["masters"] == ["n1", "n2"]


def test_agent_heartbeats_make_silence_mean_something(
    kenv: KEnv, router: RouterProcess, agents: list[Agent]
) -> None:
    out = kenv.root / "cluster.log"
    kenv.write_config(CLUSTER_CONFIG.format(out=out))
    router.start()
    control = f"ipc://{kenv.runtime}/knotify.sock"
    agent = Agent(kenv, agent_config(kenv, "n3", [control])).start()
    agents.append(agent)

    def peer(host: str) -> dict[str, Any] | None:
        status = json.loads(kenv.cli("status", "--json").stdout)
        return next((p for p in status["cluster"]["peers"] if p["host"] == host), None)

    wait_for(lambda: (p := peer("n3")) and p["watched"] and p["via"] == "heartbeat", 20,
             what="n3 to be watched")
    assert synthetic(kenv) == []
    agent.stop()
    wait_for(lambda: ("PEER", "n3", "PEER_SILENT") in synthetic(kenv), 20, what="PEER_SILENT")
    text = kenv.cli("status", "--cluster").stdout
    assert any(ln.split()[:2] == ["n3", "SILENT"] for ln in text.splitlines()), text
    agents.append(Agent(kenv, agent.config).start())
    wait_for(lambda: ("PEER", "n3", "PEER_BACK") in synthetic(kenv), 20, what="PEER_BACK")
    agents[-1].stop()
    # The router remembers whom it watches: after a restart n3's silence is noticed again.
    router.stop()
    router.start()
    wait_for(lambda: synthetic(kenv).count(("PEER", "n3", "PEER_SILENT")) == 2, 20,
             what="PEER_SILENT after the restart")
    assert synthetic(kenv) == [("PEER", "n3", s) for s in (
        "PEER_SILENT", "PEER_BACK", "PEER_SILENT")]
    # Decommissioned: forgotten, and no longer expected.
    assert kenv.cli("forget-peer", "n3").stdout.strip() == "n3: no longer watched"
    assert synthetic(kenv)[-1] == ("PEER", "n3", "OK")
    again = kenv.cli("forget-peer", "n3", check=False)
    assert again.returncode == 1 and "not a watched peer" in again.stderr
    lines = wait_for(lambda: out.exists() and len(out.read_text().splitlines()) == 4
                     and out.read_text().splitlines(), 20, what="four PEER action runs")
    assert lines[0].startswith("PEER|n3|PEER_SILENT|n3: not heard from since ")


def test_bad_heartbeats_are_refused_with_the_reason(kenv: KEnv, router: RouterProcess) -> None:
    from knotify import zmtp

    kenv.write_config("")
    router.start()
    endpoint = f"ipc://{kenv.runtime}/knotify.sock"
    good = {"v": 1, "op": "heartbeat", "host": "n1", "interval_s": 5}
    assert json.loads(zmtp.request(endpoint, json.dumps(good).encode(), 5))["ok"] is True
    for bad, reason in (({**good, "host": ""}, "host must be"),
                        ({**good, "load": 3}, "unknown field(s): 'load'")):
        answer = json.loads(zmtp.request(endpoint, json.dumps(bad).encode(), 5))
        assert answer["ok"] is False and reason in answer["error"]
    # not journaled: no event, no history
    assert kenv.history() == []


class Watch:
    """``knotify watch`` in the background, its lines collected by a thread."""

    def __init__(self, kenv: KEnv, *args: str) -> None:
        self.lines: list[str] = []
        self.proc = subprocess.Popen([sys.executable, "-m", "knotify.cli", "watch", *args],
                                     env=kenv.env, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True)
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        code = self.proc.wait(20)
        self.thread.join(10)
        return code


def _subscribed(kenv: KEnv, *watches: Watch) -> None:
    """Send throw-away events until every watcher shows one (a SUB socket joins late)."""
    n = 0

    def seen() -> bool:
        nonlocal n
        n += 1
        send(kenv, "n1", f"VI_PROBE{n}", "BACKUP")
        return all(any("VI_PROBE" in ln for ln in w.lines) for w in watches)

    wait_for(seen, 20, interval=0.2, what="the watchers to subscribe")


def test_watch_streams_events_and_action_outcomes(kenv: KEnv, router: RouterProcess) -> None:
    kenv.write_config("""
[[rule]]
id = "on-master"
state = "MASTER"
[[rule.action]]
type = "log"
""")
    router.start()
    as_json = Watch(kenv, "--json")
    text = Watch(kenv, "--host", "n1")
    try:
        _subscribed(kenv, as_json, text)
        send(kenv, "n1", "VI_1", "MASTER")
        send(kenv, "n2", "VI_1", "BACKUP")
        wait_for(lambda: any('"topic": "action"' in ln for ln in as_json.lines), 20,
                 what="the action outcome")
        wait_for(lambda: len([ln for ln in as_json.lines if "VI_1" in ln]) >= 3, 20,
                 what="both events and the action")
    finally:
        assert as_json.stop() in (0, -signal.SIGTERM)
        text.stop()
    records = [json.loads(ln) for ln in as_json.lines if '"VI_1"' in ln]
    events = [(r["topic"], r["host"], r.get("class")) for r in records if r["topic"] == "event"]
    assert events == [("event", "n1", "transition"), ("event", "n2", "transition")]
    [action] = [r for r in records if r["topic"] == "action"]
    assert (action["rule"], action["status"], action["host"]) == ("on-master", "ok", "n1")
    vi1 = [ln for ln in text.lines if "VI_1" in ln]
    assert any("n1  INSTANCE VI_1  INIT -> MASTER prio 100  [send]" in ln for ln in vi1), vi1
    assert any("-> on-master log for n1 VI_1 MASTER: ok" in ln for ln in vi1), vi1
    assert not any("n2" in ln for ln in vi1), vi1


def test_watch_count_and_timeout(kenv: KEnv, router: RouterProcess) -> None:
    kenv.write_config("")
    router.start()
    proc = kenv.cli("watch", "--count", "1", "--timeout", "0.5", check=False)
    assert proc.returncode == 1 and "0 of 1 messages before the timeout" in proc.stderr


def scrape(port: int, path: str = "/metrics") -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as answer:
        return str(answer.read().decode())


def test_metrics_endpoint(kenv: KEnv, router: RouterProcess) -> None:
    port = free_port()
    kenv.write_config(CLUSTER_CONFIG.format(out=kenv.root / "c.log")
                      + f'\n[metrics]\nlisten = "127.0.0.1:{port}"\n')
    router.start()
    assert any(r.get("event") == "metrics.listening" for r in router.records())
    send(kenv, "n1", "VI_1", "BACKUP")
    send(kenv, "n1", "VI_1", "MASTER")
    send(kenv, "n2", "VI_1", "MASTER")
    wait_for(lambda: ("CLUSTER", "VI_1", "SPLIT_BRAIN") in synthetic(kenv), 20,
             what="SPLIT_BRAIN")
    text = wait_for(lambda: 'knotify_actions_total{outcome="ok"}' in (t := scrape(port))
                    and t, 20, what="action outcomes in the metrics")
    lines = set(text.splitlines())
    for want in (
        'knotify_state{host="n1",kind="INSTANCE",name="VI_1",state="MASTER",vs=""} 1.0',
        'knotify_state{host="n1",kind="INSTANCE",name="VI_1",state="BACKUP",vs=""} 0.0',
        'knotify_transitions_total{host="n1",kind="INSTANCE",name="VI_1",vs=""} 2.0',
        'knotify_priority{host="n2",kind="INSTANCE",name="VI_1",vs=""} 100.0',
        'knotify_cluster_condition{cluster="VI_1",condition="SPLIT_BRAIN"} 1.0',
        'knotify_cluster_masters{cluster="VI_1"} 2.0',
        "knotify_spool_depth 0.0",
        "knotify_actions_queued 0.0",
    ):
        assert want in lines, want
    assert any(ln.startswith("knotify_events_journaled_total ") for ln in lines)
    # Every journaled event was in a batch; a batch holds at least one.
    [batches] = [ln for ln in lines if ln.startswith("knotify_journal_batches_total ")]
    [events] = [ln for ln in lines if ln.startswith("knotify_events_journaled_total ")]
    assert 1 <= float(batches.split()[1]) <= float(events.split()[1]), (batches, events)
    assert any(ln.startswith("knotify_messages_received_total ") for ln in lines)
    assert any(ln.startswith("process_cpu_seconds_total ") for ln in lines)
    with pytest.raises(urllib.error.HTTPError) as err:
        scrape(port, "/nope")
    assert err.value.code == 404


def test_metrics_port_taken_stops_the_start(kenv: KEnv) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        kenv.write_config(f'[metrics]\nlisten = "127.0.0.1:{port}"\n')
        proc = kenv.cli("run", check=False, timeout=60)
    assert proc.returncode == 1
    assert f"[metrics] listen: cannot bind 127.0.0.1:{port}" in proc.stderr


# --------------------------------------------------------------------------- two routers


class TwoRouters:
    """Two routers on TCP with CURVE (one key pair: the same service), one sending host."""

    def __init__(self, kenv: KEnv) -> None:
        self.kenv = kenv
        keys = kenv.root / "keys"
        clients = kenv.root / "clients"
        clients.mkdir()
        kenv.cli("keygen", "router", "--dir", str(keys))
        kenv.cli("keygen", "n1", "--dir", str(keys))
        (clients / "n1.key").write_bytes((keys / "n1.key").read_bytes())
        self.ports = [free_port(), free_port()]
        self.endpoints = [f"tcp://127.0.0.1:{p}" for p in self.ports]
        (kenv.root / "r2").mkdir()
        self.envs = [kenv, KEnv(kenv.root / "r2")]
        self.routers = [RouterProcess(e) for e in self.envs]
        for env, port in zip(self.envs, self.ports, strict=True):
            env.write_config(f"""
[router]
listen = ["tcp://127.0.0.1:{port}"]
[router.curve]
secret_key = "{keys}/router.key_secret"
clients = "{clients}"
[[rule]]
id = "log-all"
[[rule.action]]
type = "log"
""")
        self.host = agent_config(kenv, "n1", self.endpoints,
                                 f'[hook.curve]\nserver_key = "{keys}/router.key"\n'
                                 f'secret_key = "{keys}/n1.key_secret"\n')
        self.spool = kenv.root / "n1-state" / "spool"

    def hook(self, name: str, state: str) -> None:
        proc = self.kenv.hook("-c", str(self.host), "INSTANCE", name, state, "100")
        assert (proc.returncode, proc.stderr) == (0, "")

    def agent_once(self) -> subprocess.CompletedProcess[str]:
        return self.kenv.cli("agent", "-c", str(self.host), "--once", "--log-format", "json",
                             check=False)

    def outbox(self, i: int) -> list[Path]:
        folder = self.spool / "to" / self.endpoints[i].replace("/", "%2F") / "new"
        return sorted(folder.glob("*.json")) if folder.exists() else []

    def new(self) -> list[Path]:
        return sorted((self.spool / "new").glob("*.json")) if (self.spool / "new").exists() \
            else []

    def seen(self, i: int) -> list[tuple[str, str, str, str]]:
        return [(e["id"], e["name"], e["reported"], e["class"])
                for e in reversed(self.envs[i].history())]

    def stop(self) -> None:
        for router in self.routers:
            if router.alive:
                router.stop(signal.SIGKILL)


@pytest.fixture
def two(kenv: KEnv) -> Iterator[TwoRouters]:
    made = TwoRouters(kenv)
    try:
        yield made
    finally:
        made.stop()


def test_two_routers_given_the_same_events_agree(two: TwoRouters) -> None:
    for router in two.routers:
        router.start()
    two.hook("VI_1", "BACKUP")
    two.hook("VI_1", "MASTER")
    assert two.seen(0) == two.seen(1) and len(two.seen(0)) == 2
    assert two.new() == [] and two.outbox(0) == two.outbox(1) == []
    # Router 2 goes down: the hook is still acked (router 1), router 2's copy waits.
    two.routers[1].stop()
    two.hook("VI_1", "BACKUP")
    two.hook("VI_2", "MASTER")
    assert len(two.seen(0)) == 4
    assert len(two.outbox(1)) == 2 and two.new() == [] and two.outbox(0) == []
    assert two.agent_once().returncode == 0  # router 1 answers; router 2 still down
    assert len(two.outbox(1)) == 2
    two.routers[1].start()
    assert two.agent_once().returncode == 0
    assert two.outbox(1) == []
    # Both down: nothing acks; the hook spools once, and the agent fans it out later.
    two.routers[0].stop()
    two.routers[1].stop()
    two.hook("VI_2", "BACKUP")
    assert len(two.new()) == 1
    two.routers[1].start()
    assert two.agent_once().returncode == 0
    assert two.new() == [] and len(two.outbox(0)) == 1  # handed over to router 1's outbox
    two.routers[0].start()
    assert two.agent_once().returncode == 0
    assert two.outbox(0) == [] and two.new() == []
    one, other = two.seen(0), two.seen(1)
    assert {e[0] for e in one} == {e[0] for e in other} and len(one) == 5
    # The same events, the same conclusions: every subject in the same state.
    def states(i: int) -> set[tuple[str, str, str]]:
        return {(s["host"], s["name"], s["state"]) for s in two.envs[i].status()}
    assert states(0) == states(1) == {("n1", "VI_1", "BACKUP"), ("n1", "VI_2", "BACKUP")}
    assert {e[3] for e in other if e[2] == "BACKUP" and e[1] == "VI_2"} == {"transition"}
    assert os.listdir(two.spool / "to")  # the outbox folders stay, empty


def test_check_config_shows_cluster_and_metrics(kenv: KEnv) -> None:
    kenv.write_config('[cluster]\nsplit_brain_grace = "2s"\n[[cluster.group]]\nlabel = "web"\n'
                      'instances = ["VI_1", "VI_WEB"]\nhosts = "lb*"\n'
                      '[metrics]\nlisten = "127.0.0.1:9650"\n')
    out = kenv.cli("check-config").stdout
    assert ("  cluster  on: split brain after 2.0s, no master after 10s, silent after 30s; "
            "web = VI_1,VI_WEB on lb*") in out
    assert "  metrics  http://127.0.0.1:9650/metrics" in out


def test_one_agent_per_spool_and_bad_spool_files_are_set_aside(
    kenv: KEnv, router: RouterProcess, agents: list[Agent]
) -> None:
    port = free_port()
    kenv.write_config(f'[router]\nlisten = ["tcp://127.0.0.1:{port}"]\ninsecure = true\n')
    router.start()
    cfg = agent_config(kenv, "n1", [f"tcp://127.0.0.1:{port}"])
    spool_dir = kenv.root / "n1-state" / "spool"
    agents.append(Agent(kenv, cfg).start())
    wait_for(lambda: (spool_dir / "agent.lock").exists(), 20, what="the agent's lock")
    second = kenv.cli("agent", "-c", str(cfg), "--once", check=False)
    assert second.returncode == 1 and "another knotify agent" in second.stderr
    agents[-1].stop()
    # Only a remote router: the agent delivers SPOOL/new. A file that is not an event
    # goes to spool/bad, and the rest still flows.
    router.stop()
    assert kenv.hook("-c", str(cfg), "INSTANCE", "VI_1", "MASTER", "100").returncode == 0
    (spool_dir / "new" / "00000000000000000000-bad.json").write_text("{not json")
    router.start()
    once = kenv.cli("agent", "-c", str(cfg), "--once", "--log-format", "json", check=False)
    assert once.returncode == 0, once.stderr
    assert not list((spool_dir / "new").glob("*.json"))
    assert [p.name for p in (spool_dir / "bad").iterdir()] == ["00000000000000000000-bad.json"]
    [ev] = kenv.history()
    assert (ev["host"], ev["name"], ev["extra"]) == ("n1", "VI_1", {"via": "spool"})
