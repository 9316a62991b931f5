"""Action kinds: registered by name, one ``run(ctx)``, services through ``Services``.

In-process, with a real journal, a real executor and a real alert engine.
"""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from knotify import config as configmod
from knotify import log as logmod
from knotify.actions import KINDS, Action
from knotify.actions.alert import AlertAction
from knotify.actions.base import Services
from knotify.actions.exec import ExecAction, ServiceAction
from knotify.actions.log import LogAction
from knotify.actions.registry import register
from knotify.alerts.engine import AlertEngine
from knotify.event import Event
from knotify.executor import Executor, Run, lane_of
from knotify.store.db import Database
from knotify.store.events import EventStore
from knotify.tracker import Tracker
from knotify.vocab import SILENCED


def test_every_kind_is_registered_under_its_name() -> None:
    assert dict(KINDS) == {"exec": ExecAction, "service": ServiceAction, "log": LogAction,
                           "alert": AlertAction}
    assert all(cls.kind == name for name, cls in KINDS.items())
    with pytest.raises(TypeError):
        KINDS["x"] = LogAction  # type: ignore[index]


def test_a_second_kind_of_the_same_name_is_refused() -> None:
    class Impostor(LogAction):
        kind = "log"

    with pytest.raises(RuntimeError, match="'log' is registered twice"):
        register(Impostor)
    assert KINDS["log"] is LogAction
    assert register(LogAction) is LogAction  # registering the same class again is harmless


