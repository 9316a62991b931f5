"""The alert engine built in-process: a real journal file, a fake clock, no router.

Alerts are queued the way the router queues them (an executor runs the rule's alert
action, on the same clock); then each stage is driven by hand at the times the test
chooses, or the engine's loop delivers to a real local HTTP server through its real
sender workers. Whatever is due is due on the engine's clock, never the machine's.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

from alert_servers import HttpSink
from fakeclock import FakeClock

from knotify import config as configmod
from knotify import log as logmod
from knotify.actions.base import Services
from knotify.alerts import compose, render, timers
from knotify.alerts.attempts import Attempts
from knotify.alerts.commit import GroupCommit
from knotify.alerts.deliver import Delivery
from knotify.alerts.engine import AlertEngine
from knotify.alerts.settle import Ending, Settle
from knotify.event import Event
from knotify.executor import Executor, Run
from knotify.store.db import Database
from knotify.store.events import EventStore
from knotify.tracker import Tracker
from knotify.vocab import (
    COMPOSED,
    EXPIRED,
    PENDING,
    SENT,
    SILENCED,
    SUPPRESSED,
    TRANSITION,
    WAITING,
)

CONFIG = """
[paths]
runtime_dir = "{tmp}/run"
state_dir = "{tmp}/state"
[alerts]
group_wait = "30s"
group_by = ["host"]
{alerts}
[receivers.chat]
urls = ["{url}"]
{chat}
[receivers.mail]
urls = ["json://127.0.0.1:9/never"]
[[rule]]
id = "page"
[[rule.action]]
type = "alert"
receiver = "chat"
"""


class Rig:
    """An engine and an executor on one fake clock and one journal file."""

    def __init__(self, tmp_path: Path, alerts: str = "", chat: str = "",
                 url: str = "json://127.0.0.1:9/never", workers: bool = False) -> None:
        self.clock = FakeClock()
        self.path = tmp_path / "journal.db"
        self.config = configmod.parse(
            CONFIG.format(tmp=tmp_path, alerts=alerts, chat=chat, url=url), "t.toml")
        self.journal = EventStore(Database(str(self.path)))
        self.tracker = Tracker()
        self.published: list[tuple[str, dict[str, Any]]] = []
        log = logmod.get()
        self.engine = AlertEngine(self.config.alert_engine, self.journal, self.tracker,
                                  log, self.publish, clock=self.clock)
        self.executor = Executor(self.journal, self.tracker, log, self.publish,
                                 clock=self.clock)
        self.executor.services = Services(alerts=self.engine, silences=self.engine, log=log)
        self.seq = 0
        if not workers:  # the stages alone: no sender worker is warmed up or started
            asyncio.run(self.engine.pool.close())
        # The rule exists from the engine's start: flap control counts only later events.
        self.clock.advance(1)

    def publish(self, topic: str, body: dict[str, Any]) -> None:
        self.published.append((topic, body))

    async def event(self, name: str, state: str, host: str = "lb1") -> str:
        """One event, now on the clock, through the rule's alert action; its id."""
        self.seq += 1
        now = self.clock.time_ns()
        ev = Event(id=f"event-{self.seq:08d}", host=host, kind="INSTANCE", name=name,
                   state=state, prio=100, seq=self.seq, ts_ns=now, recv_ns=now, source="send")
        tr = self.tracker.observe(ev)
        assert tr.cls == TRANSITION
        rule = self.config.rules[0]
        with self.journal.transaction():
            self.journal.add_event(ev, tr)
            rowid = self.journal.add_run(ev.id, rule.id, 0, rule.actions[0].kind)
        self.executor.submit(Run(rowid, ev, tr, rule, 0, rule.actions[0],
                                 self.clock.monotonic()))
        while self.executor.queued:
            await asyncio.sleep(0.01)
        return ev.id

    def rows(self, sql: str) -> list[Any]:
        db = sqlite3.connect(self.path)
        try:
            return db.execute(sql).fetchall()
        finally:
            db.close()

    def close(self) -> None:
        self.journal.database.close()


