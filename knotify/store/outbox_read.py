"""Read-only queries over the outbox's tables: an event's alert items, messages by id.

One reading for the two places that show what became of an event's alerts: a
history answer (:mod:`knotify.store.outbox.history`, in the router) and the web
pages (:mod:`knotify.web.data`, on a read-only connection). It needs only a
connection and imports nothing of knotify, so the web can use it without the
outbox package (which brings the alert stages with it).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Sequence
from typing import Any

#: Parameters per ``IN (...)``: well under SQLite's limit.
CHUNK = 500

#: Deepest escalation chain followed (a damaged journal could hold a loop).
MAX_CHAIN = 10


def chunks(items: Sequence[Any]) -> Iterable[list[Any]]:
    """``items`` in lists of at most :data:`CHUNK`."""
    for start in range(0, len(items), CHUNK):
        yield list(items[start:start + CHUNK])


def items_of(db: sqlite3.Connection, event_ids: Iterable[str]) -> list[dict[str, Any]]:
    """The alert items of these events, oldest first; ``message`` is the message's id."""
    rows: list[Sequence[Any]] = []
    for part in chunks(list(event_ids)):
        rows.extend(db.execute(
            "SELECT rowid, event_id, receiver, stream, alert, status, detail, created_ns, "
            f"message FROM alert_items WHERE event_id IN ({','.join('?' * len(part))})",
            part).fetchall())
    rows.sort(key=lambda r: r[0])
    return [{"item": r[0], "event_id": r[1], "receiver": r[2], "stream": r[3], "alert": r[4],
             "status": r[5], "detail": r[6], "created_ns": r[7], "message": r[8]}
            for r in rows]


def messages_by_id(db: sqlite3.Connection, wanted: Iterable[int]) -> dict[int, dict[str, Any]]:
    """Messages by id (and those they escalated to), each with its attempts, oldest first."""
    todo = set(wanted)
    out: dict[int, dict[str, Any]] = {}
    while todo:
        batch = sorted(todo)[:CHUNK]
        todo -= set(batch)
        for r in db.execute(
                "SELECT rowid, receiver, alert, title, status, event_ids, created_ns, ended_ns, "
                "attempts, escalated_to, escalated_from, detail, next_ns FROM alert_messages "
                f"WHERE rowid IN ({','.join('?' * len(batch))})", batch):
            out[r[0]] = {"id": r[0], "receiver": r[1], "alert": r[2], "title": r[3],
                         "status": r[4], "events": json.loads(r[5]), "created_ns": r[6],
                         "ended_ns": r[7], "attempt_count": r[8], "escalated_to": r[9],
                         "escalated_from": r[10], "detail": r[11], "next_ns": r[12],
                         "attempts": []}
            if r[9] is not None and r[9] not in out:
                todo.add(r[9])
    for part in chunks(sorted(out)):
        for r in db.execute(
                "SELECT message, attempt, status, started_ns, ended_ns, urls, error FROM "
                f"alert_attempts WHERE message IN ({','.join('?' * len(part))}) ORDER BY rowid",
                part):
            out[r[0]]["attempts"].append({
                "attempt": r[1], "status": r[2], "started_ns": r[3], "ended_ns": r[4],
                "urls": json.loads(r[5]) if r[5] else [], "error": r[6]})
    return out


def chain(messages: dict[int, dict[str, Any]], rowid: int | None,
          depth: int = 0) -> dict[str, Any] | None:
    """Message ``rowid`` with ``escalation``: the message it escalated to, and so on."""
    if rowid is None or rowid not in messages or depth > MAX_CHAIN:
        return None
    msg = dict(messages[rowid])
    msg["escalation"] = chain(messages, msg["escalated_to"], depth + 1) \
        if msg["escalated_to"] != rowid else None
    return msg
