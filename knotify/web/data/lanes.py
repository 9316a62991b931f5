"""The timeline: one lane per host (or subject), state bands and marks in a window."""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass, field
from typing import Any

from knotify.store.outbox_read import chain, chunks, messages_by_id
from knotify.web.data.journal import action_outcome, alert_outcome, has_table

#: Marks kept per lane, kind, outcome and stretch of a timeline's resolution.
KEEP_MARKS = 5


@dataclass(slots=True)
class Band:
    state: str
    start_ns: int
    end_ns: int
    #: The transition that began it (None: it began before the window).
    event_id: str | None
    prev_state: str | None
    prio: int | None
    #: Still going on at the end of the window (the state now).
    open: bool = False


@dataclass(slots=True)
class Mark:
    #: "action", "alert" or "event" (a report that changed nothing and is worth a look:
    #: stale, invalid, a notice; plain repeats are left out)
    what: str
    outcome: str
    t_ns: int
    event_id: str
    title: str
    ref: str
    #: The event (host, name, state, ...) and the run or alert item it is about; the
    #: detail text is made from them only for the marks that are drawn.
    event: dict[str, Any]
    item: dict[str, Any]
    #: Marks of the same kind and outcome just after this one, in the same stretch of
    #: ``resolution_ns``, counted but not kept (see :func:`timeline`).
    hidden: int = 0

    @property
    def lines(self) -> list[str]:
        ev, item = self.event, self.item
        if self.what == "event":
            return [f"{ev['host']} {ev['name']}: {ev['reported']} reported again "
                    f"({ev['class']})", f"source {ev['source']}, seq {ev['seq']}"]
        head = f"for {ev['host']} {ev['name']} -> {ev['state']}"
        if self.what == "action":
            took = (f" in {(item['ended_ns'] - item['started_ns']) / 1e9:.2f}s"
                    if item["started_ns"] and item["ended_ns"] else "")
            lines = [head, f"{item['status']}{took}" + (
                f", exit {item['exit_code']}" if item["exit_code"] is not None else "")]
            if item["detail"]:
                lines.append(str(item["detail"]))
            return lines
        lines = [head, f"{item['status']}" + (f": {item['detail']}" if item["detail"] else "")]
        msg = item["message"]
        if msg:
            lines.append(f"message {msg['id']}: {msg['status']} - {msg['title']}")
            for att in msg["attempts"]:
                lines.append(f"attempt {att['attempt']}: {att['status']}")
                for url in att["urls"]:
                    lines.append(f"  {url.get('url')}: " + (
                        "ok" if url.get("ok") else str(url.get("error") or url.get("status"))))
        return lines


@dataclass(slots=True)
class Lane:
    kid: int
    host: str
    kind: str
    name: str
    vs: str
    label: str
    bands: list[Band] = field(default_factory=list)
    marks: list[Mark] = field(default_factory=list)


@dataclass(slots=True)
class Timeline:
    title: str
    since_ns: int
    until_ns: int
    now_ns: int
    lanes: list[Lane]
    cluster: str | None = None
    host: str | None = None


def cluster_names(db: sqlite3.Connection) -> list[str]:
    return [r[0] for r in db.execute(
        "SELECT DISTINCT name FROM keys WHERE kind IN ('INSTANCE', 'GROUP') ORDER BY name")]


def host_names(db: sqlite3.Connection) -> list[str]:
    return [r[0] for r in db.execute(
        "SELECT DISTINCT host FROM keys WHERE kind NOT IN ('CLUSTER', 'PEER') ORDER BY host")]


