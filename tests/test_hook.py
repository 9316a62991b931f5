"""knotify-notify as keepalived runs it: real subprocesses, a real router or none at all."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import KEnv, RouterProcess

from knotify import client, hook, paths
from knotify import config as configmod

ROOT = Path(__file__).resolve().parent.parent

LOG_RULE = """
[[rule]]
id = "log-all"
on = "every"
[[rule.action]]
type = "log"
"""


def spooled_events(directory: Path) -> list[dict[str, Any]]:
    new = directory / "new"
    files = sorted(new.glob("*.json")) if new.exists() else []
    return [json.loads(f.read_text()) for f in files]


def one_clean_line(stderr: str) -> str:
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("knotify-notify: ")
    assert "Traceback" not in stderr
    return lines[0]


@pytest.fixture
def silent_endpoint(kenv: KEnv) -> Iterator[str]:
    """An ipc endpoint that accepts connections and never says a word."""
    path = kenv.root / "silent.sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.listen(64)
    try:
        yield f"ipc://{path}"
    finally:
        server.close()


# --------------------------------------------------------------------------- malformed calls


@pytest.mark.parametrize(("args", "wanted"), [
    (["master"], "master hook: missing the instance name"),
    ([], "no arguments"),
    (["INSTANCE", "VI_1", "MASTR", "100"], "unknown state 'MASTR'"),
    (["INSTANCE", "VI_1", "MASTER", "300"], "priority must be a number 0..255"),
    (["promote", "VI_1"], "unknown form 'promote VI_1'"),
])
def test_malformed_call_router_down_exit_2_one_line_and_spooled(
    kenv: KEnv, args: list[str], wanted: str
) -> None:
    proc = kenv.hook(*args)
    assert proc.returncode == 2
    line = one_clean_line(proc.stderr)
    assert wanted in line
    assert f"(argv: {' '.join(args)!r})" in line
    assert proc.stdout == ""
    [event] = spooled_events(kenv.spool)
    assert (event["kind"], event["state"], event["source"], event["form"]) == (
        "INVALID", "INVALID", "hook", "invalid")
    assert wanted in str(event["error"])
    assert event["argv"] == args


def test_malformed_call_router_up_is_journaled_as_invalid(kenv: KEnv,
                                                          router: RouterProcess) -> None:
    kenv.write_config(LOG_RULE)
    router.start()
    proc = kenv.hook("group", "deleted", "G1")
    assert proc.returncode == 2
    assert "keepalived has no deleted hook for sync groups" in one_clean_line(proc.stderr)
    [ev] = kenv.history()
    assert (ev["kind"], ev["class"], ev["argv"]) == ("INVALID", "invalid",
                                                     ["group", "deleted", "G1"])
    assert "no deleted hook for sync groups" in ev["error"]
    assert ev["actions"] == []  # rules never fire on invalid events
    assert kenv.spooled() == []


@pytest.mark.parametrize("args", [
    ["w"] * 300,                                   # more words than the wire allows
    ["INSTANCE", "x" * 5000, "MASTER", "100"],     # a word longer than the wire allows
    ["user-word-" + "y" * 5000, "INSTANCE", "VI_1", "MASTER", "100"],  # valid, huge user word
])
def test_oversized_argv_still_reaches_the_journal(kenv: KEnv, router: RouterProcess,
                                                  args: list[str]) -> None:
    kenv.write_config(LOG_RULE)
    router.start()
    proc = kenv.hook(*args)
    assert proc.returncode in (0, 2)
    [ev] = kenv.history()
    assert ev["kind"] == ("INSTANCE" if proc.returncode == 0 else "INVALID")
    assert kenv.spooled() == []
    assert not (kenv.spool / "bad").exists() or not list((kenv.spool / "bad").iterdir())


def test_help_prints_usage(kenv: KEnv) -> None:
    proc = kenv.hook("--help")
    assert proc.returncode == 0 and proc.stdout.startswith("usage: knotify-notify")
    assert kenv.spooled() == []


# --------------------------------------------------------------------------- router down


@pytest.mark.parametrize("args", [
    ["kb1", "I1-generic", "arg with space", "INSTANCE", "VI_1", "BACKUP", "100"],
    ["master", "VI_1"],
    ["rs-down", "[10.0.0.5]:tcp:80", "FWM", "5"],
])
def test_router_down_exit_0_silent_and_spooled(kenv: KEnv, args: list[str]) -> None:
    proc = kenv.hook(*args)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")
    [event] = spooled_events(kenv.spool)
    assert event["argv"] == args and event["source"] == "hook"
    assert event["host"] == os.uname().nodename
    assert isinstance(event["seq"], int) and event["seq"] >= 1
    assert len(str(event["id"])) == 32


def test_spooled_sequence_grows_per_call(kenv: KEnv) -> None:
    for i in range(5):
        assert kenv.hook("INSTANCE", f"VI_{i}", "BACKUP", "100").returncode == 0
    seqs = [e["seq"] for e in spooled_events(kenv.spool)]
    assert seqs == sorted(seqs) and len(set(seqs)) == 5


def test_unusable_spool_loses_the_event_loudly_but_exits_0(kenv: KEnv) -> None:
    blocker = kenv.root / "blocker"
    blocker.write_text("")
    kenv.write_config(f'[hook]\nspool_dir = "{blocker}/spool"\n')
    proc = kenv.hook("INSTANCE", "VI_1", "MASTER", "100")
    assert proc.returncode == 0
    line = one_clean_line(proc.stderr)
    assert "did not ack and the spool" in line and "VI_1" in line  # the event is in the log


# --------------------------------------------------------------------------- options


def _alt_config(kenv: KEnv, name: str) -> tuple[Path, Path]:
    state = kenv.root / f"{name}-state"
    path = kenv.root / f"{name}.toml"
    path.write_text(f'[paths]\nruntime_dir = "{kenv.root}/{name}-run"\n'
                    f'state_dir = "{state}"\n[hook]\nhost = "{name}-host"\n')
    return path, state / "spool"


@pytest.mark.parametrize("style", ["-c", "--config", "--config="])
def test_config_option_overrides_knotify_config(kenv: KEnv, style: str) -> None:
    alt, alt_spool = _alt_config(kenv, "alt")
    opts = [f"--config={alt}"] if style == "--config=" else [style, str(alt)]
    proc = kenv.hook(*opts, "INSTANCE", "VI_1", "MASTER", "100")
    assert (proc.returncode, proc.stderr) == (0, "")
    [event] = spooled_events(alt_spool)
    assert event["host"] == "alt-host"
    assert event["argv"] == [*opts, "INSTANCE", "VI_1", "MASTER", "100"]
    assert spooled_events(kenv.spool) == []


def test_double_dash_ends_options(kenv: KEnv) -> None:
    alt, alt_spool = _alt_config(kenv, "alt")
    proc = kenv.hook("-c", str(alt), "--", "--config=/nonexistent", "-c", "INSTANCE", "VI_7",
                     "FAULT", "90")
    assert (proc.returncode, proc.stderr) == (0, "")
    [event] = spooled_events(alt_spool)
    assert (event["kind"], event["name"], event["state"], event["prio"]) == (
        "INSTANCE", "VI_7", "FAULT", 90)


def test_words_after_double_dash_that_look_like_options_are_user_words(kenv: KEnv) -> None:
    proc = kenv.hook("--", "-c", "INSTANCE", "VI_1", "MASTER", "100")
    assert (proc.returncode, proc.stderr) == (0, "")
    [event] = spooled_events(kenv.spool)
    assert event["name"] == "VI_1"


def test_dangling_dash_c_is_a_malformed_call(kenv: KEnv) -> None:
    proc = kenv.hook("-c")
    assert proc.returncode == 2
    assert "unknown form '-c'" in one_clean_line(proc.stderr)


def test_missing_config_file_complains_and_uses_defaults(kenv: KEnv) -> None:
    missing = kenv.root / "missing.toml"
    proc = kenv.hook("-c", str(missing), "backup", "VI_2")
    assert proc.returncode == 0
    line = one_clean_line(proc.stderr)
    assert str(missing) in line and "using defaults" in line
    [event] = spooled_events(kenv.spool)  # defaults come from KNOTIFY_STATE_DIR
    assert event["name"] == "VI_2"


def test_split_options_pure() -> None:
    assert hook.split_options(["-c", "f", "master", "x"]) == ("f", ["master", "x"])
    assert hook.split_options(["--config", "f", "x"]) == ("f", ["x"])
    assert hook.split_options(["--config=a=b", "x"]) == ("a=b", ["x"])
    assert hook.split_options(["--", "-c", "f"]) == (None, ["-c", "f"])
    assert hook.split_options(["-c", "a", "-c", "b", "x"]) == ("b", ["x"])
    assert hook.split_options(["x", "-c", "f"]) == (None, ["x", "-c", "f"])
    assert hook.split_options(["-c"]) == (None, ["-c"])
    assert hook.split_options([]) == (None, [])


# --------------------------------------------------------------------------- ack timeout


def test_env_ack_timeout_is_waited_for(kenv: KEnv, silent_endpoint: str) -> None:
    env = dict(kenv.env, KNOTIFY_ENDPOINT=silent_endpoint, KNOTIFY_ACK_TIMEOUT="1500ms")
    start = time.monotonic()
    proc = kenv.hook("INSTANCE", "VI_1", "MASTER", "100", env=env)
    elapsed = time.monotonic() - start
    assert (proc.returncode, proc.stderr) == (0, "")
    assert elapsed >= 1.5, "the hook must wait its whole ack timeout"
    assert elapsed < 20
    assert len(spooled_events(kenv.spool)) == 1


def test_config_ack_timeout_is_waited_for(kenv: KEnv, silent_endpoint: str) -> None:
    kenv.write_config(f'[hook]\nack_timeout = "1500ms"\nendpoints = ["{silent_endpoint}"]\n')
    start = time.monotonic()
    proc = kenv.hook("INSTANCE", "VI_1", "MASTER", "100")
    elapsed = time.monotonic() - start
    assert (proc.returncode, proc.stderr) == (0, "")
    assert 1.5 <= elapsed < 20
    assert len(spooled_events(kenv.spool)) == 1


def test_env_ack_timeout_overrides_config(kenv: KEnv, silent_endpoint: str) -> None:
    kenv.write_config(f'[hook]\nack_timeout = "10m"\nendpoints = ["{silent_endpoint}"]\n')
    env = dict(kenv.env, KNOTIFY_ACK_TIMEOUT="200ms")
    proc = kenv.hook("INSTANCE", "VI_1", "MASTER", "100", env=env, timeout=120)
    assert (proc.returncode, proc.stderr) == (0, "")
    assert len(spooled_events(kenv.spool)) == 1


def test_bad_env_ack_timeout_complains_and_keeps_the_config_value(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    cfg = tmp_path / "k.toml"
    cfg.write_text('[hook]\nack_timeout = "2s"\n')
    monkeypatch.setenv("KNOTIFY_ACK_TIMEOUT", "soon")
    settings = client.load_settings(str(cfg))
    assert settings.ack_timeout == 2.0
    assert settings.problems and settings.problems[0].startswith("KNOTIFY_ACK_TIMEOUT: ")


def test_bad_config_ack_timeout_complains_and_uses_the_default(tmp_path: Path) -> None:
    cfg = tmp_path / "k.toml"
    cfg.write_text('[hook]\nack_timeout = "later"\n')
    settings = client.load_settings(str(cfg))
    assert settings.ack_timeout == client.DEFAULT_ACK_TIMEOUT
    assert settings.problems[0].startswith("[hook] ack_timeout: ")


# --------------------------------------------------------------------------- broken config


def test_broken_config_still_delivers_with_a_complaint(kenv: KEnv,
                                                       router: RouterProcess) -> None:
    kenv.write_config(LOG_RULE)
    router.start()
    broken = kenv.root / "broken.toml"
    broken.write_text("[hook\nack_timeout = ")
    proc = kenv.hook("-c", str(broken), "INSTANCE", "VI_1", "MASTER", "100")
    assert proc.returncode == 0
    line = one_clean_line(proc.stderr)
    assert f"config {broken}" in line and "using defaults" in line
    [ev] = kenv.history()
    assert (ev["name"], ev["reported"]) == ("VI_1", "MASTER")
    assert kenv.spooled() == []


def test_broken_config_router_down_still_spools(kenv: KEnv) -> None:
    kenv.config.write_text("this is = not = toml")
    proc = kenv.hook("fault", "VI_1")
    assert proc.returncode == 0
    assert "using defaults" in one_clean_line(proc.stderr)
    [event] = spooled_events(kenv.spool)
    assert (event["name"], event["state"]) == ("VI_1", "FAULT")


def test_config_with_wrong_types_in_hook_section_still_spools(kenv: KEnv) -> None:
    kenv.write_config("[hook]\nendpoints = 5\nspool_dir = 7\nhost = []\n")
    proc = kenv.hook("stop", "VI_1")
    assert proc.returncode == 0
    [event] = spooled_events(kenv.spool)
    assert event["state"] == "STOP"


# --------------------------------------------------------------------------- agreement


AGREEMENT_CONFIGS = {
    "paths-only": '[paths]\nruntime_dir = "/r1"\nstate_dir = "/s1"\n',
    "state-only": '[paths]\nstate_dir = "/s2"\n',
    "empty": "",
    "full-hook": ('[paths]\nruntime_dir = "/r3"\nstate_dir = "/s3"\n'
                  '[hook]\nack_timeout = "2s"\nspool_dir = "/sp3"\nhost = "kb3"\n'
                  'endpoints = ["ipc:///a.sock", "ipc:///b.sock"]\n'),
    "numeric-timeout": "[hook]\nack_timeout = 0.5\n",
    "empty-endpoints": '[paths]\nruntime_dir = "/r4"\n[hook]\nendpoints = []\n',
    "empty-host": '[hook]\nhost = ""\n',
    "with-rules": LOG_RULE + '[hook]\nspool_dir = "/sp5"\n',
}


@pytest.mark.parametrize("name", sorted(AGREEMENT_CONFIGS))
def test_hook_settings_agree_with_the_router_config(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hook reads the config its own light way; it must land where the router listens."""
    for var in ("KNOTIFY_ACK_TIMEOUT", "KNOTIFY_ENDPOINT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("KNOTIFY_RUNTIME_DIR", str(tmp_path / "run"))
    monkeypatch.setenv("KNOTIFY_STATE_DIR", str(tmp_path / "state"))
    path = tmp_path / "k.toml"
    path.write_text(AGREEMENT_CONFIGS[name])
    config = configmod.load(str(path))
    settings = client.load_settings(str(path))
    assert settings.problems == []
    assert settings.endpoints == config.client_endpoints
    assert config.control_endpoint in settings.endpoints or config.hook.endpoints
    assert settings.spool_dir == config.hook.spool_dir
    assert settings.ack_timeout == config.hook.ack_timeout
    assert settings.host == (config.hook.host or os.uname().nodename)


def test_hook_settings_agree_with_the_embedded_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for var in ("KNOTIFY_ACK_TIMEOUT", "KNOTIFY_ENDPOINT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("KNOTIFY_RUNTIME_DIR", str(tmp_path / "run"))
    monkeypatch.setenv("KNOTIFY_STATE_DIR", str(tmp_path / "state"))
    config = configmod.load(None)
    settings = client.load_settings(None)
    assert settings.endpoints == config.client_endpoints == [
        paths.control_endpoint(str(tmp_path / "run"))]
    assert settings.spool_dir == config.hook.spool_dir == str(tmp_path / "state" / "spool")
    assert settings.ack_timeout == config.hook.ack_timeout


def test_endpoint_env_overrides_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "k.toml"
    path.write_text('[hook]\nendpoints = ["ipc:///from-config.sock"]\n')
    monkeypatch.setenv("KNOTIFY_ENDPOINT", "ipc:///a.sock,,ipc:///b.sock")
    assert client.load_settings(str(path)).endpoints == ["ipc:///a.sock", "ipc:///b.sock"]


def test_hook_delivers_to_a_router_using_the_same_config(kenv: KEnv,
                                                         router: RouterProcess) -> None:
    # No KNOTIFY_* path variables: only the config file says where things are.
    kenv.write_config(LOG_RULE + '[hook]\nhost = "cfg-host"\n')
    for var in ("KNOTIFY_RUNTIME_DIR", "KNOTIFY_STATE_DIR"):
        kenv.env.pop(var)
    router.start()
    proc = kenv.hook("-c", str(kenv.config), "master", "VI_1")
    assert (proc.returncode, proc.stderr) == (0, "")
    [ev] = kenv.history()
    assert (ev["host"], ev["name"], ev["reported"]) == ("cfg-host", "VI_1", "MASTER")
    assert kenv.spooled() == []


# --------------------------------------------------------------------------- hot path


def test_importing_the_hook_pulls_in_no_heavy_modules() -> None:
    # -S: no site, so the editable install's finder (which imports re) stays out; the
    # package is found through sys.path as an installed copy would be.
    code = (f"import sys; sys.path.insert(0, {str(ROOT)!r}); import knotify.hook; "
            "print(' '.join(sorted(sys.modules)))")
    out = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True,
                         text=True, check=True, timeout=60).stdout.split()
    assert "knotify.hook" in out
    heavy = {"zmq", "json", "re", "typing", "dataclasses"}
    assert heavy.isdisjoint(out), heavy & set(out)
    assert not [m for m in out if m.startswith(("zmq.", "json.", "asyncio", "structlog"))]


def test_importing_the_hook_in_the_venv_adds_no_heavy_modules() -> None:
    code = ("import sys; before = set(sys.modules); import knotify.hook; "
            "print(' '.join(sorted(set(sys.modules) - before)))")
    added = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True,
                           check=True, timeout=60).stdout.split()
    assert "knotify.hook" in added
    assert {"zmq", "json", "re", "typing", "dataclasses"}.isdisjoint(added), added


