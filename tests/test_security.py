"""Who gets in and what root will run: CURVE over TCP, socket permissions, path security."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
from pathlib import Path

import pytest
from conftest import ROOT, KEnv, RouterProcess, need, wait_for

RULE = """
[[rule]]
id = "log-all"
on = "every"
[[rule.action]]
type = "log"
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def keygen(kenv: KEnv, name: str, directory: Path) -> tuple[Path, Path]:
    kenv.cli("keygen", name, "--dir", str(directory))
    return directory / f"{name}.key", directory / f"{name}.key_secret"


def test_keygen_writes_public_and_private_keys_with_safe_modes(kenv: KEnv) -> None:
    keys = kenv.root / "keys"
    public, secret = keygen(kenv, "node1", keys)
    assert stat.S_IMODE(public.stat().st_mode) == 0o644
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert "secret-key" in secret.read_text() and "secret-key" not in public.read_text()
    again = kenv.cli("keygen", "node1", "--dir", str(keys), check=False)
    assert again.returncode == 1 and "already exists" in again.stderr


class Curve:
    """A router listening on TCP with CURVE, and per-host hook configs."""

    def __init__(self, kenv: KEnv) -> None:
        self.kenv = kenv
        self.port = free_port()
        self.keys = kenv.root / "keys"
        self.clients = kenv.root / "clients"
        self.clients.mkdir()
        self.router_pub, self.router_secret = keygen(kenv, "router", self.keys)
        kenv.write_config(RULE + f"""
[router]
listen = ["tcp://127.0.0.1:{self.port}"]
[router.curve]
secret_key = "{self.router_secret}"
clients = "{self.clients}"
""")

    def host_config(self, name: str, authorised: bool, with_key: bool = True) -> Path:
        pub, secret = keygen(self.kenv, name, self.keys)
        if authorised:
            (self.clients / pub.name).write_bytes(pub.read_bytes())
        path = self.kenv.root / f"{name}.toml"
        # A remote host: its own spool, the router over TCP.
        body = f"""
[paths]
state_dir = "{self.kenv.root}/{name}-state"
runtime_dir = "{self.kenv.root}/{name}-run"
[hook]
host = "{name}"
endpoints = ["tcp://127.0.0.1:{self.port}"]
ack_timeout = "1s"
"""
        if with_key:
            body += f'[hook.curve]\nserver_key = "{self.router_pub}"\nsecret_key = "{secret}"\n'
        path.write_text(body)
        return path

    def send(self, config: Path, name: str) -> subprocess.CompletedProcess[str]:
        return self.kenv.hook("-c", str(config), "INSTANCE", name, "MASTER", "100")


def test_curve_authorised_host_gets_in_others_get_nothing_in(
    kenv: KEnv, router: RouterProcess
) -> None:
    curve = Curve(kenv)
    good = curve.host_config("good", authorised=True)
    stranger = curve.host_config("stranger", authorised=False)
    keyless = curve.host_config("keyless", authorised=False, with_key=False)
    router.start()
    assert curve.send(good, "VI_GOOD").returncode == 0
    assert curve.send(stranger, "VI_STRANGER").returncode == 0
    assert curve.send(keyless, "VI_KEYLESS").returncode == 0
    names = {e["name"]: e["host"] for e in kenv.history()}
    assert names == {"VI_GOOD": "good"}
    # The refused hosts kept their events (spooled locally), nothing was lost.
    for host in ("stranger", "keyless"):
        spooled = list((kenv.root / f"{host}-state" / "spool" / "new").glob("*.json"))
        assert len(spooled) == 1
    assert not list((kenv.root / "good-state" / "spool" / "new").glob("*.json"))
    assert router.alive


def test_curve_keys_added_or_removed_later_take_effect(kenv: KEnv, router: RouterProcess) -> None:
    curve = Curve(kenv)
    late = curve.host_config("late", authorised=False)
    router.start()
    curve.send(late, "VI_1")
    assert kenv.history() == []
    (curve.clients / "late.key").write_bytes((curve.keys / "late.key").read_bytes())
    wait_for(lambda: any(r.get("event") == "curve.clients_changed" for r in router.records()),
             what="the router to notice the new key")
    curve.send(late, "VI_2")
    assert [e["name"] for e in kenv.history()] == ["VI_2"]
    (curve.clients / "late.key").unlink()
    wait_for(lambda: len([r for r in router.records()
                          if r.get("event") == "curve.clients_changed"]) == 2,
             what="the router to notice the removal")
    curve.send(late, "VI_3")
    assert [e["name"] for e in kenv.history()] == ["VI_2"]


