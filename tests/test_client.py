"""The one client transport (knotify.client) and the one stamp (knotify.stamp).

Every sender (the hook, ``knotify fifo``, resync, ``knotify send``, the agent) and the CLI
reach the router through knotify.client; here it is driven directly and through the CLI,
against real routers, over ipc and over TCP with CURVE.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from conftest import ROOT, KEnv, RouterProcess
from test_security import RULE as LOG_RULE
from test_security import free_port, keygen

from knotify import client, fifo, resync, stamp
from knotify import config as configmod
from knotify.errors import ConfigError, RouterRefused, RouterUnavailable
from knotify.event import decode_event

# -- the CLI over CURVE ---------------------------------------------------------------------


class CurveRouter:
    """A router listening on TCP with CURVE, and client configs for remote hosts: their
    own runtime and state folders, so the router's local socket is out of their reach."""

    def __init__(self, kenv: KEnv, admins: tuple[str, ...] = ()) -> None:
        self.kenv = kenv
        self.port = free_port()
        self.endpoint = f"tcp://127.0.0.1:{self.port}"
        self.keys = kenv.root / "keys"
        self.clients = kenv.root / "clients"
        self.clients.mkdir()
        self.public, secret = keygen(kenv, "router", self.keys)
        kenv.write_config(LOG_RULE + f"""
[router]
listen = ["{self.endpoint}"]
[router.curve]
secret_key = "{secret}"
clients = "{self.clients}"
admins = {json.dumps(list(admins))}
""")

    def host(self, name: str, authorised: bool = True) -> Path:
        public, secret = keygen(self.kenv, name, self.keys)
        if authorised:
            (self.clients / public.name).write_bytes(public.read_bytes())
        path = self.kenv.root / f"{name}.toml"
        path.write_text(f"""
[paths]
runtime_dir = "{self.kenv.root}/{name}-run"
state_dir = "{self.kenv.root}/{name}-state"
[hook]
host = "{name}"
endpoints = ["{self.endpoint}"]
ack_timeout = "5s"
[hook.curve]
server_key = "{self.public}"
secret_key = "{secret}"
""")
        return path

    def cli(self, config: Path, *args: str) -> subprocess.CompletedProcess[str]:
        # No KNOTIFY_* folders: only the host's config says where the router is.
        env = {k: v for k, v in self.kenv.env.items() if not k.startswith("KNOTIFY_")}
        return subprocess.run([sys.executable, "-m", "knotify.cli",
                               *args, "-c", str(config)], env=env, capture_output=True,
                              text=True, timeout=60)


def test_the_cli_reads_status_and_history_from_a_router_it_reaches_only_over_curve(
    kenv: KEnv, router: RouterProcess
) -> None:
    curve = CurveRouter(kenv, admins=("ops",))
    ops = curve.host("ops")
    router.start()
    sent = curve.cli(ops, "send", "INSTANCE", "VI_1", "MASTER", "100")
    assert sent.returncode == 0 and sent.stdout.startswith("acked "), sent
    status = curve.cli(ops, "status", "--json")
    assert status.returncode == 0, status.stderr
    states = json.loads(status.stdout)["states"]
    assert [(s["host"], s["name"], s["state"]) for s in states] == [("ops", "VI_1", "MASTER")]
    history = curve.cli(ops, "history", "--json")
    assert history.returncode == 0, history.stderr
    assert [(e["host"], e["name"]) for e in json.loads(history.stdout)] == [("ops", "VI_1")]
    # Nothing went to the remote host's spool: it was acked over CURVE.
    assert not list((kenv.root / "ops-state").rglob("*.json"))


def test_the_cli_over_curve_hears_the_routers_refusal_or_why_nobody_answered(
    kenv: KEnv, router: RouterProcess
) -> None:
    curve = CurveRouter(kenv)
    sender = curve.host("lb1")             # authorised, not an admin
    stranger = curve.host("stranger", authorised=False)
    router.start()
    refused = curve.cli(sender, "status")
    assert refused.returncode != 0
    assert "only the local control socket or a key in [router.curve] admins" in refused.stderr
    unheard = curve.cli(stranger, "status")
    assert unheard.returncode != 0
    assert f"no answer from the router ({curve.endpoint}: no answer from" in unheard.stderr
    assert "not authorised there" in unheard.stderr
    # A secret key others may read is refused before anything is sent, and said so.
    secret = curve.keys / "lb1.key_secret"
    secret.chmod(0o644)
    loose = curve.cli(sender, "status")
    assert loose.returncode != 0
    assert "[hook.curve]: " in loose.stderr and "chmod 600 it" in loose.stderr
    assert router.alive


# -- request and deliver, in process ---------------------------------------------------------


def _settings(kenv: KEnv, **changes: object) -> client.Settings:
    settings = client.load_settings(str(kenv.config))
    for name, value in changes.items():
        setattr(settings, name, value)
    return settings