def test_hook_run_over_ipc_imports_no_pyzmq(kenv: KEnv) -> None:
    code = ("import sys; from knotify import hook; "
            "rc = hook.main(['INSTANCE', 'VI_1', 'MASTER', '100']); "
            "print(rc, 'zmq' in sys.modules, 'json' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=kenv.env, timeout=60)
    assert proc.stdout.split() == ["0", "False", "False"], proc.stderr


# --------------------------------------------------------------------------- acks


@pytest.fixture
def fake_router(kenv: KEnv) -> Iterator[Callable[[Callable[[dict[str, Any]], bytes]], str]]:
    """A libzmq ROUTER answering each request with ``answer(message)``; returns its endpoint."""
    from test_zmtp import LibzmqRouter

    routers: list[LibzmqRouter] = []

    def start(answer: Callable[[dict[str, Any]], bytes]) -> str:
        endpoint = f"ipc://{kenv.root}/fake{len(routers)}.sock"
        routers.append(LibzmqRouter(endpoint, lambda frames: [answer(json.loads(frames[0]))]))
        return endpoint

    yield start
    for r in routers:
        r.close()


def _ack(message: dict[str, Any]) -> bytes:
    return json.dumps({"v": 1, "ok": True, "id": message["event"]["id"]},
                      separators=(",", ":")).encode()


@pytest.mark.parametrize(("answer", "acked"), [
    (_ack, True),
    (lambda m: b'{"v":1,"ok":false,"error":"journal unavailable"}', False),
    (lambda m: b'{"v":1,"ok":true,"id":"someone-elses-event"}', False),
    (lambda m: b"not json at all", False),
    (lambda m: b'{"v":2,"ok":true,"id":"' + m["event"]["id"].encode() + b'"}', False),
])
def test_only_an_ack_naming_the_event_counts(kenv: KEnv, fake_router, answer,  # type: ignore[no-untyped-def]
                                             acked: bool) -> None:
    endpoint = fake_router(answer)
    env = dict(kenv.env, KNOTIFY_ENDPOINT=endpoint, KNOTIFY_ACK_TIMEOUT="5s")
    proc = kenv.hook("INSTANCE", "VI_1", "MASTER", "100", env=env)
    assert (proc.returncode, proc.stderr) == (0, "")
    assert len(spooled_events(kenv.spool)) == (0 if acked else 1)


def test_next_endpoint_is_tried_when_the_first_is_down(kenv: KEnv, fake_router) -> None:  # type: ignore[no-untyped-def]
    good = fake_router(_ack)
    env = dict(kenv.env, KNOTIFY_ENDPOINT=f"ipc://{kenv.root}/down.sock,{good}",
               KNOTIFY_ACK_TIMEOUT="5s")
    proc = kenv.hook("backup", "VI_1", env=env)
    assert (proc.returncode, proc.stderr) == (0, "")
    assert spooled_events(kenv.spool) == []


def test_wire_message_is_what_the_router_expects(kenv: KEnv, fake_router) -> None:  # type: ignore[no-untyped-def]
    seen: list[dict[str, Any]] = []

    def record(message: dict[str, Any]) -> bytes:
        seen.append(message)
        return _ack(message)

    endpoint = fake_router(record)
    env = dict(kenv.env, KNOTIFY_ENDPOINT=endpoint, KNOTIFY_ACK_TIMEOUT="5s")
    before = time.time_ns()
    assert kenv.hook("u", "GROUP", "G1", "FAULT", "0", env=env).returncode == 0
    [message] = seen
    assert (message["v"], message["op"]) == (1, "event")
    event = message["event"]
    assert before <= event["ts_ns"] <= time.time_ns()
    from knotify.event import decode_event

    ev = decode_event(event)
    assert (ev.kind, ev.name, ev.state, ev.prio, ev.form, ev.source, ev.argv) == (
        "GROUP", "G1", "FAULT", 0, "notify", "hook", ["u", "GROUP", "G1", "FAULT", "0"])
