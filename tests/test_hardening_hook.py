"""The hook and the CLI facing configs they cannot read (issue 9, findings 8, 12 and 15).

Whatever is wrong with the config the hook is given (missing, not UTF-8, a FIFO, nested
beyond any parser, a path that is not even valid UTF-8), it still delivers or spools the
event, exits 0 and says what was wrong in one line: never a traceback, never a hang.
An event sent with a config the hook could not read carries the reason, so the router
that replays it can tell the operator where it was spooled and why.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from conftest import BIN, KEnv, RouterProcess, wait_for

LOG_RULE = """
[router]
spool_interval = "200ms"
[[rule]]
id = "log"
on = "every"
[[rule.action]]
type = "log"
"""


def spooled(directory: Path) -> list[dict[str, Any]]:
    new = directory / "new"
    files = sorted(new.glob("*.json")) if new.exists() else []
    return [json.loads(f.read_text()) for f in files]


def hook_bytes(kenv: KEnv, *args: bytes) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([os.fsencode(BIN / "knotify-notify"), *args], env=kenv.env,
                          capture_output=True, timeout=30)


def one_line(stderr: bytes | str) -> str:
    text = stderr.decode("utf-8", "replace") if isinstance(stderr, bytes) else stderr
    assert "Traceback" not in text, text
    lines = text.splitlines()
    assert len(lines) == 1, text
    assert lines[0].startswith("knotify-notify: ")
    return lines[0]


DEEP_TOML_FOR_TOMLLIB = (
    # A multi-line string in [hook] sends the hook to tomllib, which recurses on the array.
    '[hook]\nack_timeout = """250ms"""\n[other]\nx = ' + "[" * 2000 + "]" * 2000 + "\n"
)


def test_non_utf8_missing_config_path_still_spools_and_exits_0(kenv: KEnv) -> None:
    proc = hook_bytes(kenv, b"-c", os.fsencode(str(kenv.root)) + b"/conf\xff.toml",
                      b"master", b"VI_1")
    assert proc.returncode == 0, proc.stderr
    line = one_line(proc.stderr)
    assert "conf\\xff.toml" in line and "not found" in line
    [event] = spooled(kenv.spool)
    assert event["name"] == "VI_1"


def test_config_nested_beyond_the_parser_still_spools_and_exits_0(kenv: KEnv) -> None:
    bad = kenv.root / "deep.toml"
    bad.write_text(DEEP_TOML_FOR_TOMLLIB)
    proc = kenv.hook("-c", str(bad), "master", "VI_1")
    assert proc.returncode == 0, proc.stderr
    line = one_line(proc.stderr)
    assert str(bad) in line and "nested too deeply" in line
    [event] = spooled(kenv.spool)
    assert event["name"] == "VI_1"


def test_a_fifo_given_as_config_does_not_hang_the_hook(kenv: KEnv) -> None:
    fifo = kenv.root / "fifo.toml"
    os.mkfifo(fifo)
    proc = kenv.hook("-c", str(fifo), "master", "VI_1", timeout=20)
    assert proc.returncode == 0
    line = one_line(proc.stderr)
    assert str(fifo) in line and "not a regular file" in line
    [event] = spooled(kenv.spool)
    assert event["name"] == "VI_1"


def test_an_unreadable_config_is_marked_in_the_event(kenv: KEnv) -> None:
    missing = kenv.root / "knotfy.toml"
    assert kenv.hook("-c", str(missing), "master", "VI_1").returncode == 0
    [event] = spooled(kenv.spool)
    problem = event["extra"]["config_problem"]
    assert str(missing) in problem and "not found" in problem


# --------------------------------------------------------------------------- finding 15


def test_a_typo_in_the_hooks_config_path_reaches_the_router_log_and_status(
    kenv: KEnv, router: RouterProcess
) -> None:
    """``knotify-notify -c /etc/knotify/knotfy.toml``: the event is kept (spooled in the
    default folder, here the router's) and, when replayed, the router says where it was
    spooled and why, in its log and in ``status``."""
    kenv.write_config(LOG_RULE)
    typo = kenv.root / "knotfy.toml"
    assert kenv.hook("-c", str(typo), "master", "VI_1").returncode == 0
    router.start()
    wait_for(lambda: [e["name"] for e in kenv.history()] == ["VI_1"], 20, what="the event")
    [event] = kenv.history()
    assert str(typo) in event["extra"]["config_problem"]
    [line] = [r for r in router.records() if r.get("event") == "spool.config_problem"]
    assert line["level"] == "warning"
    assert str(typo) in line["problem"] and line["spool"] == str(kenv.spool)
    assert line["host"] and line["event_id"] == event["id"]
    info = json.loads(kenv.cli("status", "--json").stdout)["router"]
    assert info["hook_config_problems"] == 1
    assert str(typo) in info["spool"]["last_config_problem"]["problem"]
    text = kenv.cli("status").stdout
    assert "could not read its config" in text and str(typo) in text


def test_events_in_a_spool_no_router_reads_are_reported(
    kenv: KEnv, router: RouterProcess
) -> None:
    """The router's config puts its state elsewhere; a hook with a typo spools into the
    default folder, which nobody replays: the router and check-config say so."""
    elsewhere = kenv.root / "state2"
    kenv.config.write_text(f'[paths]\nruntime_dir = "{kenv.runtime}"\n'
                           f'state_dir = "{elsewhere}"\n' + LOG_RULE)
    assert kenv.hook("-c", str(kenv.root / "typo.toml"), "master", "VI_1").returncode == 0
    assert len(spooled(kenv.spool)) == 1  # the default folder (KNOTIFY_STATE_DIR)
    check = kenv.cli("check-config")
    assert f"1 event(s) wait in {kenv.spool}" in check.stdout
    router.start()
    [line] = [r for r in router.records() if r.get("event") == "spool.unread"]
    assert line["spool"] == str(kenv.spool) and line["events"] == 1
    info = json.loads(kenv.cli("status", "--json").stdout)["router"]
    assert info["spool"]["unread"] == {"spool": str(kenv.spool), "events": 1}
    assert f"1 event(s) wait in {kenv.spool}" in kenv.cli("status").stdout


@pytest.mark.parametrize("command", [
    ["status"], ["history"], ["reload"], ["send", "INSTANCE", "VI_1", "MASTER", "100"],
    ["silence", "list"], ["watch", "--count", "1", "--timeout", "3"]])
def test_cli_commands_given_a_config_that_does_not_exist_exit_non_zero(
    kenv: KEnv, router: RouterProcess, command: list[str]
) -> None:
    kenv.write_config(LOG_RULE)
    router.start()  # the default router answers: falling back to it would hide the typo
    typo = str(kenv.root / "typo.toml")
    proc = kenv.cli(*command, "-c", typo, check=False, timeout=30)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert typo in proc.stderr and "not found" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert kenv.history() == [], "nothing was sent to the default router"


# --------------------------------------------------------------------------- finding 12


@pytest.mark.parametrize("kind", ["deep-array", "deep-table", "fifo", "not-utf8", "dir"])
def test_check_config_and_run_on_an_unreadable_config_say_one_line(
    kenv: KEnv, kind: str
) -> None:
    path = kenv.root / "bad.toml"
    if kind == "deep-array":
        path.write_text("x = " + "[" * 5000 + "]" * 5000 + "\n")
    elif kind == "deep-table":
        path.write_text("x = " + "{a = " * 5000 + "1" + "}" * 5000 + "\n")
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "not-utf8":
        path.write_bytes(b"[paths]\ngroup = \"\xff\"\n")
    else:
        path.mkdir()
    want = {"deep-array": "nested too deeply", "deep-table": "nested too deeply",
            "fifo": "not a regular file", "not-utf8": "not UTF-8", "dir": "not a regular file"}
    for command in (["check-config", str(path)], ["run", "-c", str(path)]):
        proc = kenv.cli(*command, check=False, timeout=30)
        assert proc.returncode != 0, command
        assert "Traceback" not in proc.stderr, proc.stderr
        [line] = proc.stderr.splitlines()
        assert str(path) in line and want[kind] in line, line
    # The CLI's lenient reading (only [paths] and [hook]) still finds the router's socket
    # in a file nested too deeply elsewhere; a file it cannot read at all is named.
    proc = kenv.cli("status", "-c", str(path), check=False, timeout=30)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
    [line] = proc.stderr.splitlines()
    if not kind.startswith("deep"):
        assert proc.returncode == 2 and str(path) in line and want[kind] in line, line


def test_hook_with_deep_config_in_the_minimal_reader_never_recurses(kenv: KEnv) -> None:
    deep = kenv.root / "deep.toml"
    deep.write_text("[hook]\nack_timeout = \"250ms\"\n[x]\ny = " + "[" * 100_000
                    + "]" * 100_000 + "\n")
    proc = kenv.hook("-c", str(deep), "master", "VI_1")
    assert proc.returncode == 0 and "Traceback" not in proc.stderr
    [event] = spooled(kenv.spool)
    assert event["name"] == "VI_1"



def test_a_typo_in_the_hooks_config_path_is_reported_when_acked_live(
    kenv: KEnv, router: RouterProcess
) -> None:
    """The same typo with the router running (the default socket is this router's): the
    event is acked straight away, and the router still says what the hook could not read."""
    kenv.write_config(LOG_RULE)
    router.start()
    typo = kenv.root / "knotfy.toml"
    assert kenv.hook("-c", str(typo), "master", "VI_1").returncode == 0
    assert not kenv.spooled()
    [event] = kenv.history()
    assert str(typo) in event["extra"]["config_problem"]
    line = wait_for(lambda: [r for r in router.records()
                             if r.get("event") == "hook.config_problem"], 10,
                    what="the router's line about the hook's config")[0]
    assert line["level"] == "warning" and line["event_id"] == event["id"]
    assert str(typo) in line["problem"] and line["spool"] is None
    info = json.loads(kenv.cli("status", "--json").stdout)["router"]
    assert info["hook_config_problems"] == 1
    text = kenv.cli("status").stdout
    assert "could not read its config" in text and str(typo) in text
    assert "replayed from" not in text