def test_a_group_is_composed_when_group_wait_has_passed_on_the_clock(tmp_path: Path) -> None:
    rig = Rig(tmp_path)

    async def queue() -> list[str]:
        first = await rig.event("VI_1", "FAULT")
        rig.clock.advance(10)
        return [first, await rig.event("VI_2", "FAULT")]

    ids = asyncio.run(queue())
    first_due = rig.clock.time_ns() - 10 * 10**9 + 30 * 10**9
    core = rig.engine.core
    rig.clock.advance(19)
    assert compose.compose(core, rig.clock.time_ns()) == first_due  # one second to go
    assert rig.rows("SELECT count(*) FROM alert_messages") == [(0,)]
    rig.clock.advance(1)
    assert compose.compose(core, rig.clock.time_ns()) is None  # nothing left waiting
    [(receiver, status, event_ids, title)] = rig.rows(
        "SELECT receiver, status, event_ids, title FROM alert_messages")
    assert (receiver, status) == ("chat", PENDING)
    assert event_ids == f'["{ids[0]}", "{ids[1]}"]'  # both in one message
    assert title == "[lb1] VI_1, VI_2 -> FAULT"
    assert rig.rows("SELECT DISTINCT status FROM alert_items") == [(COMPOSED,)]
    rig.close()


def test_repeat_interval_counts_on_the_clock(tmp_path: Path) -> None:
    rig = Rig(tmp_path, alerts='repeat_interval = "1h"')
    asyncio.run(rig.event("VI_1", "FAULT"))
    core = rig.engine.core
    due = rig.clock.time_ns() + 3600 * 10**9
    rig.clock.advance(3599)
    assert timers.timers(core, rig.clock.time_ns()) == due
    assert rig.rows("SELECT alert FROM alert_items") == [(render.FIRING,)]
    rig.clock.advance(1)
    timers.timers(core, rig.clock.time_ns())
    assert rig.rows("SELECT alert, status FROM alert_items ORDER BY rowid") \
        == [(render.FIRING, WAITING), (render.REPEAT, WAITING)]
    [(fields,)] = rig.rows("SELECT fields FROM alert_items WHERE alert = 'repeat'")
    assert "1h" in fields  # "still FAULT (for 1h00m)"
    rig.close()


def test_flap_control_holds_back_then_says_stable_on_the_clock(tmp_path: Path) -> None:
    rig = Rig(tmp_path, alerts='flap_threshold = 2\nflap_window = "2m"\nflap_stable = "5m"')

    async def flap() -> None:
        for state in ("MASTER", "BACKUP", "MASTER", "BACKUP", "MASTER"):
            await rig.event("VI_1", state)
            rig.clock.advance(5)

    asyncio.run(flap())
    items = rig.rows("SELECT alert, status FROM alert_items ORDER BY rowid")
    # Two alerts, then "is flapping" once, then nothing but suppressed items.
    assert items[:3] == [(render.FIRING, WAITING), (render.FIRING, WAITING),
                         (render.FLAPPING, WAITING)]
    assert items[3:] == [(render.FIRING, SUPPRESSED)] * 2
    core = rig.engine.core
    since = rig.tracker.states[("lb1", "INSTANCE", "VI_1", "")].since_ns
    assert timers.timers(core, rig.clock.time_ns()) == since + 300 * 10**9
    rig.clock.ns = since + 300 * 10**9
    timers.timers(core, rig.clock.time_ns())
    assert rig.rows("SELECT alert, status FROM alert_items ORDER BY rowid DESC LIMIT 1") \
        == [(render.STABLE, WAITING)]
    rig.close()


def test_a_message_too_old_expires_and_goes_to_the_fallback(tmp_path: Path) -> None:
    rig = Rig(tmp_path, alerts='max_age = "1h"', chat='fallback = "mail"')
    asyncio.run(rig.event("VI_1", "FAULT"))
    rig.clock.advance(30)
    compose.compose(rig.engine.core, rig.clock.time_ns())
    rig.clock.advance(3600)
    # One turn: chat's message is past max_age (given up before any attempt starts),
    # and its copy goes to the fallback; the loop is told to look again at once.
    assert rig.engine.tick() == 0.0
    assert rig.rows("SELECT receiver, status, escalated_from IS NOT NULL, ended_ns "
                    "FROM alert_messages ORDER BY rowid") \
        == [("chat", EXPIRED, 0, rig.clock.time_ns()), ("mail", PENDING, 1, None)]
    [(body,)] = rig.rows("SELECT body FROM alert_messages WHERE receiver = 'mail'")
    assert body.endswith("(sent to mail because chat failed)")
    assert rig.rows("SELECT count(*) FROM alert_attempts") == [(0,)]
    assert rig.engine.counts["expired"] == 1 and rig.engine.counts["escalated"] == 1
    rig.close()


