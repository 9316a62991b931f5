"""The stores on a real SQLite file: each makes and upgrades its own tables, and all of
them share the database's transactions."""

from __future__ import annotations

from pathlib import Path

import pytest

from knotify.errors import JournalError
from knotify.event import Event
from knotify.store.alertmanager import AlertmanagerStore, AMAlert
from knotify.store.db import Database
from knotify.store.events import EventStore
from knotify.store.outbox import Outbox
from knotify.store.peers import PeerStore
from knotify.store.rule_since import RuleSinceRows
from knotify.store.silences import SilenceRows
from knotify.tracker import Transition
from knotify.vocab import SENT

TR = Transition("transition", "MASTER", "BACKUP", None, 1)


def tables(db: Database) -> set[str]:
    return {row[0] for row in db.db.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")}


def test_each_store_makes_its_own_tables_and_no_other(tmp_path: Path) -> None:
    db = Database(str(tmp_path / "j.db"))
    assert tables(db) == {"meta"}
    EventStore(db)
    assert tables(db) == {"meta", "events", "keys", "state", "runs"}
    Outbox(db)
    assert tables(db) - {"meta", "events", "keys", "state", "runs"} == {
        "alert_items", "alert_messages", "alert_attempts", "alert_streams"}
    before = tables(db)
    SilenceRows(db)
    assert tables(db) - before == {"silences"}
    before = tables(db)
    PeerStore(db)
    assert tables(db) - before == {"cluster_peers"}
    before = tables(db)
    AlertmanagerStore(db)
    assert tables(db) - before == {"am_alerts", "am_posts"}
    before = tables(db)
    RuleSinceRows(db)
    assert tables(db) - before == {"alert_rule_since"}
    db.close()


def test_alertmanager_rows_follow_their_messages_and_are_pruned(tmp_path: Path) -> None:
    db = Database(str(tmp_path / "j.db"))
    outbox, rows = Outbox(db), AlertmanagerStore(db)
    key = ("lb1", "INSTANCE", "VI_1", "")
    with db.transaction():
        old = AMAlert("am", "fp1", {"instance": "VI_1", "host": "lb1"}, {}, key, "FAULT",
                      10, None, ["e1"])
        rows.put(old)
        rows.put(AMAlert("am", "fp2", {"instance": "VI_2"}, {}, key, "FAULT", 20, None, ["e2"]))
        sent = outbox.add_message("am", "firing", "t", "b", "failure", ["e1"], 30)
        still = outbox.add_message("am", "firing", "t", "b", "failure", ["e2"], 40)
        rows.link(sent, "am", ["fp1"])
        rows.link(still, "am", ["fp1", "fp2"])
        outbox.update_message(sent, status=SENT)
        old.ends_ns = 50
        rows.set_ended(old)
    assert [a.fingerprint for a in rows.active("am")] == ["fp2"]
    assert [a.fingerprint for a in rows.active_of("am", key)] == ["fp2"]
    assert [(a.fingerprint, a.ends_ns) for a in rows.posted(still)] == [("fp1", 50),
                                                                         ("fp2", None)]
    assert old.describe() == "VI_1 FAULT on lb1"
    with db.transaction():
        rows.prune(ended_before_ns=60)  # fp1 ended at 50; the sent message is done
    assert rows.get("am", "fp1") is None and rows.posted(sent) == []
    assert [a.fingerprint for a in rows.posted(still)] == ["fp2"]
    db.close()


def test_an_open_message_gets_its_items_group_key_on_upgrade(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    db = Database(str(path))
    Outbox(db)
    with db.transaction():
        for message, status in ((1, "pending"), (2, "sent")):
            db.db.execute(
                "INSERT INTO alert_messages (receiver, alert, title, body, notify_type, "
                "event_ids, status, created_ns, next_ns) VALUES ('ops', 'firing', 't', 'b', "
                "'info', '[]', ?, 1, 1)", (status,))
            db.db.execute(
                "INSERT INTO alert_items (event_id, receiver, stream, alert, status, "
                "group_key, fields, created_ns, due_ns, message) VALUES ('e', 'ops', 's', "
                "'firing', 'composed', ?, '{}', 1, 1, ?)", (f"host-{message}", message))
    # As an older knotify left it: no group_key column.
    db.db.execute("ALTER TABLE alert_messages DROP COLUMN group_key")
    db.close()
    db = Database(str(path))
    Outbox(db)
    rows = db.db.execute("SELECT rowid, group_key FROM alert_messages ORDER BY rowid").fetchall()
    db.close()
    assert rows == [(1, "host-1"), (2, None)]  # only open messages need it


def test_stores_share_the_transaction_and_its_rollback(tmp_path: Path) -> None:
    db = Database(str(tmp_path / "j.db"))
    events, silences, peers = EventStore(db), SilenceRows(db), PeerStore(db)
    undone: list[str] = []
    ev = Event(id="event-00000001", host="h1", kind="INSTANCE", name="VI_1", state="MASTER",
               prio=100, seq=1, ts_ns=1, recv_ns=1, source="send")
    with pytest.raises(RuntimeError), db.transaction():
        events.add_event(ev, TR)
        silences.add(["host=h1"], 1, 2, 1, "me", "test")
        peers.add(["lb2"], 1)  # joins the transaction under way
        db.on_rollback(lambda: undone.append("undo"))
        raise RuntimeError("a bug half way")
    assert undone == ["undo"]
    assert events.seen_many([ev.id]) == set()
    assert silences.every() == [] and peers.hosts() == []
    with db.transaction():
        events.add_event(ev, TR)
        silences.add(["host=h1"], 1, 2, 1, "me", "test")
        peers.add(["lb2"], 1)
    assert events.seen_many([ev.id]) == {ev.id}
    assert [s.matchers for s in silences.every()] == [["host=h1"]] and peers.hosts() == ["lb2"]
    db.close()


def test_a_store_version_newer_than_this_knotify_is_refused(tmp_path: Path) -> None:
    db = Database(str(tmp_path / "j.db"))
    db.set_version("schema.test", 3)
    db.check_version("schema.test", 3)
    with pytest.raises(JournalError, match="newer than this knotify"):
        db.check_version("schema.test", 2)
    assert db.version("schema.none") is None
    db.close()
