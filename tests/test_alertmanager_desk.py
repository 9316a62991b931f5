"""The Alertmanager desk in-process: the engine's stages on a fake clock, a real journal.

What each message would post is read as its attempt would read it
(:meth:`knotify.alerts.alertmanager_desk.Desk.alerts`); nothing is sent (no worker
runs), so the order of the engine's stages is the test's to choose: the tick that
sees a state change and the compose of that change's own page, whichever comes first.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from fakeclock import FakeClock

from knotify import config as configmod
from knotify import log as logmod
from knotify.actions.base import Services
from knotify.alerts import compose, escalate, render
from knotify.alerts.engine import AlertEngine
from knotify.event import Event
from knotify.executor import Executor, Run
from knotify.store.db import Database
from knotify.store.events import EventStore
from knotify.tracker import Tracker
from knotify.vocab import TRANSITION

CONFIG = """
[paths]
runtime_dir = "{tmp}/run"
state_dir = "{tmp}/state"
[alerts]
group_wait = "30s"
flap_threshold = 0
[receivers.am]
type = "alertmanager"
urls = ["http://127.0.0.1:9"]
[receivers.chat]
urls = ["json://127.0.0.1:9/never"]
fallback = "am"
[[rule]]
id = "page"
kind = ["INSTANCE"]
state = {states}
[[rule.action]]
type = "alert"
receivers = [{receivers}]
"""


class Rig:
    """An engine and an executor on one fake clock and one journal file; no workers."""

    def __init__(self, tmp_path: Path, states: str = '["FAULT"]',
                 receivers: str = '"am"') -> None:
        self.clock = FakeClock()
        self.config = configmod.parse(
            CONFIG.format(tmp=tmp_path, states=states, receivers=receivers), "t.toml")
        self.journal = EventStore(Database(str(tmp_path / "journal.db")))
        self.tracker = Tracker()
        log = logmod.get()
        self.engine = AlertEngine(self.config.alert_engine, self.journal, self.tracker,
                                  log, self.publish, clock=self.clock)
        self.executor = Executor(self.journal, self.tracker, log, self.publish,
                                 clock=self.clock)
        self.executor.services = Services(alerts=self.engine, silences=self.engine, log=log)
        self.core = self.engine.core
        self.seq = 0
        asyncio.run(self.engine.pool.close())
        self.clock.advance(1)

    def publish(self, topic: str, body: dict[str, Any]) -> None:
        pass

    def event(self, state: str) -> str:
        """lb1's VI_1 now in ``state``, through the rule when it fires; the event's id."""
        async def route() -> str:
            self.seq += 1
            now = self.clock.time_ns()
            ev = Event(id=f"event-{self.seq:08d}", host="lb1", kind="INSTANCE", name="VI_1",
                       state=state, prio=100, seq=self.seq, ts_ns=now, recv_ns=now,
                       source="send")
            tr = self.tracker.observe(ev)
            assert tr.cls == TRANSITION
            rule = self.config.rules[0]
            with self.journal.transaction():
                self.journal.add_event(ev, tr)
                rowid = (self.journal.add_run(ev.id, rule.id, 0, rule.actions[0].kind)
                         if rule.fires(ev, tr) else None)
            if rowid is not None:
                self.executor.submit(Run(rowid, ev, tr, rule, 0, rule.actions[0],
                                         self.clock.monotonic()))
                while self.executor.queued:
                    await asyncio.sleep(0.01)
            return ev.id

        return asyncio.run(route())

    def compose(self) -> None:
        """group_wait passes: every waiting group becomes its message."""
        self.clock.advance(30)
        compose.compose(self.core, self.clock.time_ns())

    def tick(self) -> None:
        self.core.am.tick(self.clock.time_ns(), self.tracker.states, self.core.receivers)

    def posts(self) -> list[tuple[str, list[tuple[str, str]]]]:
        """Each message's alert kind and what it posts now: (state label, firing/resolved)."""
        receiver = self.core.receivers["am"]
        return [(m.alert, [(a["labels"]["state"], "firing" if a["ends_ns"] is None
                            else "resolved") for a in self.core.am.alerts(m.rowid, receiver)])
                for m in self.core.outbox.open_messages("am")]

    def close(self) -> None:
        self.journal.database.close()


