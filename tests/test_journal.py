"""The journal on a real SQLite file: key numbering, schema upgrade, failed batches."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from knotify.errors import JournalError
from knotify.event import Event
from knotify.store.db import Database
from knotify.store.events import EventStore
from knotify.store.events_schema import SCHEMA_VERSION
from knotify.tracker import Transition

# The events table and its index as schema 1 (knotify 0.1.0 before key numbers) made them.
SCHEMA_1_EVENTS = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT INTO meta VALUES ('schema', '1');
CREATE TABLE events (
    rowid INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, host TEXT NOT NULL,
    kind TEXT NOT NULL, name TEXT NOT NULL, vs TEXT NOT NULL DEFAULT '', state TEXT NOT NULL,
    effective TEXT, prio INTEGER, seq INTEGER NOT NULL, ts_ns INTEGER NOT NULL,
    recv_ns INTEGER NOT NULL, source TEXT NOT NULL, form TEXT NOT NULL DEFAULT '',
    class TEXT NOT NULL, prev_state TEXT, prev_since_ns INTEGER, epoch INTEGER, error TEXT,
    data TEXT
);
CREATE INDEX events_key ON events (host, kind, name, vs);
"""


def event(n: int, host: str = "h1", name: str = "VI_1", kind: str = "INSTANCE") -> Event:
    return Event(id=f"event-{n:08d}", host=host, kind=kind, name=name, state="MASTER",
                 prio=100, seq=n, ts_ns=n, recv_ns=n, source="send")


TR = Transition("transition", "MASTER", "BACKUP", None, 1)


def add(journal: EventStore, *events: Event) -> None:
    with journal.transaction():
        for ev in events:
            journal.add_event(ev, TR)


def key_numbers(path: Path) -> dict[tuple[str, ...], int]:
    db = sqlite3.connect(path)
    try:
        return {tuple(row[1:]): row[0] for row in db.execute("SELECT * FROM keys")}
    finally:
        db.close()


def test_events_of_one_key_share_a_number_and_filters_use_it(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    journal = EventStore(Database(str(path)))
    add(journal, event(1), event(2, host="h2"), event(3), event(4, name="VI_2"))
    add(journal, event(5, host="h2"), event(6, kind="GROUP", name="G"))
    assert key_numbers(path) == {("h1", "INSTANCE", "VI_1", ""): 1,
                                 ("h2", "INSTANCE", "VI_1", ""): 2,
                                 ("h1", "INSTANCE", "VI_2", ""): 3,
                                 ("h1", "GROUP", "G", ""): 4}
    def ids(**f: Any) -> list[str]:
        return [e["id"][-1] for e in journal.history(100, **f)]

    assert ids(host="h2") == ["5", "2"]
    assert ids(name="VI_1") == ["5", "3", "2", "1"]
    assert ids(host="h1", name="VI_1") == ["3", "1"]
    assert ids(kind="GROUP") == ["6"]
    assert ids(host="nope") == []
    assert ids() == ["6", "5", "4", "3", "2", "1"]
    journal.database.close()
    # Numbers survive a restart; a new key gets the next one.
    journal = EventStore(Database(str(path)))
    add(journal, event(7, host="h3"), event(8))
    assert key_numbers(path)[("h3", "INSTANCE", "VI_1", "")] == 5
    assert [e["id"][-1] for e in journal.history(100, name="VI_1", host="h1")] == ["8", "3", "1"]
    journal.database.close()


def test_a_failed_batch_numbers_no_key(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    journal = EventStore(Database(str(path)))
    add(journal, event(1))
    with pytest.raises(RuntimeError), journal.transaction():
        journal.add_event(event(2, host="lost"), TR)
        raise RuntimeError("the batch fails before its commit")
    add(journal, event(3, host="later"), event(4, host="lost"))
    assert key_numbers(path) == {("h1", "INSTANCE", "VI_1", ""): 1,
                                 ("later", "INSTANCE", "VI_1", ""): 2,
                                 ("lost", "INSTANCE", "VI_1", ""): 3}
    assert [e["id"][-1] for e in journal.history(10, host="lost")] == ["4"]
    journal.database.close()


def test_schema_1_journal_is_upgraded_in_place(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.executescript(SCHEMA_1_EVENTS)
    rows = [(f"old-{i:08d}", host, "INSTANCE", name, "MASTER", i, i, i, "send", "transition")
            for i, (host, name) in enumerate([("a", "VI_1"), ("b", "VI_1"), ("a", "VI_1"),
                                              ("a", "VI_2")], start=1)]
    db.executemany("INSERT INTO events (id, host, kind, name, state, seq, ts_ns, recv_ns, "
                   "source, class) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
    db.commit()
    db.close()

    journal = EventStore(Database(str(path)))
    assert key_numbers(path) == {("a", "INSTANCE", "VI_1", ""): 1,
                                 ("b", "INSTANCE", "VI_1", ""): 2,
                                 ("a", "INSTANCE", "VI_2", ""): 3}
    assert [e["id"] for e in journal.history(10, host="a", name="VI_1")] == [
        "old-00000003", "old-00000001"]
    add(journal, event(9, host="b"), event(10, host="c"))
    assert [e["id"] for e in journal.history(10, host="b")] == ["event-00000009", "old-00000002"]
    journal.database.close()
    db = sqlite3.connect(path)
    indexes = {row[1] for row in db.execute("PRAGMA index_list(events)")}
    assert "events_kid" in indexes and "events_key" not in indexes
    assert db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()[0] == str(
        SCHEMA_VERSION)
    assert db.execute("SELECT count(*) FROM events WHERE kid IS NULL").fetchone()[0] == 0
    db.close()


def test_a_newer_journal_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    EventStore(Database(str(path))).database.close()
    db = sqlite3.connect(path)
    db.execute("UPDATE meta SET value = ? WHERE key = 'schema'", (str(SCHEMA_VERSION + 1),))
    db.commit()
    db.close()
    with pytest.raises(JournalError, match="newer than this knotify"):
        EventStore(Database(str(path)))
