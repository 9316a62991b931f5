"""The outbox on a real SQLite file, in-process, with times from a fake clock.

The outbox reads no clock of its own: every time it stores (created, due, next try,
started, ended) is one its caller passed, so a test (or the engine, on its injected
clock) decides them all. These tests pin the rows' life: items, messages, attempts,
holds, streams, the history answer and pruning.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from fakeclock import FakeClock

from knotify.alerts.stream import Stream
from knotify.store.db import Database
from knotify.store.outbox import Outbox, StreamRow, backoff
from knotify.vocab import COMPOSED, EXPIRED, FAILED, OK, PENDING, SENDING, SENT, WAITING

KEY = ("lb1", "INSTANCE", "VI_1", "")


def _box(tmp_path: Path) -> tuple[Database, Outbox]:
    db = Database(str(tmp_path / "j.db"))
    return db, Outbox(db)


def test_every_time_stored_is_one_the_caller_gave(tmp_path: Path) -> None:
    clock = FakeClock()
    db, box = _box(tmp_path)
    t0 = clock.time_ns()
    with db.transaction():
        item = box.add_item(run=1, event_id="e1", receiver="chat", stream="r#0",
                            alert="firing", status=WAITING, detail=None, group_key="g",
                            fields={"host": "lb1"}, spec={}, created_ns=t0, due_ns=t0 + 30)
        message = box.add_message("chat", "firing", "t", "b", "info", ["e1"], t0,
                                  group_key="g")
        box.set_items([item], COMPOSED, message=message)
    [row] = box.open_messages("chat")
    clock.advance(5)
    with db.transaction():
        attempt = box.start_attempt(row, "/nonexistent/result", clock.time_ns())
    clock.advance(2)
    with db.transaction():
        box.finish_attempt(attempt, OK, [], "", clock.time_ns())
        box.update_message(message, status=SENT, ended_ns=clock.time_ns())
    raw = sqlite3.connect(tmp_path / "j.db")
    try:
        assert raw.execute("SELECT created_ns, due_ns FROM alert_items").fetchone() \
            == (t0, t0 + 30)
        assert raw.execute("SELECT created_ns, next_ns, ended_ns FROM alert_messages"
                           ).fetchone() == (t0, t0, t0 + 7 * 10**9)
        assert raw.execute("SELECT started_ns, ended_ns, result_path FROM alert_attempts"
                           ).fetchone() == (t0 + 5 * 10**9, t0 + 7 * 10**9, None)
    finally:
        raw.close()
    db.close()


def test_an_attempt_makes_its_message_sending_until_it_is_settled(tmp_path: Path) -> None:
    clock = FakeClock()
    db, box = _box(tmp_path)
    with db.transaction():
        message = box.add_message("chat", "firing", "t", "b", "info", ["e1"], clock.time_ns())
    [row] = box.open_messages("chat")
    assert (row.status, row.attempts) == (PENDING, 0)
    with db.transaction():
        first = box.start_attempt(row, "/r/m1-a1", clock.time_ns())
    [running] = box.running_attempts()
    assert (running.rowid, running.message, running.attempt, running.result_path) \
        == (first, message, 1, "/r/m1-a1")
    row2 = box.message(message)
    assert row2 is not None and (row2.status, row2.attempts) == (SENDING, 1)
    retry = clock.time_ns() + int(backoff(1, 10, 300) * 1e9)
    with db.transaction():
        box.finish_attempt(first, FAILED, [{"url": "json://x", "ok": False}], "HTTP 500",
                           clock.time_ns())
        box.update_message(message, status=PENDING, next_ns=retry, done=["u1"],
                           detail="HTTP 500")
    assert box.running_attempts() == []
    row3 = box.message(message)
    assert row3 is not None
    assert (row3.status, row3.next_ns, row3.done, row3.detail) \
        == (PENDING, retry, ["u1"], "HTTP 500")
    db.close()


def test_backoff_doubles_from_the_initial_delay_up_to_the_cap() -> None:
    assert [backoff(n, 10, 300) for n in range(1, 8)] == [10, 20, 40, 80, 160, 300, 300]
    assert backoff(10**6, 1, 60) == 60  # no overflow however many attempts


def test_a_hold_delays_only_the_receivers_pending_messages(tmp_path: Path) -> None:
    clock = FakeClock()
    t0 = clock.time_ns()
    db, box = _box(tmp_path)
    with db.transaction():
        pending = box.add_message("chat", "firing", "a", "b", "info", [], t0)
        sending = box.add_message("chat", "firing", "c", "b", "info", [], t0)
        later = box.add_message("chat", "firing", "d", "b", "info", [], t0)
        other = box.add_message("mail", "firing", "e", "b", "info", [], t0)
        box.update_message(sending, status=SENDING)
        box.update_message(later, status=PENDING, next_ns=t0 + 10**12)
        box.hold("chat", t0 + 30 * 10**9)
    next_ns = {m.rowid: m.next_ns for m in box.open_messages("chat") + box.open_messages("mail")}
    assert next_ns == {pending: t0 + 30 * 10**9, sending: t0, later: t0 + 10**12, other: t0}
    db.close()


def test_a_streams_memory_survives_a_reopen_and_timers_find_it(tmp_path: Path) -> None:
    clock = FakeClock()
    db, box = _box(tmp_path)
    quiet = StreamRow("r#0", KEY, ["chat"], {}, None, "e1", {"state": "MASTER"},
                      Stream("MASTER", 1, clock.time_ns()))
    bad = StreamRow("r#0", ("lb2", "INSTANCE", "VI_1", ""), ["chat"], {"title": "x"}, 60.0,
                    "e2", {"state": "FAULT"}, Stream("FAULT", 2, clock.time_ns()))
    flapping = StreamRow("f#0", KEY, ["mail"], {}, None, "e3", {},
                         Stream("BACKUP", 3, clock.time_ns(), True, clock.time_ns(), 4))
    never = StreamRow("n#0", KEY, ["chat"], {}, 0.0, "e4", {}, Stream("FAULT", 4, 1))
    with db.transaction():
        for row in (quiet, bad, flapping, never):
            box.put_stream(row)
    db.close()
    db, box = _box(tmp_path)
    assert box.stream("r#0", KEY) == quiet
    timed = {r.stream_id + r.key[0] for r in box.timed_streams(["FAULT"])}
    # FAULT repeats; a flapping stream waits for "stable again"; repeat_s = 0: never again.
    assert timed == {"r#0lb2", "f#0lb1"}
    with db.transaction():
        box.reset_flaps(["f#0"])
    again = box.stream("f#0", KEY)
    assert again is not None
    assert (again.state.flapping, again.state.flap_since_ns, again.state.suppressed) \
        == (False, None, 0)
    db.close()


def test_history_shows_each_alert_with_its_escalation_and_prune_keeps_open_rows(
        tmp_path: Path) -> None:
    clock = FakeClock()
    t0 = clock.time_ns()
    db, box = _box(tmp_path)
    with db.transaction():
        item = box.add_item(run=None, event_id="e1", receiver="chat", stream="r#0",
                            alert="firing", status=WAITING, detail=None, group_key="g",
                            fields={}, spec={}, created_ns=t0, due_ns=t0)
        first = box.add_message("chat", "firing", "t", "b", "failure", ["e1"], t0)
        box.set_items([item], COMPOSED, message=first)
        [row] = box.open_messages("chat")
        attempt = box.start_attempt(row, "/r/x", t0)
        box.finish_attempt(attempt, FAILED, [{"url": "json://x", "ok": False}], "down", t0)
        box.update_message(first, status=EXPIRED, ended_ns=t0, detail="gave up")
        fallback = box.add_message("mail", "firing", "t", "b", "failure", ["e1"], t0,
                                   escalated_from=first, origin=first)
        box.set_escalated(first, fallback)
    answer: dict[str, dict[str, Any]] = {"e1": {"id": "e1"}, "e2": {"id": "e2"}}
    box.attach_history(answer)
    assert answer["e2"]["alerts"] == []
    [alert] = answer["e1"]["alerts"]
    assert (alert["receiver"], alert["status"]) == ("chat", COMPOSED)
    message = alert["message"]
    assert (message["receiver"], message["status"], message["detail"]) \
        == ("chat", EXPIRED, "gave up")
    assert [a["error"] for a in message["attempts"]] == ["down"]
    assert (message["escalation"]["receiver"], message["escalation"]["status"]) \
        == ("mail", PENDING)
    with db.transaction():
        box.prune(t0 + 1)  # everything is older; only the fallback is still open
    assert [m.rowid for m in box.open_messages("mail")] == [fallback]
    assert box.message(first) is None and box.items([item]) == []
    db.close()