@pytest.mark.parametrize("tick_first", [True, False], ids=["tick-first", "compose-first"])
def test_the_page_that_says_fault_ended_resolves_it_and_fires_nothing_for_backup(
    tmp_path: Path, tick_first: bool
) -> None:
    rig = Rig(tmp_path)
    rig.event("MASTER")  # the rule pages FAULT only: nothing queued
    fault = rig.event("FAULT")
    rig.compose()
    rig.tick()  # the re-post clock starts; nothing has ended
    [firing] = rig.core.am.active("am")
    assert (firing.state, firing.event_ids) == ("FAULT", [fault])
    rig.event("BACKUP")  # send_resolved: the rule pages its end, after group_wait
    [(fields,)] = rig.journal.database.db.execute(
        "SELECT fields FROM alert_items WHERE status = 'waiting'").fetchall()
    assert f'"{render.ENDS_FIELD}": "FAULT"' in fields
    if tick_first:  # the tick sees BACKUP before the page's group is due (the usual order)
        rig.tick()
        rig.compose()
    else:  # the page is composed first (a loop turn late under load)
        rig.compose()
        rig.tick()
    rig.tick()
    assert rig.core.am.active("am") == []
    posts = rig.posts()
    # No message posts BACKUP (no rule pages it), and none posts FAULT firing any more.
    assert all(state == "FAULT" and how == "resolved" for _, alerts in posts
               for state, how in alerts), posts
    # The page of the end posts the resolution itself (not an empty list, nor its events'
    # state as a firing alert).
    assert posts[-1 if tick_first else 1] == ("firing", [("FAULT", "resolved")]), posts
    rig.close()


def test_a_rule_that_pages_backup_too_fires_backup_when_fault_ends(tmp_path: Path) -> None:
    rig = Rig(tmp_path, states='["FAULT", "BACKUP"]')
    rig.event("MASTER")
    rig.event("FAULT")
    rig.compose()
    backup = rig.event("BACKUP")  # paged for itself, not only as FAULT's end
    rig.compose()
    rig.tick()
    [active] = rig.core.am.active("am")
    assert (active.state, active.event_ids) == ("BACKUP", [backup])
    assert rig.posts() == [("firing", [("FAULT", "resolved")]),
                           ("firing", [("FAULT", "resolved"), ("BACKUP", "firing")])]
    rig.close()


def test_the_page_of_the_end_escalated_to_alertmanager_posts_fault_resolved(
    tmp_path: Path
) -> None:
    # The chat receiver pages; Alertmanager is its fallback: an escalated message has no
    # alerts of its own and carries its events' (here: FAULT's end, never BACKUP firing).
    rig = Rig(tmp_path, receivers='"chat"')
    rig.event("MASTER")
    fault_ns = rig.clock.time_ns()
    rig.event("FAULT")
    rig.clock.advance(1)
    backup_ns = rig.clock.time_ns()
    rig.event("BACKUP")
    rig.compose()
    chat = rig.core.receivers["chat"]
    am = rig.core.receivers["am"]
    with rig.journal.transaction():
        for message in rig.core.outbox.open_messages("chat"):
            escalate.escalate(rig.core, message, chat, rig.clock.time_ns())
    [message] = rig.core.outbox.open_messages("am")
    posted = rig.core.am.alerts(message.rowid, am)
    # One chat message (group_by incident: both events in one group): FAULT fired by the
    # first event and resolved by the second, posted once, resolved.
    assert [(a["labels"]["state"], a["starts_ns"], a["ends_ns"]) for a in posted] \
        == [("FAULT", fault_ns, backup_ns)], posted
    rig.close()