def _lanes(db: sqlite3.Connection, cluster: str | None, host: str | None) -> list[Lane]:
    if cluster is not None:
        rows = db.execute(
            "SELECT kid, host, kind, name, vs FROM keys WHERE kind IN ('INSTANCE', 'GROUP') "
            "AND name = ? ORDER BY host, kind", (cluster,)).fetchall()
        kinds = {r[2] for r in rows}
        return [Lane(r[0], r[1], r[2], r[3], r[4],
                     r[1] if len(kinds) == 1 else f"{r[1]} {r[2]}") for r in rows]
    if host is not None:
        rows = db.execute(
            "SELECT kid, host, kind, name, vs FROM keys WHERE host = ? AND kind != 'PEER' ORDER BY "
            "CASE kind WHEN 'GROUP' THEN 0 WHEN 'INSTANCE' THEN 1 ELSE 2 END, name, vs",
            (host,)).fetchall()
        return [Lane(r[0], r[1], r[2], r[3], r[4],
                     f"{r[2]} {r[3]}" + (f" in {r[4]}" if r[4] else "")) for r in rows]
    rows = db.execute(
        "SELECT kid, host, kind, name, vs FROM keys WHERE kind IN ('INSTANCE', 'GROUP') "
        "ORDER BY name, host, kind").fetchall()
    return [Lane(r[0], r[1], r[2], r[3], r[4], f"{r[1]} {r[3]}") for r in rows]


def timeline(db: sqlite3.Connection, since_ns: int, until_ns: int, *,
             cluster: str | None = None, host: str | None = None,
             now_ns: int | None = None, resolution_ns: int = 0) -> Timeline:
    """Lanes with state bands and marks between ``since_ns`` and ``until_ns``.

    With ``resolution_ns``, of the marks of one lane, kind and outcome that fall in the
    same stretch of that length only the first :data:`KEEP_MARKS` are kept, and the
    first counts the others (``hidden``): a picture cannot show more, and a busy day
    holds thousands."""
    now = time.time_ns() if now_ns is None else now_ns
    lanes = _lanes(db, cluster, host)
    title = (f"cluster {cluster}" if cluster is not None else f"host {host}"
             if host is not None else "every VRRP instance and group")
    by_kid = {lane.kid: lane for lane in lanes}
    for lane in lanes:
        _bands(db, lane, since_ns, until_ns, now)
    if by_kid:
        _marks(db, by_kid, since_ns, until_ns, resolution_ns)
    return Timeline(title, since_ns, until_ns, now, lanes, cluster, host)


def _bands(db: sqlite3.Connection, lane: Lane, since_ns: int, until_ns: int,
           now_ns: int) -> None:
    before = db.execute(
        "SELECT id, coalesce(effective, state), prev_state, prio, ts_ns FROM events "
        "WHERE kid = ? AND class = 'transition' AND ts_ns < ? ORDER BY rowid DESC LIMIT 1",
        (lane.kid, since_ns)).fetchone()
    rows = db.execute(
        "SELECT id, coalesce(effective, state), prev_state, prio, ts_ns FROM events "
        "WHERE kid = ? AND class = 'transition' AND ts_ns >= ? AND ts_ns <= ? ORDER BY rowid",
        (lane.kid, since_ns, until_ns)).fetchall()
    points: list[tuple[str | None, str, str | None, int | None, int]] = []
    if before is not None:
        points.append((None, before[1], before[2], before[3], since_ns))
    last = since_ns
    for r in rows:
        start = max(int(r[4]), last)  # a late report never draws backwards
        points.append((r[0], r[1], r[2], r[3], start))
        last = start
    end_of_data = min(until_ns, now_ns)
    for i, (eid, state, prev, prio, start) in enumerate(points):
        nxt = points[i + 1][4] if i + 1 < len(points) else None
        end = nxt if nxt is not None else max(start, end_of_data)
        lane.bands.append(Band(state, start, end, eid, prev, prio, open=nxt is None))


