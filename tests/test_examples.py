"""The shipped examples work: config/knotify.toml, config/keepalived.conf, check_haproxy.sh.

The knotify config is validated and then run with a real router (its rules restart
haproxy once per real MASTER, skip a superseded restart, and alert on FAULT); the
keepalived config goes through keepalived's own --config-test with the scripts it
names installed in a root-owned folder; the haproxy check runs against a real haproxy.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ROOT, KEnv, RouterProcess, need, wait_for

CONFIG = ROOT / "config"
KNOTIFY_TOML = CONFIG / "knotify.toml"
KEEPALIVED_CONF = CONFIG / "keepalived.conf"
CHECK_HAPROXY = CONFIG / "check_haproxy.sh"
#: What config/keepalived.conf expects in /usr/local/sbin, and where the repo has it.
INSTALLED = {
    "knotify-notify": ROOT / "hooks" / "knotify-notify",
    "knotify-fifo": ROOT / "hooks" / "knotify-fifo",
    "check_haproxy": CHECK_HAPROXY,
}


def knotify(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "knotify.cli", *args], capture_output=True,
                          text=True, timeout=60, env=env)


# -- config/knotify.toml and the embedded default ----------------------------------------


def test_production_config_passes_check_config() -> None:
    proc = knotify("check-config", str(KNOTIFY_TOML))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"OK: {KNOTIFY_TOML}: 3 rule(s)")
    for rule_id in ("haproxy-on-master", "log-transitions", "alert-on-fault"):
        assert f"rule {rule_id}: on transition" in proc.stdout
    assert "service restart haproxy.service" in proc.stdout
    assert "socket   ipc:///run/knotify/knotify.sock" in proc.stdout
    assert "journal  /var/lib/knotify/journal.db" in proc.stdout


def test_embedded_default_passes_check_config(tmp_path: Path) -> None:
    from knotify import config as configmod
    from knotify import paths

    config = configmod.load(None)
    assert config.path == configmod.EMBEDDED
    assert [r.id for r in config.rules] == ["log-transitions"]
    assert [a.kind for a in config.rules[0].actions] == ["log"]
    # Through the CLI, when no config file is found anywhere.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KNOTIFY_", "XDG_"))}
    env["HOME"] = str(tmp_path)
    need(not os.path.exists(paths.SYSTEM_CONFIG),
         f"{paths.SYSTEM_CONFIG} exists here, so the CLI would not use the default")
    proc = knotify("check-config", env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("OK: <embedded default>: 1 rule(s)")


def _recorder(path: Path, log: Path) -> Path:
    """A program that appends its arguments (one JSON list per line) to ``log``."""
    path.write_text("#!/bin/sh\n"
                    f"exec {shlex.quote(sys.executable)} -c 'import json, sys; "
                    f"open(sys.argv[1], \"a\").write(json.dumps(sys.argv[2:]) + \"\\n\")' "
                    f"{shlex.quote(str(log))} \"$@\"\n")
    path.chmod(0o755)
    return path


def _calls(log: Path) -> list[list[str]]:
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines()]


def _send_batch(kenv: KEnv, events: list[tuple[str, str, int]]) -> None:
    """Several events in one message: the router journals them in one transaction."""
    from knotify import zmtp

    now = time.time_ns()
    wire = [{"v": 1, "id": os.urandom(16).hex(), "host": "lb1", "kind": "INSTANCE",
             "name": name, "state": state, "prio": prio, "seq": 0, "ts_ns": now + i,
             "source": "send"} for i, (name, state, prio) in enumerate(events)]
    payload = json.dumps({"v": 1, "op": "events", "events": wire}).encode()
    answer = json.loads(zmtp.request(f"ipc://{kenv.runtime}/knotify.sock", payload, 10))
    assert answer["ok"] and answer["rejected"] == [], answer


def test_production_rules_restart_once_skip_superseded_and_alert_on_fault(
    kenv: KEnv, router: RouterProcess
) -> None:
    text = KNOTIFY_TOML.read_text()
    text = re.sub(r'(?m)^runtime_dir = "[^"]*"', f'runtime_dir = "{kenv.runtime}"', text)
    text = re.sub(r'(?m)^state_dir = "[^"]*"', f'state_dir = "{kenv.state}"', text)
    bindir = kenv.root / "bin"
    bindir.mkdir()
    systemctl = _recorder(bindir / "systemctl", kenv.root / "systemctl.log")
    logger = _recorder(bindir / "logger", kenv.root / "logger.log")
    text = text.replace("[defaults]\n", f'[defaults]\nsystemctl = "{systemctl}"\n', 1)
    assert text.count('"/usr/bin/logger"') == 1
    text = text.replace('"/usr/bin/logger"', f'"{logger}"')
    kenv.config.write_text(text)
    router.start()

    def send(*args: str) -> None:
        kenv.cli("send", "--host", "lb1", "INSTANCE", "VI_1", *args)

    def runs(rule: str) -> list[dict[str, object]]:
        return [a for e in kenv.history() for a in e["actions"] if a["rule"] == rule]

    send("BACKUP", "150")
    send("MASTER", "150")
    send("MASTER", "150")  # the same change reported again (notify, notify_master, FIFO)
    wait_for(lambda: _calls(kenv.root / "systemctl.log"), 10, what="the haproxy restart")
    assert _calls(kenv.root / "systemctl.log") == [
        ["--no-ask-password", "restart", "--", "haproxy.service"]]
    assert [r["status"] for r in runs("haproxy-on-master")] == ["ok"]

    # MASTER and, before its restart could start, BACKUP: the restart is skipped.
    _send_batch(kenv, [("VI_1", "BACKUP", 150), ("VI_1", "MASTER", 150),
                       ("VI_1", "BACKUP", 90)])
    wait_for(lambda: len(runs("haproxy-on-master")) == 2
             and runs("haproxy-on-master")[0]["status"] != "pending", 10,
             what="the superseded restart to be decided")
    latest = runs("haproxy-on-master")[0]
    assert latest["status"] == "skipped" and "superseded" in str(latest["detail"])
    assert len(_calls(kenv.root / "systemctl.log")) == 1

    # Other instances do not restart haproxy; FAULT alerts (log at error + logger).
    kenv.cli("send", "--host", "lb1", "INSTANCE", "VI_2", "MASTER", "100")
    send("FAULT", "150")
    wait_for(lambda: _calls(kenv.root / "logger.log"), 10, what="the FAULT alert")
    [alert] = _calls(kenv.root / "logger.log")
    assert alert[:5] == ["-p", "daemon.alert", "-t", "knotify", "--"]
    assert alert[5].startswith("FAULT: INSTANCE VI_1 on lb1 (BACKUP -> FAULT) at ")
    assert len(_calls(kenv.root / "systemctl.log")) == 1
    fault = [r for r in router.records() if r.get("event") == "rule.log"
             and str(r.get("message", "")).startswith("FAULT:")]
    assert [r["level"] for r in fault] == ["error"]


# -- config/keepalived.conf -------------------------------------------------------------


def _commands(conf: str) -> dict[str, list[str]]:
    """keyword -> command strings of the notify/script lines in a keepalived config."""
    out: dict[str, list[str]] = {}
    for line in conf.splitlines():
        line = line.split("#", 1)[0].strip()
        m = re.match(r"^(notify\w*|vrrp_notify_fifo_script|script)\s+(.*)$", line)
        if m:
            out.setdefault(m.group(1), []).append(m.group(2))
    return out


def test_keepalived_example_hooks_are_quoted_and_parse_as_intended() -> None:
    from knotify import keepalived

    commands = _commands(KEEPALIVED_CONF.read_text())
    expected = {"notify_master": "MASTER", "notify_backup": "BACKUP",
                "notify_fault": "FAULT", "notify_stop": "STOP", "notify_deleted": "DELETED"}
    for keyword, state in expected.items():
        [command] = commands[keyword]
        # One config word (keepalived would read any further word as a user name),
        # which keepalived then splits into the program and its arguments.
        [whole] = shlex.split(command)
        words = shlex.split(whole)
        assert words[0] == "/usr/local/sbin/knotify-notify"
        fields = keepalived.parse_argv(words[1:])
        assert (fields["kind"], fields["name"], fields["state"]) == ("INSTANCE", "VI_1", state)
    [generic] = commands["notify"]
    [whole] = shlex.split(generic)
    words = shlex.split(whole)
    assert words == ["/usr/local/sbin/knotify-notify"]
    fields = keepalived.parse_argv([*words[1:], "INSTANCE", "VI_1", "MASTER", "150"])
    assert (fields["kind"], fields["state"], fields["prio"]) == ("INSTANCE", "MASTER", 150)
    assert commands["vrrp_notify_fifo_script"] == ["/usr/local/sbin/knotify-fifo"]
    assert commands["script"] == ['"/usr/local/sbin/check_haproxy"']


def _ethernet_interface() -> str | None:
    net = Path("/sys/class/net")
    if (net / "eth0").exists():
        return "eth0"
    for dev in sorted(net.iterdir()) if net.exists() else []:
        try:
            if dev.name != "lo" and (dev / "type").read_text().strip() == "1":
                return dev.name
        except OSError:
            continue
    return None


def test_keepalived_example_passes_config_test() -> None:
    keepalived = shutil.which("keepalived")
    need(keepalived is not None, "keepalived is not installed (apt-get install keepalived)")
    need(os.geteuid() == 0, "keepalived checks root-run scripts' ownership; run as root")
    interface = _ethernet_interface()
    need(interface is not None, "no Ethernet interface for the example's vrrp_instance")
    assert keepalived is not None and interface is not None
    conf = KEEPALIVED_CONF.read_text()
    named = set(re.findall(r"/usr/local/sbin/([\w.-]+)", conf))
    assert named == set(INSTALLED), "the example names a script the repo does not ship"
    # Install the scripts as the README says, into a root-owned folder of our own
    # (/usr/local/sbin is the system's); mkdtemp gives root, 0700, under sticky /tmp.
    sbin = Path(tempfile.mkdtemp(prefix="kn-sbin-", dir="/tmp"))
    try:
        sbin.chmod(0o755)
        for name, source in INSTALLED.items():
            shutil.copyfile(source, sbin / name)
            (sbin / name).chmod(0o755)
        conf = conf.replace("/usr/local/sbin/", f"{sbin}/").replace("eth0", interface)
        (sbin / "keepalived.conf").write_text(conf)
        proc = subprocess.run([keepalived, "--config-test", "-f", str(sbin / "keepalived.conf")],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert proc.stderr.strip() == "", proc.stderr
    finally:
        shutil.rmtree(sbin, ignore_errors=True)


# -- config/check_haproxy.sh ------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


class Haproxy:
    """A real haproxy on a free localhost port, and the check script's settings for it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = _free_port()
        self.cfg = root / "haproxy.cfg"
        self.cfg.write_text(
            "defaults\n    mode tcp\n    timeout connect 1s\n    timeout client 5s\n"
            "    timeout server 5s\n"
            f"frontend fe\n    bind 127.0.0.1:{self.port}\n    default_backend be\n"
            "backend be\n    server s1 127.0.0.1:9\n")
        self.pidfile = root / "haproxy.pid"
        self.restarts = root / "restarts.log"
        self.stamp = root / "stamp"
        self.proc: subprocess.Popen[bytes] | None = None
        self.haproxy = shutil.which("haproxy") or "haproxy"

    def start(self) -> None:
        # -db: foreground, so this test is its parent and reaps it.
        self.proc = subprocess.Popen([self.haproxy, "-db", "-f", str(self.cfg)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.pidfile.write_text(f"{self.proc.pid}\n")
        wait_for(lambda: _listening(self.port), 10, what="haproxy to listen")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def restart_command(self, starts_haproxy: bool) -> str:
        """A restart command that records each call (and maybe really starts haproxy)."""
        script = self.root / "restart"
        body = f'echo "restart $*" >> {shlex.quote(str(self.restarts))}\n'
        if starts_haproxy:
            body += (f"{shlex.quote(self.haproxy)} -D -f {shlex.quote(str(self.cfg))} "
                     f"-p {shlex.quote(str(self.pidfile))}\n")
        script.write_text("#!/bin/sh\n" + body)
        script.chmod(0o755)
        return f"{script} haproxy.service"

    def check(self, port: int | None = None, starts_haproxy: bool = False,
              **extra: str) -> subprocess.CompletedProcess[str]:
        env = {
            # The script sets its own PATH: a useless one here proves it.
            "PATH": "/nonexistent",
            "HAPROXY_PIDFILE": str(self.pidfile),
            "HAPROXY_CHECK_PORT": str(self.port if port is None else port),
            "HAPROXY_RESTART_CMD": self.restart_command(starts_haproxy),
            "HAPROXY_RESTART_STAMP": str(self.stamp),
            "HAPROXY_RECHECK_WAIT": "3",
            **extra,
        }
        return subprocess.run([str(CHECK_HAPROXY)], env=env, capture_output=True, text=True,
                              timeout=60)

    def restart_calls(self) -> list[str]:
        return self.restarts.read_text().splitlines() if self.restarts.exists() else []

    def cleanup(self) -> None:
        self.stop()
        # A daemonised haproxy (from a restart command) writes its pid to the pidfile.
        try:
            pid = int(self.pidfile.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return
        if self.proc is None or pid != self.proc.pid:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass


@pytest.fixture
def haproxy(tmp_path: Path) -> Iterator[Haproxy]:
    need(shutil.which("haproxy") is not None, "haproxy is not installed (apt-get install haproxy)")
    need(shutil.which("ss") is not None, "ss is not installed (apt-get install iproute2)")
    hp = Haproxy(tmp_path)
    try:
        yield hp
    finally:
        hp.cleanup()


def test_check_haproxy_is_executable_posix_sh() -> None:
    assert CHECK_HAPROXY.stat().st_mode & stat.S_IXUSR
    assert CHECK_HAPROXY.read_text().startswith("#!/bin/sh\n")
    dash = shutil.which("dash")
    if dash:
        proc = subprocess.run([dash, "-n", str(CHECK_HAPROXY)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr


def test_check_haproxy_healthy_exits_0_without_restart(haproxy: Haproxy) -> None:
    haproxy.start()
    proc = haproxy.check()
    assert proc.returncode == 0, proc.stderr
    assert haproxy.restart_calls() == []
    assert not haproxy.stamp.exists()


def test_check_haproxy_dead_restarts_once_then_is_rate_limited(haproxy: Haproxy) -> None:
    haproxy.start()
    haproxy.stop()
    first = haproxy.check()
    assert first.returncode == 1, first.stderr
    assert haproxy.restart_calls() == ["restart haproxy.service"]
    assert "still unhealthy" in first.stderr
    assert int(haproxy.stamp.read_text()) == pytest.approx(time.time(), abs=30)
    # The next interval: still dead, but the one restart was spent.
    second = haproxy.check()
    assert second.returncode == 1
    assert haproxy.restart_calls() == ["restart haproxy.service"]
    assert "not restarting" in second.stderr


def test_check_haproxy_restart_that_works_exits_0(haproxy: Haproxy) -> None:
    haproxy.start()
    haproxy.stop()
    proc = haproxy.check(starts_haproxy=True)
    assert proc.returncode == 0, proc.stderr
    assert haproxy.restart_calls() == ["restart haproxy.service"]
    assert "healthy again" in proc.stderr
    # Healthy from now on: no further restarts.
    assert haproxy.check().returncode == 0
    assert haproxy.restart_calls() == ["restart haproxy.service"]


def test_check_haproxy_running_but_not_listening_fails(haproxy: Haproxy) -> None:
    haproxy.start()
    proc = haproxy.check(port=_free_port(), HAPROXY_RECHECK_WAIT="0")
    assert proc.returncode == 1
    assert haproxy.restart_calls() == ["restart haproxy.service"]
    assert "running: yes" in proc.stderr


def test_check_haproxy_restarts_again_after_the_interval(haproxy: Haproxy) -> None:
    haproxy.stamp.write_text(f"{int(time.time()) - 301}\n")
    proc = haproxy.check(HAPROXY_RECHECK_WAIT="0")  # haproxy never started: dead
    assert proc.returncode == 1
    assert haproxy.restart_calls() == ["restart haproxy.service"]
    assert haproxy.check(HAPROXY_RECHECK_WAIT="0", HAPROXY_RESTART_INTERVAL="0").returncode == 1
    assert haproxy.restart_calls() == ["restart haproxy.service"] * 2


def test_check_haproxy_refuses_bad_settings(haproxy: Haproxy) -> None:
    proc = haproxy.check(HAPROXY_RESTART_INTERVAL="5m")
    assert proc.returncode == 2
    assert "whole seconds" in proc.stderr
    assert haproxy.restart_calls() == []