def test_request_tries_the_endpoints_in_turn_and_names_each_failure(
    kenv: KEnv, router: RouterProcess
) -> None:
    router.start()
    settings = _settings(kenv)
    dead = f"ipc://{kenv.root}/nobody.sock"
    settings.endpoints = [dead, *settings.endpoints]
    answer = client.request(settings, "ping")
    assert answer["ok"] is True and answer["pid"] == router.proc.pid  # type: ignore[union-attr]
    settings.endpoints = [dead, "tcp://127.0.0.1:bad"]
    with pytest.raises(RouterUnavailable) as caught:
        client.request(settings, "ping", timeout=1)
    text = str(caught.value)
    assert f"{dead}: " in text and "tcp://127.0.0.1:bad: endpoint" in text
    with pytest.raises(RouterRefused, match="unknown op"):
        client.request(_settings(kenv), "no-such-op")


def test_deliver_acks_once_per_router_and_spools_for_the_one_that_missed(
    kenv: KEnv, router: RouterProcess
) -> None:
    router.start()
    settings = _settings(kenv, host="kb1", ack_timeout=10.0)
    live = settings.endpoints[0]
    dead = f"tcp://127.0.0.1:{free_port()}"  # a remote router that is down: its own outbox
    event = stamp.stamp({"kind": "INSTANCE", "name": "VI_1", "state": "MASTER", "prio": 100,
                         "vs": "", "form": "send"}, "send", "kb1", 1)
    assert client.deliver(event, settings) == "acked"
    settings.endpoints = [live, dead]
    again = stamp.stamp({"kind": "INSTANCE", "name": "VI_1", "state": "BACKUP", "prio": 100,
                         "vs": "", "form": "send"}, "send", "kb1", 2)
    assert client.deliver(again, settings) == "acked"
    outboxes = list(Path(settings.spool_dir, "to").rglob("*.json"))
    assert [json.loads(p.read_text())["id"] for p in outboxes] == [again["id"]]
    assert [e["id"] for e in kenv.history()] == [again["id"], event["id"]]


def test_deliver_spools_with_the_reason_when_the_curve_key_is_unusable(
    kenv: KEnv, capfd: pytest.CaptureFixture[str]
) -> None:
    settings = _settings(kenv, endpoints=["tcp://127.0.0.1:9"], host="kb1",
                         curve=(str(kenv.root / "router.key"), str(kenv.root / "no.key")))
    event = stamp.stamp({"kind": "INSTANCE", "name": "VI_1", "state": "MASTER", "prio": 1,
                         "vs": "", "form": "send"}, "send", "kb1", 1)
    result = client.deliver(event, settings)
    assert result.startswith("spooled:")
    assert json.loads(Path(result[len("spooled:"):]).read_text())["id"] == event["id"]
    assert "knotify-notify: [hook.curve]: " in capfd.readouterr().err


def test_a_curve_endpoint_libzmq_refuses_is_an_unavailable_router_and_the_event_spools(
    kenv: KEnv
) -> None:
    keys = kenv.root / "keys"
    public, _ = keygen(kenv, "router", keys)
    _, secret = keygen(kenv, "me", keys)
    bad = "tcp://router-without-port"
    settings = _settings(kenv, curve=(str(public), str(secret)), endpoints=[bad])
    with pytest.raises(RouterUnavailable):
        client.ask(settings, bad, client.message("ping"), timeout=1)
    # Before, libzmq's own error escaped the hook's delivery: the event was lost.
    event = stamp.stamp(dict(FIELDS), "hook", "kb1", 1)
    assert client.deliver(event, settings).startswith("spooled:")


# -- settings: what the hook reads of the config (tomllib) ------------------------------------


@pytest.mark.parametrize("path", [ROOT / "config" / "knotify.toml",
                                  ROOT / "knotify" / "default.toml"], ids=lambda p: p.name)
