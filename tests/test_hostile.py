"""Hostile names end to end: hook / send / wire -> router -> exec action, never a shell.

A rule runs a small Python program that records the bytes of its argv and its
KNOTIFY_NAME variable. Whatever a name holds (shell syntax, quotes, newlines,
template braces, undecodable bytes) must arrive as one argument, byte for byte, and
nothing it "says" may run.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import KEnv, RouterProcess, wait_for

from knotify import zmtp

RECORDER = """#!{python}
import json, os, sys
out = {{
    "argv_hex": [os.fsencode(a).hex() for a in sys.argv[1:]],
    "env_name_hex": os.environb.get(b"KNOTIFY_NAME", b"").hex(),
    "env_vs_hex": os.environb.get(b"KNOTIFY_VS", b"").hex(),
    "cwd": os.getcwd(),
    "path": os.environ.get("PATH"),
}}
target = os.path.join({outdir!r}, os.environ["KNOTIFY_ID"] + ".json")
with open(target + ".tmp", "w") as fh:
    json.dump(out, fh)
os.rename(target + ".tmp", target)
"""


def _setup(kenv: KEnv) -> tuple[Path, Path]:
    outdir = kenv.root / "out"
    outdir.mkdir()
    script = kenv.root / "record.py"
    script.write_text(RECORDER.format(python=sys.executable, outdir=str(outdir)))
    script.chmod(0o755)
    kenv.write_config(f"""