def test_plain_tcp_is_refused_unless_insecure_is_explicit(
    kenv: KEnv, router: RouterProcess
) -> None:
    port = free_port()
    kenv.write_config(RULE + f'[router]\nlisten = ["tcp://127.0.0.1:{port}"]\n')
    proc = kenv.cli("check-config", check=False)
    assert proc.returncode == 1
    assert "router.listen: TCP needs [router.curve]" in proc.stderr
    assert kenv.cli("run", check=False, timeout=30).returncode == 2
    kenv.write_config(RULE + f'[router]\nlisten = ["tcp://127.0.0.1:{port}"]\ninsecure = true\n')
    router.start()
    assert any(r.get("event") == "tcp.insecure" for r in router.records())
    env = dict(kenv.env, KNOTIFY_ENDPOINT=f"tcp://127.0.0.1:{port}")
    assert kenv.hook("INSTANCE", "VI_1", "MASTER", "100", env=env).returncode == 0
    assert [e["name"] for e in kenv.history()] == ["VI_1"]


def test_secret_key_readable_by_others_is_refused(kenv: KEnv) -> None:
    curve = Curve(kenv)
    curve.router_secret.chmod(0o644)
    proc = kenv.cli("check-config", check=False)
    assert proc.returncode == 1
    assert "router.curve.secret_key" in proc.stderr and "chmod 600" in proc.stderr


def test_runtime_dir_and_socket_are_private_by_default(kenv: KEnv, router: RouterProcess) -> None:
    kenv.write_config(RULE)
    router.start()
    assert stat.S_IMODE(kenv.runtime.stat().st_mode) == 0o750
    assert stat.S_IMODE((kenv.runtime / "knotify.sock").stat().st_mode) == 0o600


def test_group_member_that_is_not_root_can_send(kenv: KEnv, router: RouterProcess) -> None:
    need(os.geteuid() == 0, "needs root to run the hook as another user")
    # keepalived's script user: here 'nobody' with the group 'nogroup'.
    kenv.root.chmod(0o755)
    kenv.write_config(RULE)
    text = kenv.config.read_text().replace("[paths]\n", '[paths]\ngroup = "nogroup"\n', 1)
    kenv.config.write_text(text)
    router.start()
    sock = kenv.runtime / "knotify.sock"
    assert stat.S_IMODE(sock.stat().st_mode) == 0o660
    assert sock.stat().st_gid == 65534 or os.stat(sock).st_gid == _gid("nogroup")
    assert stat.S_IMODE(kenv.spool.stat().st_mode) == 0o2770
    # The hook needs only the standard library: the system Python runs it as 'nobody'
    # (the test venv's interpreter may live where nobody can read it).
    need(Path("/usr/bin/python3").exists(), "needs /usr/bin/python3")
    code = (f"import sys; sys.path.insert(0, {str(ROOT)!r}); from knotify.hook import main; "
            "sys.exit(main())")
    proc = subprocess.run(["/usr/bin/python3", "-I", "-c", code, "INSTANCE", "VI_NB", "MASTER",
                           "100"], env=kenv.env, capture_output=True, text=True, user="nobody",
                          group="nogroup", extra_groups=[], timeout=30, cwd="/")
    assert proc.returncode == 0, proc.stderr
    [ev] = kenv.history()
    assert ev["name"] == "VI_NB" and ev["extra"].get("via") is None, "acked, not spooled"


def _gid(name: str) -> int:
    import grp

    return grp.getgrnam(name).gr_gid


@pytest.mark.parametrize("where", ["dir", "file", "owner"])
def test_root_refuses_actions_others_could_change(kenv: KEnv, where: str) -> None:
    need(os.geteuid() == 0, "path security applies when running as root")
    folder = kenv.root / "scripts"
    folder.mkdir(mode=0o755)
    script = folder / "act.sh"
    script.write_text("#!/bin/sh\nexit 0\n")
    script.chmod(0o755)
    if where == "dir":
        folder.chmod(0o777)
        expected = f"{folder} is writable by everyone (mode 0777)"
    elif where == "file":
        os.chown(script, 0, _gid("nogroup"))
        script.chmod(0o775)
        expected = f"{script} is writable by group nogroup (mode 0775)"
    else:
        os.chown(script, 65534, -1)
        expected = f"{script} is owned by uid 65534, not root"
    kenv.write_config(f'[[rule]]\nid = "x"\n[[rule.action]]\ntype = "exec"\nargv = ["{script}"]\n')
    proc = kenv.cli("check-config", check=False)
    assert proc.returncode == 1
    assert "rule[0].action[0].argv: refusing" in proc.stderr
    assert expected in proc.stderr