def test_the_shipped_configs_give_the_hook_what_the_router_listens_on(
    path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for var in ("KNOTIFY_ACK_TIMEOUT", "KNOTIFY_ENDPOINT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("KNOTIFY_RUNTIME_DIR", str(tmp_path / "run"))
    monkeypatch.setenv("KNOTIFY_STATE_DIR", str(tmp_path / "state"))
    settings = client.load_settings(str(path))
    assert settings.problems == [] and settings.config_error is None
    try:
        config = configmod.load(str(path))
    except ConfigError as exc:  # (a production path the test machine lacks)
        pytest.fail(f"the shipped config does not load: {exc}")
    assert settings.endpoints == config.client_endpoints
    assert settings.spool_dir == config.hook.spool_dir
    assert settings.ack_timeout == config.hook.ack_timeout


def test_hook_curve_and_values_in_any_toml_form_are_read(tmp_path: Path) -> None:
    text = '''
[[rule]]
message = """
[hook]
ack_timeout = 9
"""
[hook]
ack_timeout = "1s" # a comment
endpoints = [
  "ipc:///a",
  'tcp://b:1',
]
curve = { server_key = "/k", secret_key = "/s\\u00e9" }
'''
    path = tmp_path / "k.toml"
    path.write_text(text)
    settings = client.load_settings(str(path))
    assert settings.problems == []
    assert (settings.ack_timeout, settings.endpoints, settings.curve) == (
        1.0, ["ipc:///a", "tcp://b:1"], ("/k", "/s\u00e9"))
    assert tomllib.loads(text)["hook"]["curve"] == {"server_key": "/k", "secret_key": "/s\u00e9"}


def test_a_curve_table_without_both_keys_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "k.toml"
    path.write_text('[hook.curve]\nserver_key = "/k"\n')
    settings = client.load_settings(str(path))
    assert settings.curve is None
    assert settings.problems == ["[hook.curve] needs server_key and secret_key paths"]


# -- one stamp ---------------------------------------------------------------------------------


FIELDS: dict[str, object] = {"kind": "INSTANCE", "name": "VI_1", "state": "MASTER",
                             "prio": 100, "vs": "", "form": "generic"}


def test_a_process_per_event_is_stamped_with_its_fork_time_and_pid() -> None:
    event = stamp.stamp(dict(FIELDS), "hook", "kb1", 7, 123)
    assert (event["v"], event["host"], event["seq"], event["ts_ns"], event["source"]) == (
        1, "kb1", 7, 123, "hook")
    assert event["pid"] == os.getpid() and event["mono_ns"] == stamp.fork_clock() > 0
    assert event["boot"] == stamp.boot_id() and len(str(event["id"])) == 32
    assert decode_event(event).pid == os.getpid()


def test_a_reader_is_stamped_with_the_boot_clock_it_read_at_and_no_pid() -> None:
    before = stamp.boot_clock()
    event = fifo.event_from_line("INSTANCE VI_1 MASTER 100", "kb1", 3, 5)
    assert "pid" not in event and event["source"] == "fifo"
    assert before <= int(str(event["mono_ns"])) <= stamp.boot_clock()
    assert event["raw"] == "INSTANCE VI_1 MASTER 100"
    bad = fifo.event_from_line("nonsense", "kb1", 4, 5, mono_ns=9)
    assert (bad["kind"], bad["state"], bad["form"], bad["mono_ns"]) == (
        "INVALID", "INVALID", "fifo", 9)
    assert decode_event(bad).error


def test_resync_events_are_stamped_alike_with_the_ids_given() -> None:
    seqs = iter(range(10, 20))
    ids = iter(["resync-id-1", "resync-id-2"])
    instances: list[dict[str, object]] = [
        {"name": "VI_1", "state": "MASTER", "prio": 100, "last_transition": 1.5},
        {"name": "VI_2", "state": "BACKUP", "prio": None, "last_transition": None}]
    events = resync.wire_events(instances, "kb1", lambda: next(seqs), lambda: next(ids))
    assert [(e["id"], e["seq"], e["source"]) for e in events] == [
        ("resync-id-1", 10, "resync"), ("resync-id-2", 11, "resync")]
    assert events[0]["extra"] == {"keepalived_since_ns": 1_500_000_000}
    assert events[0]["mono_ns"] == events[1]["mono_ns"] and "pid" not in events[0]
    assert [decode_event(e).state for e in events] == ["MASTER", "BACKUP"]


def test_an_unreadable_input_keeps_its_error_as_an_invalid_event() -> None:
    event = stamp.stamp(stamp.invalid("invalid", "missing the instance name"), "hook", "kb1", 1)
    decoded = decode_event(event)
    assert (decoded.kind, decoded.state, decoded.error) == (
        "INVALID", "INVALID", "missing the instance name")


# -- the agent -------------------------------------------------------------------------------


def test_the_agent_sets_aside_a_spool_file_that_is_not_json_and_delivers_the_rest(
    kenv: KEnv, router: RouterProcess
) -> None:
    """``NaN`` is not JSON (fastjson, which every client encodes with, refuses it): such a
    file goes to spool/bad with the reason instead of stalling the agent's queue."""
    from test_cluster_router import agent_config

    port = free_port()
    kenv.write_config(f'[router]\nlisten = ["tcp://127.0.0.1:{port}"]\ninsecure = true\n')
    cfg = agent_config(kenv, "n1", [f"tcp://127.0.0.1:{port}"])
    spool_dir = kenv.root / "n1-state" / "spool"
    assert kenv.hook("-c", str(cfg), "INSTANCE", "VI_1", "MASTER", "100").returncode == 0
    [good] = list((spool_dir / "new").glob("*.json"))
    event = json.loads(good.read_text())
    nan = dict(event, id="f" * 32, extra={"ratio": float("nan")})
    (spool_dir / "new" / "00000000000000000000-nan.json").write_text(json.dumps(nan))
    router.start()
    once = kenv.cli("agent", "-c", str(cfg), "--once", "--log-format", "json", check=False)
    assert once.returncode == 0, once.stderr
    assert [p.name for p in (spool_dir / "bad").iterdir()] == ["00000000000000000000-nan.json"]
    assert "NaN is not JSON" in once.stdout + once.stderr
    assert not list((spool_dir / "new").glob("*.json"))
    assert [e["id"] for e in kenv.history()] == [event["id"]]