[[rule]]
id = "record"
on = "every"
[[rule.action]]
type = "exec"
argv = ["{script}", "{{name}}", "name={{name}}!", "{{vs}}", "{{state}}"]
timeout = "30s"
""")
    return outdir, script


def _records(outdir: Path) -> dict[str, dict[str, Any]]:
    return {p.stem: json.loads(p.read_text()) for p in outdir.glob("*.json")}


def _hex(text: str) -> str:
    return text.encode("utf-8").hex()


def _names(root: Path) -> list[str]:
    return [
        f"VI_1; touch {root}/pwned-semicolon",
        f"$(touch {root}/pwned-dollar)",
        f"`touch {root}/pwned-backtick`",
        f"a|touch {root}/pwned-pipe & b",
        f"x && touch {root}/pwned-and",
        "a'b\"c",
        f"line1\nline2; touch {root}/pwned-newline",
        "{name} {{state}} %s $HOME ${PATH}",
        "-rf --help",
        "* ? [a-z]",
        "tab\tand  two spaces ",
        "\u00e9t\u00e9 \u2603 \U0001f525",
    ]


def _assert_no_injection(root: Path) -> None:
    pwned = sorted(p.name for p in root.glob("pwned*"))
    assert pwned == [], f"an injected command ran: {pwned}"


def _check(record: dict[str, Any], name: str, state: str, vs: str = "") -> None:
    assert record["argv_hex"] == [_hex(name), _hex(f"name={name}!"), _hex(vs), _hex(state)]
    assert record["env_name_hex"] == _hex(name)
    assert record["cwd"] == "/"
    assert record["path"] == "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def test_hostile_names_via_the_hook(kenv: KEnv, router: RouterProcess) -> None:
    outdir, _ = _setup(kenv)
    router.start()
    names = _names(kenv.root)
    for name in names:
        proc = kenv.hook("master", name)
        assert (proc.returncode, proc.stderr) == (0, "")
    wait_for(lambda: len(_records(outdir)) == len(names), 30, what="every action to record")
    records = _records(outdir)
    events = {e["id"]: e for e in kenv.history()}
    for event_id, record in records.items():
        ev = events[event_id]
        _check(record, ev["name"], "MASTER")
        assert [a["status"] for a in ev["actions"]] == ["ok"]
    assert sorted(e["name"] for e in events.values()) == sorted(names)
    _assert_no_injection(kenv.root)


def test_hostile_names_via_generic_notify_and_rs_vs(kenv: KEnv, router: RouterProcess) -> None:
    outdir, _ = _setup(kenv)
    router.start()
    name = f"VI $(touch {kenv.root}/pwned-generic)"
    rs = f"[10.0.0.5]:tcp:80;touch {kenv.root}/pwned-rs"
    vs = f"FWM 5`touch {kenv.root}/pwned-vs`"
    assert kenv.hook("user's word", "INSTANCE", name, "BACKUP", "100").returncode == 0
    assert kenv.hook("rs-down", rs, vs).returncode == 0
    wait_for(lambda: len(_records(outdir)) == 2, 30, what="both actions to record")
    by_kind = {e["kind"]: (_records(outdir)[e["id"]], e) for e in kenv.history()}
    _check(by_kind["INSTANCE"][0], name, "BACKUP")
    _check(by_kind["RS"][0], rs, "DOWN", vs)
    assert by_kind["RS"][0]["env_vs_hex"] == _hex(vs)
    _assert_no_injection(kenv.root)


def test_hostile_names_via_knotify_send(kenv: KEnv, router: RouterProcess) -> None:
    outdir, _ = _setup(kenv)
    router.start()
    names = _names(kenv.root)[:6]
    for name in names:
        proc = kenv.cli("send", "INSTANCE", name, "FAULT", "90")
        assert proc.stdout.startswith("acked ")
    wait_for(lambda: len(_records(outdir)) == len(names), 30, what="every action to record")
    records = _records(outdir)
    for ev in kenv.history():
        _check(records[ev["id"]], ev["name"], "FAULT")
        assert ev["source"] == "send"
    _assert_no_injection(kenv.root)


def test_undecodable_bytes_arrive_as_backslash_escapes(kenv: KEnv,
                                                       router: RouterProcess) -> None:
    outdir, _ = _setup(kenv)
    router.start()
    raw = os.fsdecode(b"VI_\xff\xfe;x")  # keepalived passes bytes; Python escapes them
    proc = kenv.hook("backup", raw)
    assert (proc.returncode, proc.stderr) == (0, "")
    wait_for(lambda: len(_records(outdir)) == 1, 30, what="the action to record")
    [ev] = kenv.history()
    assert ev["name"] == "VI_\\xff\\xfe;x"
    # The journal keeps the raw argv exactly (as surrogate escapes).
    assert ev["argv"] == ["backup", raw]
    [record] = _records(outdir).values()
    _check(record, "VI_\\xff\\xfe;x", "BACKUP")


def _wire_event(ident: str, name: str, **extra: Any) -> bytes:
    event = {"v": 1, "id": ident, "host": "evil;host$(id)", "kind": "INSTANCE", "name": name,
             "state": "MASTER", "prio": 100, "seq": 0, "ts_ns": time.time_ns(),
             "source": "agent", **extra}
    return json.dumps({"v": 1, "op": "event", "event": event}).encode()


def test_hostile_names_via_raw_wire_messages(kenv: KEnv, router: RouterProcess) -> None:
    outdir, _ = _setup(kenv)
    router.start()
    endpoint = f"ipc://{kenv.runtime}/knotify.sock"
    names = _names(kenv.root)
    for i, name in enumerate(names):
        answer = json.loads(zmtp.request(endpoint, _wire_event(f"wire{i:08d}", name), 5))
        assert answer["ok"] is True
    wait_for(lambda: len(_records(outdir)) == len(names), 30, what="every action to record")
    records = _records(outdir)
    for i, name in enumerate(names):
        _check(records[f"wire{i:08d}"], name, "MASTER")
    _assert_no_injection(kenv.root)


def test_nul_byte_in_a_wire_name_is_refused_and_the_router_serves_on(
    kenv: KEnv, router: RouterProcess
) -> None:
    # (Issue 9, finding 13: it used to be accepted, and every exec action then failed.)
    outdir, _ = _setup(kenv)
    router.start()
    endpoint = f"ipc://{kenv.runtime}/knotify.sock"
    answer = json.loads(zmtp.request(endpoint, _wire_event("nulname01", "a\0b"), 5))
    assert answer["ok"] is False and "NUL" in answer["error"]
    assert kenv.history() == []
    assert router.alive
    # ... and the router still serves the next event.
    answer = json.loads(zmtp.request(endpoint, _wire_event("okname0001", "VI_ok"), 5))
    assert answer["ok"] is True
    wait_for(lambda: "okname0001" in _records(outdir), 30, what="the next action")


@pytest.mark.parametrize("payload", [
    b"\x00" * 100,
    b"{" * 10_000,
    b'{"v":1,"op":"event","event":{"v":1}}',
    b'{"v":1,"op":"' + b"x" * 5000 + b'"}',
    "{\"v\":1,\"op\":\"event\",\"event\":\"\udcff\"}".encode("utf-8", "surrogatepass"),
])
def test_garbage_messages_are_refused_and_the_router_carries_on(
    kenv: KEnv, router: RouterProcess, payload: bytes
) -> None:
    kenv.write_config("")
    router.start()
    endpoint = f"ipc://{kenv.runtime}/knotify.sock"
    answer = json.loads(zmtp.request(endpoint, payload, 5))
    assert answer["ok"] is False and answer["error"]
    assert kenv.hook("master", "VI_after").returncode == 0
    assert [e["name"] for e in kenv.history()] == ["VI_after"]
