"""The journal opened read-only, and its events with their action runs and alerts.

Every other reader in :mod:`knotify.web.data` builds on these: :func:`connect`,
:class:`Filters` (the CLI's history filters as SQL), :func:`events_where` and
:func:`attach` (each event's runs, alert items, messages and attempts), and the
one-word outcomes a timeline mark shows.
"""

from __future__ import annotations

import json
import os
import sqlite3
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from knotify.errors import JournalUnavailable
from knotify.sqlglob import glob_clause, id_clause
from knotify.store.outbox_read import chain, chunks, items_of, messages_by_id
from knotify.vocab import (
    DROPPED,
    ERROR,
    EXPIRED,
    FAILED,
    INHIBITED,
    OK,
    RUNNING,
    SENT,
    SENT_BY_PEER,
    SILENCED,
    SUPPRESSED,
    TIMEOUT,
)

EVENT_COLUMNS = ("rowid, id, host, kind, name, vs, state, effective, prio, seq, ts_ns, "
                 "recv_ns, source, form, class, prev_state, prev_since_ns, error, data")



def connect(path: str) -> sqlite3.Connection:
    """A read-only connection to the journal at ``path``."""
    if not os.path.exists(path):
        raise JournalUnavailable(f"no journal at {path} yet (has the router run with this "
                                 "config?)")
    uri = "file:" + urllib.parse.quote(os.path.abspath(path)) + "?mode=ro"
    try:
        db = sqlite3.connect(uri, uri=True, check_same_thread=False)
        db.execute("PRAGMA busy_timeout = 2000")
        db.execute("PRAGMA query_only = 1")
        db.execute("SELECT 1 FROM events LIMIT 1").fetchall()
    except sqlite3.Error as exc:
        raise JournalUnavailable(f"cannot read the journal {path}: {exc}") from None
    return db


def has_table(db: sqlite3.Connection, name: str) -> bool:
    return db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                      (name,)).fetchone() is not None


# -- filters ---------------------------------------------------------------------------


@dataclass(slots=True)
class Filters:
    host: str | None = None
    kind: str | None = None
    name: str | None = None
    state: str | None = None
    event_id: str | None = None
    transitions: bool = False

    def clause(self) -> tuple[str, list[object]]:
        where: list[str] = []
        args: list[object] = []
        keyed: list[tuple[str, list[str]]] = []
        for column, value, upper in (("host", self.host, False), ("kind", self.kind, True),
                                     ("name", self.name, False)):
            if value:
                keyed.append(glob_clause(column, value, upper))
        if keyed:
            where.append("kid IN (SELECT kid FROM keys WHERE "
                         + " AND ".join(sql for sql, _ in keyed) + ")")
            for _, values in keyed:
                args.extend(values)
        if self.state:
            sql, values = glob_clause("coalesce(effective, state)", self.state, True)
            where.append(sql)
            args.extend(values)
        if self.event_id:
            sql, values = id_clause(self.event_id)
            where.append(sql)
            args.extend(values)
        if self.transitions:
            where.append("class = 'transition'")
        return " AND ".join(where), args


# -- events, actions, alerts ----------------------------------------------------------


def _event(row: Sequence[Any]) -> dict[str, Any]:
    data = json.loads(row[18]) if row[18] else {}
    extra = data.get("extra") or {}
    return {
        "rowid": row[0], "id": row[1], "host": row[2], "kind": row[3], "name": row[4],
        "vs": row[5], "reported": row[6], "state": row[7] or row[6], "prio": row[8],
        "seq": row[9], "ts_ns": row[10], "recv_ns": row[11], "source": row[12],
        "form": row[13], "class": row[14], "prev_state": row[15], "prev_since_ns": row[16],
        "error": row[17], "argv": data.get("argv"), "raw": data.get("raw"),
        "extra": extra if isinstance(extra, dict) else {},
        "actions": [], "alerts": [],
    }


def events_where(db: sqlite3.Connection, clause: str, args: Sequence[object],
                 order: str = "rowid DESC", limit: int = 50) -> list[dict[str, Any]]:
    sql = f"SELECT {EVENT_COLUMNS} FROM events"
    if clause:
        sql += f" WHERE {clause}"
    rows = db.execute(f"{sql} ORDER BY {order} LIMIT ?", (*args, limit)).fetchall()
    return [_event(r) for r in rows]


def attach(db: sqlite3.Connection, events: list[dict[str, Any]]) -> None:
    """Add each event's action runs and alerts (items, messages, every attempt)."""
    by_id = {e["id"]: e for e in events}
    ids = list(by_id)
    for part in chunks(ids):
        marks = ",".join("?" * len(part))
        for r in db.execute(
                "SELECT rowid, event_id, rule, idx, kind, status, created_ns, started_ns, "
                f"ended_ns, exit_code, output, detail FROM runs WHERE event_id IN ({marks}) "
                "ORDER BY rowid", part):
            by_id[r[1]]["actions"].append({
                "run": r[0], "rule": r[2], "index": r[3], "kind": r[4], "status": r[5],
                "created_ns": r[6], "started_ns": r[7], "ended_ns": r[8], "exit_code": r[9],
                "output": r[10], "detail": r[11]})
    if not has_table(db, "alert_items"):
        return
    items = items_of(db, ids)
    messages = messages_by_id(db, {i["message"] for i in items if i["message"] is not None})
    for item in items:
        rowid = item["message"]
        item["message"] = chain(messages, rowid)
        item["outcome"] = alert_outcome(item["status"], messages.get(rowid) if rowid else None)
        by_id[item.pop("event_id")]["alerts"].append(item)


def alert_outcome(item_status: str, message: dict[str, Any] | None) -> str:
    """One word for a timeline mark: sent, failed, silenced, inhibited or pending."""
    if item_status == SILENCED:
        return "silenced"
    if item_status in (SUPPRESSED, DROPPED, INHIBITED):
        return "inhibited"
    if message is None:
        return "pending"
    status = message["status"]
    if status in (SENT, SENT_BY_PEER):  # a peer router sent it: the page went out
        return "sent"
    if status in (EXPIRED, DROPPED):
        return "failed"
    if any(a["status"] not in (OK, RUNNING) for a in message["attempts"]):
        return "failed"
    return "pending"


def action_outcome(status: str) -> str:
    """One word for a timeline mark: ok, failed, timeout or other."""
    if status in (OK, SILENCED):
        return "ok" if status == OK else "other"
    if status in (FAILED, ERROR):
        return "failed"
    if status == TIMEOUT:
        return "timeout"
    return "other"


# -- history -------------------------------------------------------------------------------


def history(db: sqlite3.Connection, filters: Filters, limit: int = 50,
            before: int | None = None) -> list[dict[str, Any]]:
    """Events newest first (``before``: a rowid, for the next page), with outcomes."""
    clause, args = filters.clause()
    if before is not None:
        clause = " AND ".join(c for c in (clause, "rowid < ?") if c)
        args = [*args, before]
    events = events_where(db, clause, args, limit=limit)
    attach(db, events)
    return events

