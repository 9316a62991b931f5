"""The outbox's tables (:mod:`knotify.store.outbox`), made or brought up to date."""

from __future__ import annotations

import sqlite3

SCHEMA = """
CREATE TABLE IF NOT EXISTS alert_items (
    rowid INTEGER PRIMARY KEY,
    run INTEGER,
    event_id TEXT NOT NULL,
    receiver TEXT NOT NULL,
    stream TEXT NOT NULL,
    alert TEXT NOT NULL,
    status TEXT NOT NULL,
    detail TEXT,
    group_key TEXT NOT NULL,
    fields TEXT NOT NULL,
    spec TEXT,
    created_ns INTEGER NOT NULL,
    due_ns INTEGER NOT NULL,
    message INTEGER
);
CREATE UNIQUE INDEX IF NOT EXISTS alert_items_run ON alert_items (run, receiver)
    WHERE run IS NOT NULL;
CREATE INDEX IF NOT EXISTS alert_items_waiting ON alert_items (status) WHERE status = 'waiting';
CREATE INDEX IF NOT EXISTS alert_items_event ON alert_items (event_id);
CREATE INDEX IF NOT EXISTS alert_items_message ON alert_items (message);
CREATE TABLE IF NOT EXISTS alert_messages (
    rowid INTEGER PRIMARY KEY,
    receiver TEXT NOT NULL,
    alert TEXT NOT NULL,
    title TEXT NOT NULL,
    body TEXT NOT NULL,
    notify_type TEXT NOT NULL,
    event_ids TEXT NOT NULL,
    status TEXT NOT NULL,
    created_ns INTEGER NOT NULL,
    next_ns INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    done TEXT NOT NULL DEFAULT '[]',
    ended_ns INTEGER,
    escalated_to INTEGER,
    escalated_from INTEGER,
    origin INTEGER,
    detail TEXT,
    group_key TEXT
);
CREATE INDEX IF NOT EXISTS alert_messages_open ON alert_messages (receiver, rowid)
    WHERE status IN ('pending', 'sending');
CREATE TABLE IF NOT EXISTS alert_attempts (
    rowid INTEGER PRIMARY KEY,
    message INTEGER NOT NULL,
    receiver TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    status TEXT NOT NULL,
    started_ns INTEGER NOT NULL,
    ended_ns INTEGER,
    result_path TEXT,
    urls TEXT,
    error TEXT
);
CREATE INDEX IF NOT EXISTS alert_attempts_message ON alert_attempts (message);
CREATE INDEX IF NOT EXISTS alert_attempts_running ON alert_attempts (status)
    WHERE status = 'running';
CREATE TABLE IF NOT EXISTS alert_streams (
    stream TEXT NOT NULL,
    host TEXT NOT NULL,
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    vs TEXT NOT NULL,
    receivers TEXT NOT NULL,
    spec TEXT,
    repeat_s REAL,
    event_id TEXT,
    fields TEXT,
    alerted_state TEXT,
    alerted_epoch INTEGER,
    last_ns INTEGER,
    flapping INTEGER NOT NULL DEFAULT 0,
    flap_since_ns INTEGER,
    suppressed INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (stream, host, kind, name, vs)
) WITHOUT ROWID;
"""



#: Parameters per ``IN (...)``: well under SQLite's limit on variables.
CHUNK = 500



def create(db: sqlite3.Connection) -> None:
    """The outbox tables in ``db``, made or brought up to this schema."""
    db.executescript(SCHEMA)
    upgrade(db)


def upgrade(db: sqlite3.Connection) -> None:
    """Bring an older journal's outbox up to this schema (messages got their group key)."""
    have = {row[1] for row in db.execute("PRAGMA table_info(alert_messages)")}
    if "group_key" not in have:
        db.execute("ALTER TABLE alert_messages ADD COLUMN group_key TEXT")
        db.execute("UPDATE alert_messages SET group_key = (SELECT i.group_key FROM alert_items i "
                   "WHERE i.message = coalesce(alert_messages.origin, alert_messages.rowid) "
                   "LIMIT 1) WHERE status IN ('pending', 'sending')")