def test_root_refuses_a_config_others_could_change(kenv: KEnv) -> None:
    need(os.geteuid() == 0, "path security applies when running as root")
    kenv.write_config(RULE)
    kenv.config.chmod(0o666)
    proc = kenv.cli("check-config", check=False)
    assert proc.returncode == 1
    assert "writable by everyone" in proc.stderr
    assert "a config decides what root runs" in proc.stderr
    # A run-as user that is not root is not subject to the check, as in keepalived.
    kenv.config.chmod(0o644)
    folder = kenv.root / "open"
    folder.mkdir(mode=0o777)
    folder.chmod(0o777)
    script = folder / "x.sh"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    kenv.write_config(f'[[rule]]\nid = "x"\n[[rule.action]]\ntype = "exec"\nargv = ["{script}"]\n'
                      'user = "nobody"\n')
    assert kenv.cli("check-config", check=False).returncode == 0


def test_exec_action_runs_as_configured_user(kenv: KEnv, router: RouterProcess) -> None:
    need(os.geteuid() == 0, "needs root to switch users")
    kenv.root.chmod(0o755)
    drop = kenv.root / "drop"
    drop.mkdir()
    drop.chmod(0o1777)  # nobody must be able to write the output; sticky, like /tmp
    out = drop / "whoami.json"
    script = kenv.root / "who.sh"
    script.write_text(f"#!/bin/sh\necho \"[$(id -u), $(id -g)]\" > {out}\n")
    script.chmod(0o755)
    kenv.write_config(f'[[rule]]\nid = "x"\n[[rule.action]]\ntype = "exec"\nargv = ["{script}"]\n'
                      'user = "nobody"\n')  # no group: the user's own, never root's
    router.start()
    kenv.cli("send", "INSTANCE", "VI_1", "MASTER", "100")
    wait_for(out.exists, what="the action to write its ids")
    assert json.loads(out.read_text()) == [65534, _gid("nogroup")]


def test_oversized_and_malformed_wire_messages_are_refused_and_router_serves_on(
    kenv: KEnv, router: RouterProcess
) -> None:
    from knotify import zmtp

    kenv.write_config(RULE)
    router.start()
    endpoint = f"ipc://{kenv.runtime}/knotify.sock"
    cases = [
        (b"not json", "not JSON"),
        (json.dumps({"v": 2, "op": "event"}).encode(), "version 2 is not supported"),
        (json.dumps({"v": 1, "op": "event", "event": {"v": 1, "id": "x" * 32, "host": "h",
                     "kind": "INSTANCE", "name": "VI_1", "state": "MASTER", "source": "hook",
                     "evil": 1}}).encode(), "unknown field(s): 'evil'"),
        (json.dumps({"v": 1, "op": "drop_tables"}).encode(), "unknown op 'drop_tables'"),
    ]
    for payload, reason in cases:
        answer = json.loads(zmtp.request(endpoint, payload, 5))
        assert answer["ok"] is False and reason in answer["error"]
    # Over the size limit: libzmq drops the connection; no answer, no crash.
    with pytest.raises(OSError):
        zmtp.request(endpoint, b"x" * (300 * 1024), 1)
    rejected = [r for r in router.records() if r.get("event") == "wire.rejected"]
    assert len(rejected) == 4
    kenv.cli("send", "INSTANCE", "VI_1", "MASTER", "100")
    assert [e["name"] for e in kenv.history()] == ["VI_1"]


def test_group_member_spools_under_keepalived_umask_and_router_replays(
    kenv: KEnv, router: RouterProcess
) -> None:
    need(os.geteuid() == 0, "needs root to run the hook as another user")
    need(Path("/usr/bin/python3").exists(), "needs /usr/bin/python3")
    kenv.root.chmod(0o755)
    kenv.write_config(RULE)
    text = kenv.config.read_text().replace("[paths]\n", '[paths]\ngroup = "nogroup"\n', 1)
    kenv.config.write_text(text)
    router.start()  # prepares the spool folder for the group
    router.stop()
    # As after an upgrade or a hand-made spool: the hook has to make the rest itself.
    for sub in ("tmp", "new"):
        if (kenv.spool / sub).exists():
            (kenv.spool / sub).rmdir()
    (kenv.spool / "seq").unlink(missing_ok=True)
    code = (f"import sys; sys.path.insert(0, {str(ROOT)!r}); from knotify.hook import main; "
            "sys.exit(main())")
    for name in ("VI_A", "VI_B"):
        # keepalived runs scripts with umask 0177: folders and files the hook makes must
        # stay usable by the next hook call and by the router.
        proc = subprocess.run(["/usr/bin/python3", "-I", "-c", code, "INSTANCE", name, "FAULT",
                               "100"], env=kenv.env, capture_output=True, text=True,
                              user="nobody", group="nogroup", extra_groups=[], umask=0o177,
                              timeout=30, cwd="/")
        assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert len(kenv.spooled()) == 2
    router.start()
    wait_for(lambda: len(kenv.history()) == 2, 20, what="the spooled events")
    events = kenv.history()
    assert {e["name"] for e in events} == {"VI_A", "VI_B"}
    assert all(e["seq"] > 0 for e in events), "the sequence counter stayed usable"
