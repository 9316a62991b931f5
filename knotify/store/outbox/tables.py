"""The :class:`Outbox`: rows of the outbox tables (:mod:`knotify.store.outbox`)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

from knotify.alerts.grouping import Waiting
from knotify.event import Key
from knotify.store.db import Database
from knotify.store.outbox import history, schema
from knotify.store.outbox.rows import (
    MESSAGE_COLUMNS,
    STREAM_COLUMNS,
    AttemptRow,
    ItemRow,
    MessageRow,
    StreamRow,
    message_row,
    stream_row,
)
from knotify.store.outbox.schema import CHUNK


def backoff(attempt: int, initial: float, maximum: float) -> float:
    """Seconds before retry number ``attempt`` (1 = the first retry): doubling, capped."""
    return float(min(maximum, initial * (2 ** max(0, min(attempt - 1, 40)))))


class Outbox:
    """Rows of the outbox tables; the caller holds the transaction."""

    def __init__(self, database: Database) -> None:
        """The outbox tables in ``database``, made or brought up to this schema."""
        self.database = database
        self.db = database.db
        schema.create(self.db)

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

    def stream(self, stream_id: str, key: Key) -> StreamRow | None:
        row = self.db.execute(
            f"SELECT {STREAM_COLUMNS} FROM alert_streams WHERE stream = ? AND host = ? "
            "AND kind = ? AND name = ? AND vs = ?", (stream_id, *key)).fetchone()
        return stream_row(row) if row else None

    def put_stream(self, row: StreamRow) -> None:
        s = row.state
        self.db.execute(
            f"INSERT OR REPLACE INTO alert_streams ({STREAM_COLUMNS}) VALUES "
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
            f"SELECT {STREAM_COLUMNS} FROM alert_streams WHERE flapping = 1 OR "
            f"(alerted_state IN ({marks}) AND coalesce(repeat_s, 1) > 0)", states).fetchall()
        return [stream_row(r) for r in rows]

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
        row = self.db.execute(f"SELECT {MESSAGE_COLUMNS} FROM alert_messages WHERE rowid = ?",
                              (rowid,)).fetchone()
        return message_row(row) if row else None

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
        for start in range(0, len(chosen), CHUNK):
            part = sorted(chosen)[start:start + CHUNK]
            for row in self.db.execute(
                    f"SELECT {MESSAGE_COLUMNS} FROM alert_messages WHERE rowid IN "
                    f"({','.join('?' * len(part))}) ORDER BY rowid", part):
                message = message_row(row)
                out.setdefault(message.receiver, []).append(message)
        return out

    def hold(self, receiver: str, until_ns: int) -> None:
        """Nothing of ``receiver``'s pending messages goes out before ``until_ns``."""
        self.db.execute("UPDATE alert_messages SET next_ns = max(next_ns, ?) WHERE "
                        "receiver = ? AND status = 'pending'", (until_ns, receiver))

    def open_messages(self, receiver: str) -> list[MessageRow]:
        rows = self.db.execute(
            f"SELECT {MESSAGE_COLUMNS} FROM alert_messages WHERE receiver = ? AND status IN "
            "('pending', 'sending') ORDER BY rowid", (receiver,)).fetchall()
        return [message_row(r) for r in rows]

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
        history.attach_history(self.db, by_id)

    def prune(self, before_ns: int) -> None:
        """Forget finished rows made before ``before_ns`` (when the oldest event kept
        arrived): :func:`prune`."""
        history.prune(self.db, before_ns)

    def counts(self) -> dict[str, int]:
        out = {f"items_{k}": int(v) for k, v in self.db.execute(
            "SELECT status, count(*) FROM alert_items WHERE status = 'waiting' GROUP BY status")}
        out.update({f"messages_{k}": int(v) for k, v in self.db.execute(
            "SELECT status, count(*) FROM alert_messages GROUP BY status")})
        return out
