"""The durable outbox: alert items, messages, delivery attempts and per-stream memory.

Everything lives in the journal's SQLite file, so a restart or a crash loses
nothing that was queued:

- ``alert_items``: one per (event, receiver) an alert action produced, with its
  status: ``waiting`` (in its group window), ``composed`` (in a message),
  ``silenced``, ``inhibited`` (an inhibit rule's source is on), ``suppressed``
  (flapping, repeat) or ``dropped``. Unique per
  action run and receiver, so a run repeated after a crash adds nothing.
- ``alert_messages``: what a receiver is sent, oldest first per receiver;
  ``pending`` -> ``sending`` -> ``sent`` | ``expired`` | ``dropped``, with the
  URLs already reached (never sent to again) and the next retry time.
- ``alert_attempts``: every delivery attempt, its per-URL outcomes (privacy
  URLs, scrubbed errors) and its result file while it runs.
- ``alert_streams``: what flap control and repeat suppression remember.

Silences have their own store (:mod:`.silences`). This module only reads and
writes rows; deciding is done by the pure stages and the engine.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from knotify.alerts.grouping import Waiting
from knotify.alerts.stream import Stream
from knotify.event import Key
from knotify.store.db import Database

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
_CHUNK = 500


def backoff(attempt: int, initial: float, maximum: float) -> float:
    """Seconds before retry number ``attempt`` (1 = the first retry): doubling, capped."""
    return float(min(maximum, initial * (2 ** max(0, min(attempt - 1, 40)))))


@dataclass(slots=True)
class ItemRow:
    rowid: int
    event_id: str
    receiver: str
    stream: str
    alert: str
    fields: dict[str, str]
    spec: dict[str, str]
    group_key: str = ""


@dataclass(slots=True)
class MessageRow:
    rowid: int
    receiver: str
    alert: str
    title: str
    body: str
    notify_type: str
    event_ids: list[str]
    status: str
    created_ns: int
    next_ns: int
    attempts: int
    done: list[str]
    escalated_to: int | None
    escalated_from: int | None
    origin: int
    detail: str | None
    #: The group key of its items: a group's messages go out one after another.
    group_key: str | None = None


_MESSAGE_COLUMNS = ("rowid, receiver, alert, title, body, notify_type, event_ids, status, "
                    "created_ns, next_ns, attempts, done, escalated_to, escalated_from, origin, "
                    "detail, group_key")


def _message(row: Sequence[Any]) -> MessageRow:
    return MessageRow(row[0], row[1], row[2], row[3], row[4], row[5], json.loads(row[6]), row[7],
                      row[8], row[9], row[10], json.loads(row[11]), row[12], row[13],
                      row[14] if row[14] is not None else row[0], row[15], row[16])


def _upgrade(db: sqlite3.Connection) -> None:
    """Bring an older journal's outbox up to this schema (messages got their group key)."""
    have = {row[1] for row in db.execute("PRAGMA table_info(alert_messages)")}
    if "group_key" not in have:
        db.execute("ALTER TABLE alert_messages ADD COLUMN group_key TEXT")
        db.execute("UPDATE alert_messages SET group_key = (SELECT i.group_key FROM alert_items i "
                   "WHERE i.message = coalesce(alert_messages.origin, alert_messages.rowid) "
                   "LIMIT 1) WHERE status IN ('pending', 'sending')")


@dataclass(slots=True)
class StreamRow:
    stream_id: str
    key: Key
    receivers: list[str]
    spec: dict[str, str]
    repeat_s: float | None
    event_id: str | None
    fields: dict[str, str]
    state: Stream


@dataclass(slots=True)
class AttemptRow:
    rowid: int
    message: int
    receiver: str
    attempt: int
    started_ns: int
    result_path: str | None