def test_silences_begin_and_end_on_the_engines_clock(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    answer = rig.engine.command("silence_add", {"matchers": ["host=lb1"], "duration_s": 600,
                                                "reason": "maintenance", "by": "test"})
    assert answer["silence"]["starts_ns"] == rig.clock.time_ns()
    assert answer["silence"]["status"] == "active"
    asyncio.run(rig.event("VI_1", "FAULT"))
    rig.clock.advance(601)
    [listed] = rig.engine.command("silence_list", {"all": True})["silences"]
    assert listed["status"] == "ended"
    assert rig.engine.command("silence_list", {})["silences"] == []
    asyncio.run(rig.event("VI_1", "MASTER"))
    assert rig.rows("SELECT status FROM alert_items ORDER BY rowid") == [(SILENCED,),
                                                                         (WAITING,)]
    assert rig.engine.info()["silences_active"] == 0
    rig.close()


def test_the_engines_loop_delivers_on_its_clock_through_real_workers(tmp_path: Path) -> None:
    with HttpSink().start() as http:
        rig = Rig(tmp_path, url=http.url("/chat"), workers=True)

        async def scenario() -> None:
            loop = asyncio.create_task(rig.engine.run())
            await rig.event("VI_1", "FAULT")
            # A marker: an event for another host, whose own group is due later than the
            # first one's. Until the clock moves, neither goes, however long we wait.
            rig.clock.advance(1)
            await rig.event("VI_9", "FAULT", host="lb9")
            await asyncio.sleep(1.5)  # more than the loop's longest sleep (MAX_SLEEP)
            assert http.got("/chat") == []
            rig.clock.advance(29)  # lb1's group is due, lb9's is not
            rig.engine.wake()
            deadline = time.monotonic() + 120
            while not rig.rows("SELECT 1 FROM alert_messages WHERE status = 'sent'"):
                assert time.monotonic() < deadline, "the message was not delivered"
                await asyncio.sleep(0.05)
            await rig.engine.stop(10)
            await loop

        asyncio.run(scenario())
        [request] = http.got("/chat")
        assert "lb1" in request.json["title"] + request.json["message"]
        [(status, started, ended)] = rig.rows(
            "SELECT status, started_ns, ended_ns FROM alert_attempts")
        assert status == "ok" and started == ended == rig.clock.time_ns()
        assert rig.rows("SELECT receiver, status FROM alert_messages") == [("chat", SENT)]
        # lb9's group waits still: its group_wait has not passed on the clock.
        assert rig.rows("SELECT count(*) FROM alert_items WHERE status = 'waiting'") == [(1,)]
        assert [topic for topic, _ in rig.published if topic == "alert"] == ["alert"]
        rig.close()


def test_slow_down_holds_the_receiver_until_retry_after_on_the_clock(tmp_path: Path) -> None:
    """A 429 with Retry-After: 30 settles the attempt as failed and holds every pending
    message of the receiver for 30 s of the engine's clock; delivery waits for that."""
    rig = Rig(tmp_path)
    core = rig.engine.core
    box = core.outbox
    t0 = rig.clock.time_ns()
    with rig.journal.transaction():
        first = box.add_message("chat", "firing", "a", "b", "failure", ["e1"], t0)
        second = box.add_message("chat", "firing", "c", "d", "failure", ["e2"], t0,
                                 group_key="other")
        row = box.message(first)
        assert row is not None
        path = str(tmp_path / "result.jsonl")
        attempt = box.start_attempt(row, path, t0)
    lines = [{"t": "start", "pid": 1, "ticks": 1, "ns": t0},
             {"t": "plan", "urls": [{"id": "u1", "url": "json://chat"}], "problems": []},
             {"t": "send", "id": "u1"},
             {"t": "url", "id": "u1", "url": "json://chat", "ok": False, "status": "FAILURE",
              "error": "HTTP 429", "elapsed": 0.1, "http": 429, "retry_after": 30.0},
             {"t": "end"}]
    Path(path).write_text("".join(json.dumps(line) + "\n" for line in lines))
    rig.clock.advance(2)
    settle = Settle(core, GroupCommit(rig.journal, core.new_turn))
    settle.now(Ending(attempt, first, "chat", path))
    hold = rig.clock.time_ns() + 30 * 10**9
    assert not Path(path).exists()  # read and journaled: the file goes
    assert rig.rows("SELECT status, error FROM alert_attempts") == [("failed",
                                                                      "json://chat: HTTP 429")]
    assert rig.rows("SELECT rowid, status, next_ns FROM alert_messages ORDER BY rowid") \
        == [(first, PENDING, hold), (second, PENDING, hold)]
    assert core.flights.holds == {"chat": hold}
    assert rig.engine.counts["slow_down"] == 1
    [(topic, body)] = rig.published
    assert (topic, body["status"], body["message"]) == ("alert", "failed", first)
    delivery = Delivery(core, Attempts(core, GroupCommit(rig.journal, core.new_turn), settle))
    rig.clock.advance(29)
    assert delivery.step(rig.clock.time_ns()) == hold  # held: nothing starts before then
    assert core.flights.inflight == {}
    rig.close()
