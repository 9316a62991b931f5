"""Incidents: state changes that follow each other closely (a failover and its echoes)."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from knotify.vocab import MASTER, VRRP_KINDS
from knotify.web.data.journal import attach, events_where

#: Transitions closer than this (on any lane of a cluster) belong to one incident.
INCIDENT_GAP_NS = 30 * 10**9
#: At most this many events are told in one incident.
INCIDENT_MAX_EVENTS = 500


@dataclass(slots=True)
class Incident:
    start_ns: int
    end_ns: int
    #: The event that names it (the first change to MASTER, else the first change).
    event_id: str
    clusters: list[str]
    hosts: list[str]
    changes: list[str]
    events: list[dict[str, Any]] = field(default_factory=list)


def incidents(db: sqlite3.Connection, since_ns: int, until_ns: int,
              cluster: str | None = None) -> list[Incident]:
    """State changes of VRRP instances and groups, grouped where they follow each other
    within :data:`INCIDENT_GAP_NS` (a failover and its echoes), oldest first."""
    clause = ("kid IN (SELECT kid FROM keys WHERE kind IN ('INSTANCE', 'GROUP')"
              + (" AND name = ?" if cluster is not None else "") + ")")
    args: list[object] = [cluster] if cluster is not None else []
    rows = db.execute(
        "SELECT id, host, kind, name, coalesce(effective, state), prev_state, ts_ns FROM events "
        f"WHERE class = 'transition' AND ts_ns >= ? AND ts_ns <= ? AND {clause} "
        "ORDER BY ts_ns, rowid", (since_ns, until_ns, *args)).fetchall()
    out: list[Incident] = []
    current: list[Sequence[Any]] = []

    def close() -> None:
        if not current:
            return
        first = next((r for r in current if r[4] == MASTER), current[0])
        out.append(Incident(
            int(current[0][6]), int(current[-1][6]), str(first[0]),
            sorted({str(r[3]) for r in current}), sorted({str(r[1]) for r in current}),
            [f"{r[1]} {r[3]} {r[5] or '?'} -> {r[4]}" for r in current]))

    for r in rows:
        if current and r[6] - current[-1][6] > INCIDENT_GAP_NS:
            close()
            current = []
        current.append(r)
    close()
    return out


def incident(db: sqlite3.Connection, event_id: str, now_ns: int | None = None
             ) -> Incident | None:
    """The incident ``event_id`` belongs to, with every event of its hosts in order."""
    now = time.time_ns() if now_ns is None else now_ns
    row = db.execute("SELECT ts_ns, kind, name, host FROM events WHERE id = ?",
                     (event_id,)).fetchone()
    if row is None:
        return None
    ts, kind, name, host = int(row[0]), row[1], row[2], row[3]
    cluster = name if kind in VRRP_KINDS else None
    # Walk out from the event while changes keep coming within the gap.
    span = incidents(db, ts - 24 * 3600 * 10**9, min(now, ts + 24 * 3600 * 10**9), cluster)
    found = next((i for i in span if i.start_ns <= ts <= i.end_ns), None)
    if found is None:
        found = Incident(ts, ts, event_id, [name] if cluster else [], [host],
                         [f"{host} {kind} {name}"])
    hosts_ = found.hosts or [host]
    start, end = found.start_ns - 5 * 10**9, found.end_ns + INCIDENT_GAP_NS
    marks = ",".join("?" * len(hosts_))
    names = found.clusters
    name_clause = (f" OR (kind = 'CLUSTER' AND name IN ({','.join('?' * len(names))}))"
                   if names else "")
    events = events_where(
        db, f"ts_ns >= ? AND ts_ns <= ? AND (kid IN (SELECT kid FROM keys WHERE host IN "
        f"({marks}) AND kind NOT IN ('CLUSTER', 'PEER')){name_clause} OR id = ?)",
        [start, end, *hosts_, *names, event_id], order="rowid",
        limit=INCIDENT_MAX_EVENTS)
    attach(db, events)
    found.events = events
    return found