class Outbox:
    """Rows of the outbox tables; the caller holds the transaction."""

    def __init__(self, database: Database) -> None:
        """The outbox tables in ``database``, made or brought up to this schema."""
        self.database = database
        self.db = database.db
        self.db.executescript(SCHEMA)
        _upgrade(self.db)

    # -- items ----------------------------------------------------------------------------

    def has_run(self, run: int) -> bool:
        return self.db.execute("SELECT 1 FROM alert_items WHERE run = ? LIMIT 1",
                               (run,)).fetchone() is not None

    def add_item(self, *, run: int | None, event_id: str, receiver: str, stream: str,
                 alert: str, status: str, detail: str | None, group_key: str,
                 fields: dict[str, str], spec: dict[str, str], created_ns: int,
                 due_ns: int) -> int:
        cur = self.db.execute(
            "INSERT INTO alert_items (run, event_id, receiver, stream, alert, status, detail, "
            "group_key, fields, spec, created_ns, due_ns) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, "
            "?, ?)",
            (run, event_id, receiver, stream, alert, status, detail, group_key,
             json.dumps(fields, ensure_ascii=True), json.dumps(spec) if spec else None,
             created_ns, due_ns))
        assert cur.lastrowid is not None
        return cur.lastrowid

    def waiting(self) -> list[Waiting]:
        return [Waiting(r[0], r[1], r[2]) for r in self.db.execute(
            "SELECT rowid, group_key, due_ns FROM alert_items WHERE status = 'waiting' "
            "ORDER BY rowid")]

    def items(self, rowids: Iterable[int]) -> list[ItemRow]:
        ids = list(rowids)
        if not ids:
            return []
        marks = ",".join("?" * len(ids))
        rows = self.db.execute(
            "SELECT rowid, event_id, receiver, stream, alert, fields, spec, group_key FROM "
            f"alert_items WHERE rowid IN ({marks}) ORDER BY rowid", ids).fetchall()
        return [ItemRow(r[0], r[1], r[2], r[3], r[4], json.loads(r[5]),
                        json.loads(r[6]) if r[6] else {}, r[7]) for r in rows]

    def message_items(self, message: int) -> list[ItemRow]:
        ids = [r[0] for r in self.db.execute(
            "SELECT rowid FROM alert_items WHERE message = ? ORDER BY rowid", (message,))]
        return self.items(ids)

    def set_items(self, rowids: Iterable[int], status: str, detail: str | None = None,
                  message: int | None = None) -> None:
        self.db.executemany(
            "UPDATE alert_items SET status = ?, detail = coalesce(?, detail), "
            "message = coalesce(?, message) WHERE rowid = ?",
            [(status, detail, message, rowid) for rowid in rowids])

    # -- streams --------------------------------------------------------------------------

    _STREAM_COLUMNS = ("stream, host, kind, name, vs, receivers, spec, repeat_s, event_id, "
                       "fields, alerted_state, alerted_epoch, last_ns, flapping, flap_since_ns, "
                       "suppressed")

    @staticmethod
    def _stream(row: Sequence[Any]) -> StreamRow:
        return StreamRow(
            row[0], (row[1], row[2], row[3], row[4]), json.loads(row[5]),
            json.loads(row[6]) if row[6] else {}, row[7], row[8],
            json.loads(row[9]) if row[9] else {},
            Stream(row[10], row[11], row[12], bool(row[13]), row[14], row[15]))

    def stream(self, stream_id: str, key: Key) -> StreamRow | None:
        row = self.db.execute(
            f"SELECT {self._STREAM_COLUMNS} FROM alert_streams WHERE stream = ? AND host = ? "
            "AND kind = ? AND name = ? AND vs = ?", (stream_id, *key)).fetchone()
        return self._stream(row) if row else None

    def put_stream(self, row: StreamRow) -> None:
        s = row.state
        self.db.execute(
            f"INSERT OR REPLACE INTO alert_streams ({self._STREAM_COLUMNS}) VALUES "
            "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (row.stream_id, *row.key, json.dumps(row.receivers),
             json.dumps(row.spec) if row.spec else None, row.repeat_s, row.event_id,
             json.dumps(row.fields, ensure_ascii=True), s.alerted_state, s.alerted_epoch,
             s.last_ns, int(s.flapping), s.flap_since_ns, s.suppressed))

    def timed_streams(self, repeat_states: Iterable[str]) -> list[StreamRow]:
        """Streams a timer may act on: flapping ones, and ones alerted in a bad state."""
        states = list(repeat_states)
        marks = ",".join("?" * len(states)) or "NULL"
        rows = self.db.execute(
            f"SELECT {self._STREAM_COLUMNS} FROM alert_streams WHERE flapping = 1 OR "
            f"(alerted_state IN ({marks}) AND coalesce(repeat_s, 1) > 0)", states).fetchall()
        return [self._stream(r) for r in rows]

    def reset_flaps(self, streams: list[str]) -> None:
        """Streams of a rule that is new or changed: a flap of the old one holds nothing back."""
        self.db.executemany("UPDATE alert_streams SET flapping = 0, flap_since_ns = NULL, "
                            "suppressed = 0 WHERE stream = ?", [(s,) for s in streams])

    # -- messages -------------------------------------------------------------------------

    def add_message(self, receiver: str, alert: str, title: str, body: str, notify_type: str,
                    event_ids: list[str], now_ns: int, escalated_from: int | None = None,
                    origin: int | None = None, group_key: str | None = None) -> int:
        cur = self.db.execute(
            "INSERT INTO alert_messages (receiver, alert, title, body, notify_type, event_ids, "
            "status, created_ns, next_ns, escalated_from, origin, group_key) VALUES "
            "(?, ?, ?, ?, ?, ?, 'pending', ?, ?, ?, ?, ?)",
            (receiver, alert, title, body, notify_type, json.dumps(event_ids), now_ns, now_ns,
             escalated_from, origin, group_key))
        assert cur.lastrowid is not None
        return cur.lastrowid

    def message(self, rowid: int) -> MessageRow | None:
        row = self.db.execute(f"SELECT {_MESSAGE_COLUMNS} FROM alert_messages WHERE rowid = ?",
                              (rowid,)).fetchone()
        return _message(row) if row else None

    def windows(self, per_receiver: Callable[[str], int]) -> dict[str, list[MessageRow]]:
        """Per receiver, the messages that may be sent now or next, oldest first.

        A group's messages (composed from items with one group key: by default one
        incident's) go out one after another, so only the oldest open message of each
        group is a candidate; of those, each receiver's ``per_receiver(name)`` oldest.
        Receivers come oldest head first. Cheap with hundreds open: each receiver's
        open messages are read in order only until enough groups are found.
        """
        chosen: list[int] = []
        for (receiver,) in self.db.execute(
                "SELECT DISTINCT receiver FROM alert_messages "
                "WHERE status IN ('pending', 'sending')").fetchall():
            groups: set[str | None] = set()
            limit = per_receiver(receiver)
            for rowid, key in self.db.execute(
                    "SELECT rowid, group_key FROM alert_messages WHERE receiver = ? AND "
                    "status IN ('pending', 'sending') ORDER BY rowid", (receiver,)):
                if key in groups:
                    continue
                groups.add(key)
                chosen.append(rowid)
                if len(groups) >= limit:
                    break
        out: dict[str, list[MessageRow]] = {}
        for start in range(0, len(chosen), _CHUNK):
            part = sorted(chosen)[start:start + _CHUNK]
            for row in self.db.execute(
                    f"SELECT {_MESSAGE_COLUMNS} FROM alert_messages WHERE rowid IN "
                    f"({','.join('?' * len(part))}) ORDER BY rowid", part):
                message = _message(row)
                out.setdefault(message.receiver, []).append(message)
        return out

    def hold(self, receiver: str, until_ns: int) -> None:
        """Nothing of ``receiver``'s pending messages goes out before ``until_ns``."""
        self.db.execute("UPDATE alert_messages SET next_ns = max(next_ns, ?) WHERE "
                        "receiver = ? AND status = 'pending'", (until_ns, receiver))

    def open_messages(self, receiver: str) -> list[MessageRow]:
        rows = self.db.execute(
            f"SELECT {_MESSAGE_COLUMNS} FROM alert_messages WHERE receiver = ? AND status IN "
            "('pending', 'sending') ORDER BY rowid", (receiver,)).fetchall()
        return [_message(r) for r in rows]

    def update_message(self, rowid: int, *, status: str, next_ns: int | None = None,
                       done: list[str] | None = None, ended_ns: int | None = None,
                       detail: str | None = None) -> None:
        self.db.execute(
            "UPDATE alert_messages SET status = ?, next_ns = coalesce(?, next_ns), "
            "done = coalesce(?, done), ended_ns = coalesce(?, ended_ns), "
            "detail = coalesce(?, detail) WHERE rowid = ?",
            (status, next_ns, json.dumps(done) if done is not None else None, ended_ns, detail,
             rowid))

    def set_escalated(self, rowid: int, to: int) -> None:
        self.db.execute("UPDATE alert_messages SET escalated_to = ? WHERE rowid = ?", (to, rowid))

    def set_group_key(self, rowid: int, group_key: str) -> None:
        """Put message ``rowid`` in another group (its group's messages go out in order)."""
        self.db.execute("UPDATE alert_messages SET group_key = ? WHERE rowid = ?",
                        (group_key, rowid))

    # -- attempts -------------------------------------------------------------------------

    def start_attempt(self, message: MessageRow, result_path: str, now_ns: int) -> int:
        number = message.attempts + 1
        cur = self.db.execute(
            "INSERT INTO alert_attempts (message, receiver, attempt, status, started_ns, "
            "result_path) VALUES (?, ?, ?, 'running', ?, ?)",
            (message.rowid, message.receiver, number, now_ns, result_path))
        self.db.execute("UPDATE alert_messages SET status = 'sending', attempts = ? "
                        "WHERE rowid = ?", (number, message.rowid))
        assert cur.lastrowid is not None
        return cur.lastrowid

    def finish_attempt(self, rowid: int, status: str, urls: list[dict[str, Any]], error: str,
                       ended_ns: int) -> None:
        self.db.execute(
            "UPDATE alert_attempts SET status = ?, urls = ?, error = ?, ended_ns = ?, "
            "result_path = NULL WHERE rowid = ?",
            (status, json.dumps(urls, ensure_ascii=True), error or None, ended_ns, rowid))

    def running_attempts(self) -> list[AttemptRow]:
        return [AttemptRow(*r) for r in self.db.execute(
            "SELECT rowid, message, receiver, attempt, started_ns, result_path FROM "
            "alert_attempts WHERE status = 'running' ORDER BY rowid")]

    def attach_history(self, by_id: dict[str, dict[str, Any]]) -> None:
        """Add ``alerts`` to each event of a history answer (:func:`attach_history`)."""
        attach_history(self.db, by_id)

    def prune(self, before_ns: int) -> None:
        """Forget finished rows made before ``before_ns`` (when the oldest event kept
        arrived): :func:`prune`."""
        prune(self.db, before_ns)

    def counts(self) -> dict[str, int]:
        out = {f"items_{k}": int(v) for k, v in self.db.execute(
            "SELECT status, count(*) FROM alert_items WHERE status = 'waiting' GROUP BY status")}
        out.update({f"messages_{k}": int(v) for k, v in self.db.execute(
            "SELECT status, count(*) FROM alert_messages GROUP BY status")})
        return out