def test_a_new_kind_is_one_module_and_its_registration(tmp_path: Path) -> None:
    """A kind defined outside knotify/actions, registered, is configured by its ``type``
    and run through the one ``run(ctx)`` (in a process of its own: the registry is global)."""
    script = textwrap.dedent("""
        import asyncio
        from knotify import config
        from knotify.actions.base import Action, ActionContext, ActionSettings, Services
        from knotify.actions.registry import register
        from knotify.event import Event
        from knotify.outcome import Outcome
        from knotify.tracker import Transition

        @register
        class Echo(Action):
            kind = "echo"

            def __init__(self, word):
                self.word = word

            @classmethod
            def from_config(cls, table, settings: ActionSettings):
                return cls(table.text("word"))

            async def run(self, ctx: ActionContext) -> Outcome:
                return Outcome("ok", detail=f"{self.word} {ctx.event.name} run {ctx.run}")

            def describe(self):
                return "echo " + self.word

        cfg = config.parse('[[rule]]\\nid = "r"\\n[[rule.action]]\\ntype = "echo"\\n'
                           'word = "hello"\\n', "t.toml")
        [action] = cfg.rules[0].actions
        ev = Event(id="event-00000001", host="h", kind="INSTANCE", name="VI_1", state="MASTER")
        ctx = ActionContext(ev, Transition("transition", "MASTER", "BACKUP", None, 1), "r",
                            {}, None, run=7, services=Services())
        print(asyncio.run(action.run(ctx)).detail)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "hello VI_1 run 7"


CONFIG = """
[paths]
runtime_dir = "{tmp}/run"
state_dir = "{tmp}/state"
[receivers.chat]
urls = ["json://127.0.0.1:9/never"]
[[rule]]
id = "quiet"
honor_silences = true
[[rule.action]]
type = "log"
[[rule.action]]
type = "alert"
receiver = "chat"
"""


def _runs(path: Path) -> list[tuple[str, str, bool, str]]:
    """(kind, status, whether it started, detail) of every run."""
    db = sqlite3.connect(path)
    try:
        return list(db.execute("SELECT kind, status, started_ns IS NOT NULL, detail FROM runs "
                               "ORDER BY rowid"))
    finally:
        db.close()


def test_a_silence_skips_what_the_rule_silences_and_the_alert_kind_applies_its_own(
        tmp_path: Path) -> None:
    """The executor asks ``Services.silences``; whether a kind is skipped is the kind's
    own property (the alert kind is not: the engine applies the silence to its items)."""
    config = configmod.parse(CONFIG.format(tmp=tmp_path), "t.toml")
    path = tmp_path / "state" / "journal.db"
    journal = EventStore(Database(str(path)))
    tracker = Tracker()
    log = logmod.get()
    engine = AlertEngine(config.alert_engine, journal, tracker, log, lambda *_: None)
    engine.silences.add(["host=kb1"], 600, "maintenance", "test")
    executor = Executor(journal, tracker, log, lambda *_: None)
    executor.services = Services(alerts=engine, silences=engine, log=log)
    ev = Event(id="event-00000001", host="kb1", kind="INSTANCE", name="VI_1", state="MASTER",
               prio=100, seq=1, ts_ns=time.time_ns(), recv_ns=time.time_ns(), source="send")
    tr = tracker.observe(ev)
    rule = config.rules[0]
    runs = []
    with journal.transaction():
        journal.add_event(ev, tr)
        for idx, action in enumerate(rule.actions):
            rowid = journal.add_run(ev.id, rule.id, idx, action.kind)
            runs.append(Run(rowid, ev, tr, rule, idx, action, time.monotonic()))

    async def scenario() -> None:
        for run in runs:
            executor.submit(run)
        while executor.queued:
            await asyncio.sleep(0.01)
        await executor.drain(5)

    asyncio.run(scenario())
    (log_kind, log_status, log_started, _), (alert_kind, alert_status, alert_started,
                                                alert_detail) = _runs(path)
    # The log action was skipped by the executor; the alert ran, and the engine muted it.
    assert (log_kind, log_status, log_started) == ("log", SILENCED, False)
    assert (alert_kind, alert_status, alert_started) == ("alert", SILENCED, True)
    assert alert_detail.startswith("chat: silence 1 (maintenance")
    items = sqlite3.connect(path).execute("SELECT receiver, status FROM alert_items").fetchall()
    assert items == [("chat", SILENCED)]
    journal.database.close()


def test_kind_properties_replace_kind_name_checks() -> None:
    assert [cls.skipped_when_silenced for cls in (ExecAction, ServiceAction, LogAction)] \
        == [True, True, True]
    assert AlertAction.skipped_when_silenced is False
    assert LogAction.done_level == "debug" and ExecAction.done_level == "info"
    assert LogAction.inline and not ExecAction.inline
    assert issubclass(AlertAction, Action)
    # An alert pages (send_resolved, flap control from its rule's start), waits in a lane
    # of its own per key and takes no slot; the others wait in the key's queue for a slot.
    assert AlertAction.pages and AlertAction.lane and not AlertAction.takes_slot
    for cls in (ExecAction, ServiceAction, LogAction):
        assert (cls.pages, cls.lane, cls.takes_slot) == (False, "", True)


def test_an_alert_waits_in_its_own_lane_of_the_key() -> None:
    ev = Event(id="event-00000001", host="kb1", kind="INSTANCE", name="VI_1", state="MASTER",
               prio=100, seq=1, ts_ns=1, recv_ns=1, source="send")
    tr = Tracker().observe(ev)
    config = configmod.parse(CONFIG.format(tmp="/tmp/unused"), "t.toml")
    rule = config.rules[0]
    lanes = [lane_of(Run(i, ev, tr, rule, i, action, 0.0)) for i, action in
             enumerate(rule.actions)]
    assert lanes == [ev.key, (ev.key, AlertAction.lane)]


def test_executor_and_engine_do_not_branch_on_kind_names() -> None:
    import knotify

    root = Path(knotify.__file__).parent
    for name in ("executor.py", "router.py", "alerts/engine.py", "config.py",
                 "alerts/since.py"):
        text = (root / name).read_text()
        for kind in KINDS:
            assert f'kind == "{kind}"' not in text and f'kind != "{kind}"' not in text, name


PAGING = CONFIG + """
[[rule]]
id = "page"
state = ["FAULT"]
[[rule.action]]
type = "alert"
receiver = "chat"
"""


def test_the_engine_gets_rules_and_alert_settings_through_apply(tmp_path: Path) -> None:
    """A reload hands the engine its new [alerts], receivers, rules and [cluster] in one
    value; alert rules new or changed start their flap count from then."""
    first = configmod.parse(PAGING.format(tmp=tmp_path), "t.toml")
    assert first.alert_engine.rules == first.rules
    assert first.alert_engine.cluster == first.cluster
    journal = EventStore(Database(str(tmp_path / "journal.db")))
    tracker = Tracker()
    engine = AlertEngine(first.alert_engine, journal, tracker, logmod.get(),
                         lambda *_: None)
    started = engine.rule_since.since("page#0")
    assert started > 0 and engine.rule_since.since("quiet#1") > 0
    assert engine.settings.fold_after == 12 and engine.settings.inhibit == ()
    second = configmod.parse(
        PAGING.format(tmp=tmp_path).replace('state = ["FAULT"]', 'state = ["FAULT", "STOP"]')
        .replace("[receivers.chat]", "[alerts]\nfold_after = 3\n[[alerts.inhibit]]\n"
                 'source_matchers = ["kind=PEER", "state=PEER_SILENT"]\n'
                 'equal = ["host"]\n[receivers.chat]'), "t.toml")
    engine.apply(second.alert_engine)
    assert engine.settings.fold_after == 3 and len(engine.settings.inhibit) == 1
    assert engine.rule_since.since("page#0") > started  # new matchers: a new rule
    assert engine.rule_since.since("quiet#1") <= started  # unchanged: it still exists
    assert engine.result_dir == first.alert_engine.result_dir
    journal.database.close()
