"""Reading events back: one event as values, the state table, history with runs.

Rows come from :data:`~knotify.store.events_schema.EVENT_COLUMNS`; the caller
(:class:`~knotify.store.events.EventStore`) hands in its connection.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from knotify.event import Event
from knotify.sqlglob import glob_clause, id_clause
from knotify.store.events_schema import EVENT_COLUMNS
from knotify.tracker import Transition


def load_event(db: sqlite3.Connection, event_id: str) -> tuple[Event, Transition] | None:
    row = db.execute(f"SELECT {EVENT_COLUMNS} FROM events WHERE id = ?",
                     (event_id,)).fetchone()
    return row_event(row) if row else None


def status(db: sqlite3.Connection, offset: int = 0, limit: int = -1) -> list[dict[str, Any]]:
    """The state table in key order; ``limit`` rows from ``offset`` (-1: all)."""
    rows = db.execute(
        "SELECT host, kind, name, vs, state, prio, since_ns, event_id, seq, epoch, "
        "updated_ns FROM state ORDER BY host, kind, name, vs LIMIT ? OFFSET ?",
        (limit, offset))
    keys = ("host", "kind", "name", "vs", "state", "prio", "since_ns", "event_id", "seq",
            "transitions", "updated_ns")
    return [dict(zip(keys, row, strict=True)) for row in rows]


def history(db: sqlite3.Connection, limit: int = 50, *, host: str | None = None,
            kind: str | None = None, name: str | None = None, before: int | None = None,
            event_id: str | None = None, transitions: bool = False) -> list[dict[str, Any]]:
    """Events newest first. ``host``, ``kind`` and ``name`` are patterns as in rules and
    ``knotify watch`` (``*``, ``?``, a leading ``!`` negates); ``event_id`` is an id or
    its first characters; ``transitions`` leaves out repeats, notices and stale ones."""
    where: list[str] = []
    args: list[object] = []
    keyed = [glob_clause(column, value, column == "kind") for column, value in
             (("host", host), ("kind", kind), ("name", name)) if value is not None]
    if keyed:
        where.append("kid IN (SELECT kid FROM keys WHERE "
                     + " AND ".join(sql for sql, _ in keyed) + ")")
        args.extend(v for _, values in keyed for v in values)
    if event_id is not None:
        sql, values = id_clause(event_id)
        where.append(sql)
        args.extend(values)
    if transitions:
        where.append("class = 'transition'")
    if before is not None:
        where.append("rowid < ?")
        args.append(before)
    clause = ("WHERE " + " AND ".join(where)) if where else ""
    rows = db.execute(
        f"SELECT {EVENT_COLUMNS} FROM events {clause} ORDER BY rowid DESC LIMIT ?",
        (*args, limit)).fetchall()
    out = [row_dict(row) for row in rows]
    by_id = {item["id"]: item for item in out}
    ids = list(by_id)
    runs: list[tuple[Any, ...]] = []
    for start in range(0, len(ids), 500):  # SQLite limits the number of parameters
        chunk = ids[start:start + 500]
        marks = ",".join("?" * len(chunk))
        runs.extend(db.execute(
            "SELECT rowid, event_id, rule, idx, kind, status, created_ns, started_ns, "
            f"ended_ns, exit_code, output, detail FROM runs WHERE event_id IN ({marks})",
            chunk))
    runs.sort(key=lambda run: run[0])
    for run in runs:
        by_id[run[1]]["actions"].append({
            "run": run[0], "rule": run[2], "index": run[3], "kind": run[4],
            "status": run[5], "created_ns": run[6], "started_ns": run[7],
            "ended_ns": run[8], "exit_code": run[9], "output": run[10],
            "detail": run[11],
        })
    return out


def row_dict(row: tuple[Any, ...]) -> dict[str, Any]:
    data = json.loads(row[19]) if row[19] else {}
    return {
        "rowid": row[0], "id": row[1], "host": row[2], "kind": row[3], "name": row[4],
        "vs": row[5], "reported": row[6], "state": row[7], "prio": row[8], "seq": row[9],
        "ts_ns": row[10], "recv_ns": row[11], "source": row[12], "form": row[13],
        "class": row[14], "prev_state": row[15], "prev_since_ns": row[16], "epoch": row[17],
        "error": row[18], "argv": data.get("argv"), "raw": data.get("raw"),
        "extra": data.get("extra") or {}, "actions": [],
    }


def row_event(row: tuple[Any, ...]) -> tuple[Event, Transition]:
    d = row_dict(row)
    ev = Event(
        id=d["id"], host=d["host"], kind=d["kind"], name=d["name"], state=d["reported"],
        prio=d["prio"], vs=d["vs"], seq=d["seq"], ts_ns=d["ts_ns"], source=d["source"],
        form=d["form"], argv=d["argv"], raw=d["raw"], error=d["error"], recv_ns=d["recv_ns"],
        extra=d["extra"],
    )
    tr = Transition(d["class"], d["state"] or d["reported"], d["prev_state"] or "",
                    d["prev_since_ns"], d["epoch"] or 0)
    return ev, tr