def attach_history(db: sqlite3.Connection, by_id: dict[str, dict[str, Any]]) -> None:
    """Add ``alerts`` to each event of a history answer: items, messages, every attempt."""
    for event in by_id.values():
        event["alerts"] = []
    if not by_id:
        return
    items: list[Any] = []
    ids = list(by_id)
    for start in range(0, len(ids), _CHUNK):
        part = ids[start:start + _CHUNK]
        items.extend(db.execute(
            "SELECT rowid, event_id, receiver, stream, alert, status, detail, created_ns, "
            f"message FROM alert_items WHERE event_id IN ({','.join('?' * len(part))})",
            part).fetchall())
    items.sort(key=lambda r: r[0])
    wanted = {r[8] for r in items if r[8] is not None}
    messages: dict[int, dict[str, Any]] = {}
    while wanted:
        batch = sorted(wanted)[:_CHUNK]
        wanted -= set(batch)
        for row in db.execute(
                "SELECT rowid, receiver, alert, title, status, event_ids, created_ns, ended_ns, "
                "attempts, escalated_to, escalated_from, detail FROM alert_messages WHERE "
                f"rowid IN ({','.join('?' * len(batch))})", batch):
            messages[row[0]] = {
                "id": row[0], "receiver": row[1], "alert": row[2], "title": row[3],
                "status": row[4], "events": json.loads(row[5]), "created_ns": row[6],
                "ended_ns": row[7], "attempt_count": row[8], "escalated_to": row[9],
                "escalated_from": row[10], "detail": row[11], "attempts": [],
            }
            if row[9] is not None and row[9] not in messages:
                wanted.add(row[9])
    found = sorted(messages)
    for start in range(0, len(found), _CHUNK):
        batch = found[start:start + _CHUNK]
        for row in db.execute(
                "SELECT rowid, message, attempt, status, started_ns, ended_ns, urls, error "
                f"FROM alert_attempts WHERE message IN ({','.join('?' * len(batch))}) "
                "ORDER BY rowid", batch):
            messages[row[1]]["attempts"].append({
                "attempt": row[2], "status": row[3], "started_ns": row[4], "ended_ns": row[5],
                "urls": json.loads(row[6]) if row[6] else [], "error": row[7],
            })

    def chain(message_id: int | None) -> dict[str, Any] | None:
        if message_id is None or message_id not in messages:
            return None
        msg = dict(messages[message_id])
        msg["escalation"] = chain(msg["escalated_to"]) if msg["escalated_to"] != message_id \
            else None
        return msg

    for row in items:
        by_id[row[1]]["alerts"].append({
            "item": row[0], "receiver": row[2], "stream": row[3], "alert": row[4],
            "status": row[5], "detail": row[6], "created_ns": row[7],
            "message": chain(row[8]),
        })


def prune(db: sqlite3.Connection, cutoff: int) -> None:
    """Forget finished alert rows made before ``cutoff`` (ns)."""
    db.execute("DELETE FROM alert_items WHERE status != 'waiting' AND created_ns < ?", (cutoff,))
    db.execute("DELETE FROM alert_messages WHERE status NOT IN ('pending', 'sending') AND "
               "created_ns < ?", (cutoff,))
    db.execute("DELETE FROM alert_attempts WHERE status != 'running' AND message NOT IN "
               "(SELECT rowid FROM alert_messages)")
