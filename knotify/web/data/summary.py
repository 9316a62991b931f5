"""The overview page: who is MASTER where, hosts heard from, what is open or failing."""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from typing import Any

from knotify.store.outbox_read import messages_by_id
from knotify.vocab import BACKUP, FAULT, MASTER, NO_MASTER, SPLIT_BRAIN, STOP
from knotify.web.data.failovers import Incident, incidents
from knotify.web.data.journal import has_table


@dataclass(slots=True)
class Member:
    host: str
    kind: str
    name: str
    state: str
    since_ns: int
    prio: int | None
    event_id: str


@dataclass(slots=True)
class Cluster:
    label: str
    members: list[Member]
    condition: str = "OK"
    condition_since_ns: int | None = None
    condition_detail: str = ""

    @property
    def masters(self) -> list[Member]:
        return [m for m in self.members if m.state == MASTER]

    @property
    def backups(self) -> list[Member]:
        return [m for m in self.members if m.state == BACKUP]

    @property
    def others(self) -> list[Member]:
        return [m for m in self.members if m.state not in (MASTER, BACKUP)]


_RANK = {MASTER: 0, BACKUP: 1, FAULT: 2, STOP: 3}


def clusters(db: sqlite3.Connection) -> list[Cluster]:
    """Per VRRP instance or sync group name: every host reporting it, and its condition.

    The condition is the last CLUSTER event the router made for that name
    (SPLIT_BRAIN, NO_MASTER while raised; OK once resolved).
    """
    out: dict[str, Cluster] = {}
    for r in db.execute(
            "SELECT host, kind, name, state, since_ns, prio, event_id FROM state WHERE kind IN "
            "('INSTANCE', 'GROUP') AND state != 'DELETED' ORDER BY name, kind, host"):
        out.setdefault(r[2], Cluster(r[2], [])).members.append(Member(*r))
    for r in db.execute(
            "SELECT name, state, since_ns, event_id FROM state WHERE kind = 'CLUSTER'"):
        cl = out.get(r[0])
        if cl is None:
            continue
        if r[1] in (SPLIT_BRAIN, NO_MASTER):
            cl.condition, cl.condition_since_ns = r[1], r[2]
            row = db.execute("SELECT data FROM events WHERE id = ?", (r[3],)).fetchone()
            if row and row[0]:
                cl.condition_detail = str((json.loads(row[0]).get("extra") or {})
                                          .get("detail", ""))
    for cl in out.values():
        cl.members.sort(key=lambda m: (_RANK.get(m.state, 9), m.host, m.kind))
    return sorted(out.values(), key=lambda c: c.label)


def hosts(db: sqlite3.Connection) -> list[dict[str, Any]]:
    """Every host that reported something: when it was last heard from, its PEER state."""
    out: dict[str, dict[str, Any]] = {}
    for r in db.execute(
            "SELECT host, max(updated_ns), count(*) FROM state WHERE kind NOT IN "
            "('CLUSTER', 'PEER') GROUP BY host ORDER BY host"):
        out[r[0]] = {"host": r[0], "heard_ns": r[1], "subjects": r[2], "peer": None}
    for r in db.execute("SELECT host, state, since_ns FROM state WHERE kind = 'PEER'"):
        entry = out.setdefault(r[0], {"host": r[0], "heard_ns": None, "subjects": 0,
                                      "peer": None})
        entry["peer"] = {"state": r[1], "since_ns": r[2]}
    return list(out.values())


def open_actions(db: sqlite3.Connection, since_ns: int, limit: int = 20
                 ) -> list[dict[str, Any]]:
    """Runs pending or running, and runs that failed since ``since_ns``; newest first."""
    rows = db.execute(
        "SELECT r.rowid, r.event_id, r.rule, r.idx, r.kind, r.status, r.created_ns, "
        "r.started_ns, r.ended_ns, r.exit_code, r.detail, e.host, e.kind, e.name, "
        "coalesce(e.effective, e.state) FROM runs r LEFT JOIN events e ON e.id = r.event_id "
        "WHERE r.status IN ('pending', 'running') OR (r.status IN ('failed', 'timeout', "
        "'error', 'interrupted') AND r.created_ns >= ?) ORDER BY r.rowid DESC LIMIT ?",
        (since_ns, limit)).fetchall()
    return [{"run": r[0], "event_id": r[1], "rule": r[2], "index": r[3], "kind": r[4],
             "status": r[5], "created_ns": r[6], "started_ns": r[7], "ended_ns": r[8],
             "exit_code": r[9], "detail": r[10], "host": r[11], "event_kind": r[12],
             "name": r[13], "state": r[14]} for r in rows]


def open_alerts(db: sqlite3.Connection, since_ns: int, limit: int = 20
                ) -> list[dict[str, Any]]:
    """Messages waiting or being retried, and those given up since ``since_ns``."""
    if not has_table(db, "alert_messages"):
        return []
    ids = [r[0] for r in db.execute(
        "SELECT rowid FROM alert_messages WHERE status IN ('pending', 'sending') OR "
        "(status IN ('expired', 'dropped') AND created_ns >= ?) ORDER BY rowid DESC LIMIT ?",
        (since_ns, limit))]
    messages = messages_by_id(db, set(ids))
    return [messages[i] for i in ids if i in messages]


def silences(db: sqlite3.Connection, now_ns: int) -> list[dict[str, Any]]:
    """Silences in force or still to come."""
    if not has_table(db, "silences"):
        return []
    rows = db.execute(
        "SELECT id, matchers, starts_ns, ends_ns, created_by, reason FROM silences WHERE "
        "expired_ns IS NULL AND ends_ns > ? ORDER BY id", (now_ns,)).fetchall()
    return [{"id": r[0], "matchers": json.loads(r[1]), "starts_ns": r[2], "ends_ns": r[3],
             "by": r[4], "reason": r[5],
             "status": "active" if r[2] <= now_ns else "pending"} for r in rows]


@dataclass(slots=True)
class Overview:
    now_ns: int
    clusters: list[Cluster]
    hosts: list[dict[str, Any]]
    actions: list[dict[str, Any]]
    alerts: list[dict[str, Any]]
    silences: list[dict[str, Any]]
    incidents: list[Incident]
    events: int


def overview(db: sqlite3.Connection, now_ns: int | None = None,
             recent_s: float = 86400.0) -> Overview:
    now = time.time_ns() if now_ns is None else now_ns
    since = now - int(recent_s * 1e9)
    count = db.execute("SELECT max(rowid) FROM events").fetchone()[0] or 0
    return Overview(now, clusters(db), hosts(db), open_actions(db, since),
                    open_alerts(db, since), silences(db, now),
                    incidents(db, since, now)[-10:], int(count))