def _marks(db: sqlite3.Connection, by_kid: dict[int, Lane], since_ns: int,
           until_ns: int, resolution_ns: int = 0) -> None:
    """Marks for the actions, alerts and odd reports of the lanes' events in the window.

    Three joins, each one query per 500 lanes: a 24 h window of a busy host holds
    thousands of runs, and a query per event costs more than the rest of the page."""
    kids = list(by_kid)
    alerts = _has_alerts(db)
    firsts: dict[tuple[int, str, str, int], list[Mark]] = {}

    def room(kid: int, what: str, outcome: str, t: int) -> bool:
        """Whether a mark is kept (else counted on the first of its stretch)."""
        if not resolution_ns:
            return True
        kept = firsts.get((kid, what, outcome, (t - since_ns) // resolution_ns))
        if kept is None or len(kept) < KEEP_MARKS:
            return True
        kept[0].hidden += 1
        return False

    def add(kid: int, mark: Mark) -> None:
        by_kid[kid].marks.append(mark)
        if resolution_ns:
            firsts.setdefault((kid, mark.what, mark.outcome,
                               (mark.t_ns - since_ns) // resolution_ns), []).append(mark)

    for part in chunks(kids):
        marks = ",".join("?" * len(part))
        where = f"e.kid IN ({marks}) AND e.ts_ns >= ? AND e.ts_ns <= ?"
        args = (*part, since_ns, until_ns)
        for r in db.execute(
                "SELECT e.kid, e.id, e.host, e.name, coalesce(e.effective, e.state), e.ts_ns, "
                "r.rowid, r.rule, r.idx, r.kind, r.status, r.started_ns, r.ended_ns, "
                f"r.exit_code, r.detail FROM events e JOIN runs r ON r.event_id = e.id "
                f"WHERE {where} AND r.kind != 'alert' ORDER BY e.rowid, r.rowid", args):
            # (alert action runs are left out: their alerts are marks of their own)
            outcome, t = action_outcome(r[10]), int(r[11] or r[12] or r[5])
            if room(r[0], "action", outcome, t):
                add(r[0], Mark("action", outcome, t, r[1], f"action {r[7]}#{r[8]} {r[9]}",
                               f"run-{r[6]}", {"host": r[2], "name": r[3], "state": r[4]},
                               {"status": r[10], "started_ns": r[11], "ended_ns": r[12],
                                "exit_code": r[13], "detail": r[14]}))
        for r in db.execute(
                "SELECT e.kid, e.id, e.host, e.name, e.state, e.class, e.ts_ns, e.source, e.seq "
                f"FROM events e WHERE {where} AND e.class NOT IN ('transition', 'repeat') "
                "ORDER BY e.rowid", args):
            if room(r[0], "event", r[5], r[6]):
                add(r[0], Mark("event", r[5], r[6], r[1], f"{r[4]} ({r[5]})", r[1], {
                    "host": r[2], "name": r[3], "reported": r[4], "class": r[5],
                    "source": r[7], "seq": r[8]}, {}))
        if not alerts:
            continue
        rows = db.execute(
            "SELECT e.kid, e.id, e.host, e.name, coalesce(e.effective, e.state), e.ts_ns, "
            "a.rowid, a.receiver, a.status, a.detail, a.created_ns, a.message FROM events e "
            f"JOIN alert_items a ON a.event_id = e.id WHERE {where} ORDER BY e.rowid, a.rowid",
            args).fetchall()
        messages = messages_by_id(db, {r[11] for r in rows if r[11] is not None})
        for r in rows:
            msg = chain(messages, r[11])
            t = int(max(r[5], msg["ended_ns"] if msg and msg["ended_ns"] else
                        (msg["attempts"][-1]["started_ns"] if msg and msg["attempts"]
                         else r[10])))
            outcome = alert_outcome(r[8], messages.get(r[11]) if r[11] else None)
            if room(r[0], "alert", outcome, t):
                add(r[0], Mark("alert", outcome, t, r[1], f"alert to {r[7]}", f"item-{r[6]}",
                               {"host": r[2], "name": r[3], "state": r[4]},
                               {"status": r[8], "detail": r[9], "message": msg}))
    for lane in by_kid.values():
        lane.marks.sort(key=lambda m: m.t_ns)


def _has_alerts(db: sqlite3.Connection) -> bool:
    return has_table(db, "alert_items")
