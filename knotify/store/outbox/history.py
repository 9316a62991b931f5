"""The outbox in a history answer (what became of each event's alerts), and pruning."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from knotify.store.outbox.schema import CHUNK


def attach_history(db: sqlite3.Connection, by_id: dict[str, dict[str, Any]]) -> None:
    """Add ``alerts`` to each event of a history answer: items, messages, every attempt."""
    for event in by_id.values():
        event["alerts"] = []
    if not by_id:
        return
    items: list[Any] = []
    ids = list(by_id)
    for start in range(0, len(ids), CHUNK):
        part = ids[start:start + CHUNK]
        items.extend(db.execute(
            "SELECT rowid, event_id, receiver, stream, alert, status, detail, created_ns, "
            f"message FROM alert_items WHERE event_id IN ({','.join('?' * len(part))})",
            part).fetchall())
    items.sort(key=lambda r: r[0])
    wanted = {r[8] for r in items if r[8] is not None}
    messages: dict[int, dict[str, Any]] = {}
    while wanted:
        batch = sorted(wanted)[:CHUNK]
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
    for start in range(0, len(found), CHUNK):
        batch = found[start:start + CHUNK]
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
