"""The test harness itself: a router log line that is not JSON fails the test."""

from __future__ import annotations

import pytest
from conftest import KEnv, RouterProcess, check_router_logs, wait_for

# Loaded by the router's interpreter only (PYTHONPATH): a background thread that dies,
# as a bug would, so Python prints its traceback to the router's stderr (its log).
DYING_THREAD = """
import threading

def _die():
    raise RuntimeError("a background thread died")

threading.Timer(0.2, _die).start()
"""


def test_a_traceback_in_the_router_log_fails_the_test(kenv: KEnv) -> None:
    site = kenv.root / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(DYING_THREAD)
    plain = dict(kenv.env)
    kenv.env["PYTHONPATH"] = ":".join(filter(None, [str(site), plain.get("PYTHONPATH")]))
    proc = RouterProcess(kenv).start()
    kenv.env = plain
    wait_for(lambda: "a background thread died" in proc.log_text(), 20,
             what="the traceback in the router's log")
    kenv.cli("send", "INSTANCE", "VI_1", "MASTER", "100")  # the router itself works on
    assert [e["name"] for e in kenv.history()] == ["VI_1"]
    with pytest.raises(pytest.fail.Exception) as info:
        check_router_logs([proc])
    message = str(info.value)
    assert "the router logged lines that are not JSON" in message
    assert "  | Traceback (most recent call last):" in message
    assert "  | RuntimeError: a background thread died" in message
    assert not proc.alive


def test_only_json_lines_pass(kenv: KEnv) -> None:
    proc = RouterProcess(kenv).start()
    kenv.cli("send", "INSTANCE", "VI_1", "MASTER", "100")
    check_router_logs([proc])  # stops it; its log is all JSON
    assert not proc.alive and proc.records()


def test_a_line_cut_short_by_sigkill_is_tolerated_and_ended(kenv: KEnv) -> None:
    proc = RouterProcess(kenv)
    proc.log_path.write_text('{"event": "router.started"}\n{"event": "batch.wr')
    proc._mark_torn()  # what stop() does after a SIGKILL
    assert proc.log_text().endswith('{"event": "batch.wr\n')
    assert proc.not_json() == []
    with open(proc.log_path, "a") as log:
        log.write('{"event": "router.started"}\nnot json\n')
    assert proc.not_json() == ["not json"]
    proc.log_path.write_text('{"event": "x"}\n')  # (so that the teardown check passes)


def test_a_line_the_test_expects_is_allowed(kenv: KEnv) -> None:
    proc = RouterProcess(kenv)
    proc.log_path.write_text('{"event": "x"}\nknotify: another router runs here\nboom\n')
    proc.expect_plain(r"knotify: another router runs here")
    assert proc.not_json() == ["boom"]
    proc.log_path.write_text('{"event": "x"}\n')  # (so that the teardown check passes)
