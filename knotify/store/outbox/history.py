"""The outbox in a history answer (what became of each event's alerts), and pruning."""

from __future__ import annotations

import sqlite3
from typing import Any

from knotify.store import outbox_read


def attach_history(db: sqlite3.Connection, by_id: dict[str, dict[str, Any]]) -> None:
    """Add ``alerts`` to each event of a history answer: items, messages, every attempt."""
    for event in by_id.values():
        event["alerts"] = []
    if not by_id:
        return
    items = outbox_read.items_of(db, by_id)
    messages = outbox_read.messages_by_id(
        db, {item["message"] for item in items if item["message"] is not None})
    for item in items:
        item["message"] = outbox_read.chain(messages, item["message"])
        by_id[item.pop("event_id")]["alerts"].append(item)


def prune(db: sqlite3.Connection, cutoff: int) -> None:
    """Forget finished alert rows made before ``cutoff`` (ns)."""
    db.execute("DELETE FROM alert_items WHERE status != 'waiting' AND created_ns < ?", (cutoff,))
    db.execute("DELETE FROM alert_messages WHERE status NOT IN ('pending', 'sending') AND "
               "created_ns < ?", (cutoff,))
    db.execute("DELETE FROM alert_attempts WHERE status != 'running' AND message NOT IN "
               "(SELECT rowid FROM alert_messages)")
