"""The CLI as a user meets it: run, status, history, send, reload, and their errors."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

from conftest import BIN, KEnv, RouterProcess, wait_for

RULE = """
[[rule]]
id = "log-all"
[[rule.action]]
type = "log"
"""


def test_status_table_and_json(kenv: KEnv, router: RouterProcess) -> None:
    kenv.write_config(RULE)
    router.start()
    kenv.cli("send", "--host", "node1", "INSTANCE", "VI_1", "MASTER", "100")
    kenv.cli("send", "--host", "node2", "INSTANCE", "VI_1", "BACKUP", "50")
    kenv.cli("send", "--host", "node1", "RS", "[10.0.0.5]:tcp:80 [10.0.0.100]:tcp:80", "DOWN")
    text = kenv.cli("status").stdout
    lines = text.splitlines()
    assert lines[0].split() == ["HOST", "KIND", "NAME", "STATE", "PRIO", "SINCE", "FOR"]
    assert any(ln.split()[:5] == ["node1", "INSTANCE", "VI_1", "MASTER", "100"] for ln in lines)
    assert any(ln.split()[:5] == ["node2", "INSTANCE", "VI_1", "BACKUP", "50"] for ln in lines)
    assert any("[10.0.0.5]:tcp:80 in [10.0.0.100]:tcp:80" in ln and "DOWN" in ln for ln in lines)
    data = json.loads(kenv.cli("status", "--json").stdout)
    assert {(s["host"], s["state"]) for s in data["states"]} == {
        ("node1", "MASTER"), ("node2", "BACKUP"), ("node1", "DOWN")}
    assert data["router"]["journaled"] == 3


def test_history_text_shows_transition_and_action_outcome(
    kenv: KEnv, router: RouterProcess
) -> None:
    kenv.write_config(RULE)
    router.start()
    kenv.cli("send", "INSTANCE", "VI_1", "BACKUP", "100")
    kenv.cli("send", "INSTANCE", "VI_1", "MASTER", "100")
    kenv.cli("send", "INSTANCE", "VI_1", "MASTER", "100")
    out = kenv.cli("history", "--limit", "2").stdout.splitlines()
    assert "MASTER (repeat)" in out[0]
    assert "BACKUP -> MASTER prio 100" in out[1]
    assert out[2].strip().startswith("-> log-all#0 log: ok")
    assert len([ln for ln in out if not ln.startswith(" ")]) == 2


def test_history_filters(kenv: KEnv, router: RouterProcess) -> None:
    kenv.write_config(RULE)
    router.start()
    for host, name in [("a", "VI_1"), ("b", "VI_1"), ("a", "VI_2")]:
        kenv.cli("send", "--host", host, "INSTANCE", name, "MASTER", "100")
    assert {e["host"] for e in kenv.history(name="VI_1")} == {"a", "b"}
    assert {e["name"] for e in kenv.history(host="a")} == {"VI_1", "VI_2"}
    assert kenv.history(kind="group") == []


def test_commands_say_clearly_when_the_router_is_not_running(kenv: KEnv) -> None:
    for args in (["status"], ["history"], ["reload"]):
        proc = kenv.cli(*args, check=False)
        assert proc.returncode == 1
        assert "no answer from the router" in proc.stderr
        assert "Traceback" not in proc.stderr


def test_send_spools_when_router_is_down_and_says_so(kenv: KEnv) -> None:
    proc = kenv.cli("send", "--timeout", "0.2", "GROUP", "G1", "FAULT")
    assert "spooled to" in proc.stdout and "delivered when the router runs" in proc.stdout
    assert len(kenv.spooled()) == 1


def test_send_refuses_bad_input_naming_it(kenv: KEnv) -> None:
    cases = [
        (["INSTANCE", "VI_1", "MASTR", "100"], "'MASTR' is not a INSTANCE state"),
        (["INSTANCE", "VI_1", "MASTER", "300"], "priority must be a number 0..255"),
        (["BOGUS", "VI_1", "MASTER"], "kind 'BOGUS'"),
        (["RS", "[10.0.0.5]:tcp:80", "DOWN"], "give the name as 'RS VS'"),
    ]
    for args, message in cases:
        proc = kenv.cli("send", *args, check=False)
        assert proc.returncode == 2, args
        assert message in proc.stderr, (args, proc.stderr)
    assert kenv.spooled() == []


def test_run_refuses_a_bad_config_with_file_key_and_reason(kenv: KEnv) -> None:
    kenv.write_config('[router]\ndrain_timeout = "soon"\n')
    proc = kenv.cli("run", check=False, timeout=30)
    assert proc.returncode == 2
    assert f"{kenv.config}: router.drain_timeout: expected a duration" in proc.stderr


def test_second_router_refuses_to_take_over(kenv: KEnv, router: RouterProcess) -> None:
    kenv.write_config(RULE)
    router.start()
    proc = kenv.cli("run", check=False, timeout=30)
    assert proc.returncode == 1
    assert "another knotify router" in proc.stderr and "refusing to take over" in proc.stderr
    # The first one still answers.
    kenv.cli("send", "INSTANCE", "VI_1", "MASTER", "100")
    assert len(kenv.history()) == 1


def test_reload_applies_good_config_and_refuses_bad(kenv: KEnv, router: RouterProcess) -> None:
    kenv.write_config(RULE)
    router.start()
    kenv.write_config(RULE.replace("log-all", "renamed"))
    assert "config reloaded: 1 rules" in kenv.cli("reload").stdout
    kenv.cli("send", "INSTANCE", "VI_1", "MASTER", "100")
    wait_for(lambda: kenv.history()[0]["actions"], what="the action")
    assert kenv.history()[0]["actions"][0]["rule"] == "renamed"
    # [log] is read at start only: a reload says so instead of pretending.
    kenv.write_config(RULE.replace("log-all", "renamed") + '\n[log]\nlevel = "warning"\n')
    assert "changes to log need a restart" in kenv.cli("reload").stdout
    kenv.write_config(RULE + "\n[[rule]]\nid = 5\n")
    proc = kenv.cli("reload", check=False)
    assert proc.returncode == 1
    assert "old one kept" in proc.stderr and "rule[1].id" in proc.stderr
    # SIGHUP does the same; the bad config is refused and logged, the router keeps serving.
    assert router.proc is not None
    router.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: any(r.get("event") == "config.reload_refused" for r in router.records()),
             what="the refusal in the log")
    kenv.cli("send", "INSTANCE", "VI_1", "BACKUP", "100")
    wait_for(lambda: kenv.history()[0]["actions"], what="the action")
    assert kenv.history()[0]["actions"][0]["rule"] == "renamed"


def test_knotifyd_is_knotify_run(kenv: KEnv) -> None:
    kenv.write_config(RULE)
    proc = subprocess.Popen([str(BIN / "knotifyd"), "--log-format", "json"], env=kenv.env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: (kenv.runtime / "knotify.sock").exists(), 20, what="the socket")
        kenv.cli("send", "INSTANCE", "VI_1", "MASTER", "100")
        assert len(kenv.history()) == 1
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0
    assert '"router.stopped"' in err


def test_console_logs_on_a_tty_json_otherwise(kenv: KEnv) -> None:
    import pty

    kenv.write_config(RULE)
    pid, fd = pty.fork()
    if pid == 0:  # the child: the router on a terminal
        import os

        os.execve(sys.executable, [sys.executable, "-m", "knotify.cli", "run"], kenv.env)
    try:
        wait_for(lambda: (kenv.runtime / "knotify.sock").exists(), 20, what="the socket")
        kenv.cli("send", "INSTANCE", "VI_1", "MASTER", "100")
        time.sleep(0.5)
    finally:
        import os

        os.kill(pid, signal.SIGTERM)
        chunks = []
        while True:
            try:
                data = os.read(fd, 65536)
            except OSError:
                break
            if not data:
                break
            chunks.append(data)
        os.waitpid(pid, 0)
    text = b"".join(chunks).decode(errors="replace")
    assert "router.started" in text and "event.transition" in text
    assert '{"' not in text, "a terminal gets console lines, not JSON"


def test_history_of_more_events_than_sqlite_takes_parameters(
    kenv: KEnv, router: RouterProcess
) -> None:
    import json as _json

    from knotify import zmtp

    kenv.write_config(RULE.replace('[[rule.action]]', 'on = "every"\n[[rule.action]]')
                      + "[router]\nmax_keys = 40000\n")  # (one key per event here)
    router.start()
    endpoint = f"ipc://{kenv.runtime}/knotify.sock"
    events = [{"v": 1, "id": f"{i:032x}", "host": "h", "kind": "INSTANCE", "name": f"VI_{i}",
               "state": "MASTER", "prio": 100, "seq": i + 1, "ts_ns": 1, "source": "send"}
              for i in range(33_000)]
    for start in range(0, len(events), 500):
        answer = _json.loads(zmtp.request(endpoint, _json.dumps(
            {"v": 1, "op": "events", "events": events[start:start + 500]}).encode(), 30))
        assert answer["ok"]
    history = kenv.history(limit=40_000)
    assert len(history) == 33_000
    assert all(len(e["actions"]) == 1 for e in history)
