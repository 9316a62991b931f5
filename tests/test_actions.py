"""Actions run by a real router: exec, service, log; order, timeouts, supersession, drain."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

from conftest import KEnv, RouterProcess, wait_for

RECORDER = """#!{python}
import json, os, sys, time
out = sys.argv[1]
mode = sys.argv[2] if len(sys.argv) > 2 else ""
rec = {{"argv": sys.argv[3:], "pid": os.getpid(), "pgid": os.getpgid(0), "start": time.time(),
        "env": {{k: v for k, v in os.environ.items() if k.startswith("KNOTIFY_")}},
        "path": os.environ.get("PATH")}}
with open(out, "a") as fh:
    fh.write(json.dumps(rec) + "\\n")
if mode.startswith("sleep="):
    time.sleep(float(mode[6:]))
elif mode.startswith("gate="):  # wait until the test creates the file
    deadline = time.time() + 120
    while not os.path.exists(mode[5:]) and time.time() < deadline:
        time.sleep(0.02)
elif mode == "fail":
    print("something broke", flush=True)
    sys.exit(3)
elif mode == "noisy":
    sys.stdout.write("x" * 10000 + "THE-END")
elif mode == "stubborn":
    import signal, subprocess
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    child = subprocess.Popen([sys.executable, "-c",
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"])
    with open(out + ".child", "w") as fh:
        fh.write(str(child.pid))
    time.sleep(600)
with open(out, "a") as fh:
    fh.write(json.dumps({{"end": os.getpid(), "t": time.time()}}) + "\\n")
"""


def recorder(kenv: KEnv) -> Path:
    path = kenv.root / "recorder.py"
    path.write_text(RECORDER.format(python=sys.executable))
    path.chmod(0o755)
    return path


def records(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def starts(path: Path) -> list[dict[str, Any]]:
    return [r for r in records(path) if "argv" in r]


def exec_rule(kenv: KEnv, out: Path, mode: str = "", extra: str = "", match: str = "",
              action_extra: str = "") -> str:
    return f"""
[[rule]]
id = "rec"
{match or 'kind = "INSTANCE"'}
{extra}
[[rule.action]]
type = "exec"
argv = ["{recorder(kenv)}", "{out}", "{mode}", "{{name}}", "{{state}}", "{{prev_state}}", "{{id}}"]
{action_extra}
"""


def actions_of(kenv: KEnv, name: str) -> list[dict[str, Any]]:
    return [a for e in reversed(kenv.history(name=name)) for a in e["actions"]]


def test_exec_gets_fields_as_whole_arguments_and_env(kenv: KEnv, router: RouterProcess) -> None:
    out = kenv.root / "out.jsonl"
    kenv.write_config(exec_rule(kenv, out))
    router.start()
    kenv.cli("send", "INSTANCE", "VI_1", "MASTER", "100")
    wait_for(lambda: len(records(out)) == 2, what="the action to run and finish")
    [rec] = starts(out)
    [ev] = kenv.history()
    assert rec["argv"] == ["VI_1", "MASTER", "INIT", ev["id"]]
    env = rec["env"]
    assert env["KNOTIFY_NAME"] == "VI_1" and env["KNOTIFY_STATE"] == "MASTER"
    assert env["KNOTIFY_PREV_STATE"] == "INIT" and env["KNOTIFY_ID"] == ev["id"]
    assert env["KNOTIFY_KIND"] == "INSTANCE" and env["KNOTIFY_PRIO"] == "100"
    assert env["KNOTIFY_RULE"] == "rec" and env["KNOTIFY_CLASS"] == "transition"
    assert rec["path"] == "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    # Its own session: the action can be killed as a group without touching the router.
    assert rec["pgid"] == rec["pid"]
    wait_for(lambda: actions_of(kenv, "VI_1") and actions_of(kenv, "VI_1")[0]["status"] == "ok",
             what="the outcome to be journaled")
    [act] = actions_of(kenv, "VI_1")
    assert act["exit_code"] == 0 and act["kind"] == "exec"


def test_exec_failure_records_exit_code_and_output_tail(kenv: KEnv, router: RouterProcess) -> None:
    out = kenv.root / "out.jsonl"
    kenv.write_config(exec_rule(kenv, out, "fail"))
    router.start()
    kenv.cli("send", "INSTANCE", "VI_1", "BACKUP", "100")
    act = wait_for(lambda: next((a for a in actions_of(kenv, "VI_1") if a["status"] == "failed"),
                                None), what="the failed outcome")
    assert act["exit_code"] == 3
    assert "something broke" in act["output"]
    assert "exit code 3" in act["detail"]


def test_exec_output_keeps_only_the_tail(kenv: KEnv, router: RouterProcess) -> None:
    out = kenv.root / "out.jsonl"
    kenv.write_config(exec_rule(kenv, out, "noisy"))
    router.start()
    kenv.cli("send", "INSTANCE", "VI_1", "BACKUP", "100")
    act = wait_for(lambda: next((a for a in actions_of(kenv, "VI_1") if a["status"] == "ok"),
                                None), what="the outcome")
    assert act["output"].endswith("THE-END")
    assert len(act["output"]) == 4096


def test_timeout_kills_whole_group_even_if_sigterm_ignored_and_next_runs(
    kenv: KEnv, router: RouterProcess
) -> None:
    out = kenv.root / "out.jsonl"
    kenv.write_config(exec_rule(kenv, out, "stubborn", action_extra='timeout = "1s"\n'
                                'kill_grace = "500ms"'))
    router.start()
    kenv.cli("send", "INSTANCE", "VI_1", "BACKUP", "100")
    kenv.cli("send", "INSTANCE", "VI_1", "MASTER", "100")
    wait_for(lambda: len(starts(out)) == 2, 30, what="the second action to start after the first "
             "timed out")
    acts = wait_for(lambda: [a for a in actions_of(kenv, "VI_1") if a["status"] == "timeout"]
                    if len([a for a in actions_of(kenv, "VI_1") if a["status"] == "timeout"]) == 2
                    else None, 30, what="both runs to time out")
    assert "SIGKILL" in acts[0]["detail"]
    # The grandchild (which also ignored SIGTERM) is gone too.
    child = int((kenv.root / "out.jsonl.child").read_text())
    wait_for(lambda: not _alive(child), 10, what="the grandchild to be killed")
    for rec in starts(out):
        assert not _alive(rec["pid"])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie counts as dead.
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_actions_for_one_key_run_one_at_a_time_in_order_other_keys_in_parallel(
    kenv: KEnv, router: RouterProcess
) -> None:
    out = kenv.root / "out.jsonl"
    # Each action waits for its key's gate file: VI_A's first run holds VI_A's queue until
    # the test opens the gate; VI_B's gate is open from the start.
    kenv.write_config(exec_rule(kenv, out, f"gate={kenv.root}/gate-{{name}}",
                                extra='on = "every"'))
    (kenv.root / "gate-VI_B").touch()
    router.start()
    states = ["BACKUP", "MASTER", "FAULT", "BACKUP", "MASTER"]
    for state in states:
        kenv.cli("send", "INSTANCE", "VI_A", state, "100")
    wait_for(lambda: starts(out), 30, what="VI_A's first action to start")
    kenv.cli("send", "INSTANCE", "VI_B", "MASTER", "100")

    def b_ended() -> bool:
        recs = records(out)
        b_pids = {r["pid"] for r in recs if "argv" in r and r["argv"][0] == "VI_B"}
        return any(r.get("end") in b_pids for r in recs)

    wait_for(b_ended, 30, what="VI_B's action to run to its end")
    # VI_B did not wait for VI_A's queue; VI_A's other four runs wait behind its first.
    a_runs = [r for r in starts(out) if r["argv"][0] == "VI_A"]
    assert [r["argv"][1] for r in a_runs] == ["BACKUP"]
    assert not [r for r in records(out) if r.get("end") == a_runs[0]["pid"]]
    assert [a["status"] for a in actions_of(kenv, "VI_A")] == ["running"] + ["pending"] * 4
    (kenv.root / "gate-VI_A").touch()
    wait_for(lambda: len([r for r in records(out) if "end" in r]) == 6, 60,
             what="all six actions to finish")
    # VI_A's runs in event order, one at a time: in the order the recorder wrote its lines,
    # each run ended before the next one started.
    recs = records(out)
    a_pids = {r["pid"] for r in recs if "argv" in r and r["argv"][0] == "VI_A"}
    a_lines = [r for r in recs if r.get("pid") in a_pids or r.get("end") in a_pids]
    assert [r["argv"][1] for r in a_lines if "argv" in r] == states
    assert [("start" if "argv" in r else "end") for r in a_lines] == ["start", "end"] * 5
    assert all(a_lines[i + 1].get("end") == a_lines[i]["pid"] for i in range(0, 10, 2))


def test_superseded_pending_action_is_skipped_and_journaled(
    kenv: KEnv, router: RouterProcess
) -> None:
    out = kenv.root / "out.jsonl"
    kenv.write_config(exec_rule(kenv, out, extra='skip_if_superseded = true\ndelay = "1s"'))
    router.start()
    # Together, so BACKUP is there within MASTER's delay however slow the machine is.
    kenv.send_together(("h1", "INSTANCE", "VI_1", "MASTER", 100),
                       ("h1", "INSTANCE", "VI_1", "BACKUP", 100))
    acts = wait_for(lambda: [a for a in actions_of(kenv, "VI_1") if a["status"] != "pending"]
                    if all(a["status"] not in ("pending", "running")
                           for a in actions_of(kenv, "VI_1")) else None, 20,
                    what="both runs to finish")
    assert [a["status"] for a in acts] == ["skipped", "ok"]
    assert "superseded" in acts[0]["detail"] and "BACKUP" in acts[0]["detail"]
    assert [r["argv"][1] for r in starts(out)] == ["BACKUP"]


def test_without_skip_option_every_transition_runs(kenv: KEnv, router: RouterProcess) -> None:
    out = kenv.root / "out.jsonl"
    kenv.write_config(exec_rule(kenv, out, extra='delay = "500ms"'))
    router.start()
    kenv.cli("send", "INSTANCE", "VI_1", "MASTER", "100")
    kenv.cli("send", "INSTANCE", "VI_1", "BACKUP", "100")
    wait_for(lambda: len(starts(out)) == 2, 20, what="both runs")
    assert [r["argv"][1] for r in starts(out)] == ["MASTER", "BACKUP"]


def test_repeats_do_not_fire_transition_rules(kenv: KEnv, router: RouterProcess) -> None:
    out = kenv.root / "out.jsonl"
    kenv.write_config(exec_rule(kenv, out, match='kind = "INSTANCE"\nstate = "MASTER"'))
    router.start()
    # keepalived reports one change to notify_master, the generic notify and the FIFO.
    assert kenv.hook("master", "VI_1").returncode == 0
    assert kenv.hook("INSTANCE", "VI_1", "MASTER", "100").returncode == 0
    kenv.cli("send", "INSTANCE", "VI_1", "MASTER_PRIORITY", "90")
    wait_for(lambda: len(kenv.history()) == 3, what="three events")
    events = list(reversed(kenv.history()))
    assert [e["class"] for e in events] == ["transition", "repeat", "notice"]
    # An event's runs are journaled with it: only the transition has one.
    assert [len(e["actions"]) for e in events] == [1, 0, 0]
    [state] = kenv.status()
    assert state["state"] == "MASTER" and state["prio"] == 90
    # A later real change to MASTER runs after anything queued before it for VI_1.
    kenv.cli("send", "INSTANCE", "VI_1", "BACKUP", "100")
    kenv.cli("send", "INSTANCE", "VI_1", "MASTER", "100")
    marker = kenv.history()[0]["id"]
    wait_for(lambda: any(r["argv"][3] == marker for r in starts(out)), 30,
             what="the later MASTER's action")
    assert [r["argv"][3] for r in starts(out)] == [events[0]["id"], marker]


def test_from_init_can_be_filtered(kenv: KEnv, router: RouterProcess) -> None:
    out = kenv.root / "out.jsonl"
    kenv.write_config(exec_rule(kenv, out, match='state = "BACKUP"\nfrom = "!INIT"'))
    router.start()
    kenv.cli("send", "INSTANCE", "VI_1", "BACKUP", "100")   # start-up: INIT -> BACKUP
    kenv.cli("send", "INSTANCE", "VI_1", "MASTER", "100")
    kenv.cli("send", "INSTANCE", "VI_1", "BACKUP", "100")   # a real MASTER -> BACKUP
    events = list(reversed(kenv.history()))
    assert [len(e["actions"]) for e in events] == [0, 0, 1]
    # Runs of one key start in event order: once the last event's has started, any run of
    # the two before it would have too.
    wait_for(lambda: any(r["argv"][3] == events[2]["id"] for r in starts(out)), 30,
             what="the action")
    assert [(r["argv"][1], r["argv"][2]) for r in starts(out)] == [("BACKUP", "MASTER")]


def test_service_action_runs_systemctl_with_unit_as_one_argument(
    kenv: KEnv, router: RouterProcess
) -> None:
    # There is no systemd in the test machine: a stand-in systemctl records its argv.
    out = kenv.root / "systemctl.jsonl"
    fake = kenv.root / "systemctl"
    fake.write_text(f"#!{sys.executable}\nimport json, sys\n"
                    f"open({str(out)!r}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n")
    fake.chmod(0o755)
    kenv.write_config(f"""
[[rule]]
id = "svc"
state = "MASTER"
[[rule.action]]
type = "service"
unit = "haproxy@{{name}}.service"
command = "restart"
systemctl = "{fake}"
""")
    router.start()
    kenv.cli("send", "INSTANCE", "VI 1; rm -rf /", "MASTER", "100")
    wait_for(out.exists, what="systemctl to be called")
    assert json.loads(out.read_text()) == ["--no-ask-password", "restart", "--",
                                           "haproxy@VI 1; rm -rf /.service"]


def test_sigterm_drains_running_action_and_keeps_pending_for_restart(
    kenv: KEnv, router: RouterProcess
) -> None:
    out = kenv.root / "out.jsonl"
    gate = kenv.root / "gate"
    kenv.write_config(exec_rule(kenv, out, f"gate={gate}", extra='on = "every"')
                      + '\n[router]\ndrain_timeout = "60s"\n')
    router.start()
    kenv.cli("send", "INSTANCE", "VI_1", "BACKUP", "100")
    kenv.cli("send", "INSTANCE", "VI_1", "MASTER", "100")
    wait_for(lambda: len(starts(out)) == 1, what="the first action to start")
    # The first action runs until the router has taken the SIGTERM; then it may end.
    router.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
    wait_for(lambda: any(r.get("event") == "router.stopping" for r in router.records()), 30,
             what="the router to say it is stopping")
    gate.touch()
    assert router.stop(signal.SIGTERM) == 0
    recs = records(out)
    # The running action finished (drained), the queued one did not start.
    assert len([r for r in recs if "end" in r]) == 1
    assert len(starts(out)) == 1
    # After a restart the pending run goes ahead; nothing ran twice.
    router.start()
    wait_for(lambda: len([r for r in records(out) if "end" in r]) == 2, 20,
             what="the pending action to run after restart")
    assert [r["argv"][1] for r in starts(out)] == ["BACKUP", "MASTER"]
    assert [a["status"] for a in actions_of(kenv, "VI_1")] == ["ok", "ok"]


def test_sigkill_during_action_marks_it_interrupted_not_repeated(
    kenv: KEnv, router: RouterProcess
) -> None:
    out = kenv.root / "out.jsonl"
    kenv.write_config(exec_rule(kenv, out, "sleep={prio}"))  # the prio says how long it runs
    router.start()
    kenv.cli("send", "INSTANCE", "VI_1", "MASTER", "30")
    wait_for(lambda: len(starts(out)) == 1, what="the action to start")
    router.kill()
    router.start()
    acts = wait_for(lambda: [a for a in actions_of(kenv, "VI_1") if a["status"] == "interrupted"],
                    what="the run to be marked interrupted")
    assert "not repeated" in acts[0]["detail"]
    # A later change of VI_1 runs after anything queued before it for VI_1: once it has
    # started, a repeat of the interrupted run would have too.
    kenv.cli("send", "INSTANCE", "VI_1", "BACKUP", "0")
    marker = kenv.history()[0]["id"]
    wait_for(lambda: any(r["argv"][3] == marker for r in starts(out)), 30,
             what="the later change's action")
    try:
        assert [r["argv"][1] for r in starts(out)] == ["MASTER", "BACKUP"]
    finally:
        os.kill(starts(out)[0]["pid"], signal.SIGKILL)


def test_log_action_writes_a_line_with_the_event_id(kenv: KEnv, router: RouterProcess) -> None:
    kenv.write_config("""
[[rule]]
id = "say"
[[rule.action]]
type = "log"
level = "warning"
message = "{subject} is {state} on {host} (was {prev_state})"
""")
    router.start()
    kenv.cli("send", "--host", "node7", "INSTANCE", "VI_1", "FAULT", "100")
    [ev] = kenv.history()
    line = wait_for(lambda: next((r for r in router.records() if r.get("event") == "rule.log"),
                                 None), what="the log line")
    assert line["message"] == "VI_1 is FAULT on node7 (was INIT)"
    assert line["level"] == "warning" and line["event_id"] == ev["id"]
