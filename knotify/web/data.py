"""Every read of the journal the web pages and the HTML report make, in one place.

The journal is opened read-only (``file:...?mode=ro``; SQLite's WAL lets a reader
in while the router writes) and only its tables are used: nothing here imports the
router's code, so the router's stores can change shape inside without touching the
pages, as long as the tables mean the same. Times are nanoseconds since the epoch.

What the pages need:

- :func:`overview`: clusters (who is MASTER, BACKUP, since when, the last cluster
  condition), hosts (last heard from), actions running or failed lately, alerts
  waiting or failing, silences in force.
- :func:`timeline`: lanes (one per host of a cluster, or one per subject of a host)
  with state bands and marks for actions and alerts, in a time window.
- :func:`incidents` and :func:`incident`: state changes that belong together (a
  failover), and one of them told in full: every event, action and alert attempt.
- :func:`history`: events newest first with the CLI's filters.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
import urllib.parse
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from knotify.errors import JournalUnavailable
from knotify.sqlglob import glob_clause, id_clause
from knotify.vocab import (
    BACKUP,
    DROPPED,
    ERROR,
    EXPIRED,
    FAILED,
    FAULT,
    INHIBITED,
    MASTER,
    NO_MASTER,
    OK,
    RUNNING,
    SENT,
    SENT_BY_PEER,
    SILENCED,
    SPLIT_BRAIN,
    STOP,
    SUPPRESSED,
    TIMEOUT,
    VRRP_KINDS,
)

#: Transitions closer than this (on any lane of a cluster) belong to one incident.
INCIDENT_GAP_NS = 30 * 10**9
#: At most this many events are told in one incident.
INCIDENT_MAX_EVENTS = 500
#: Marks kept per lane, kind, outcome and stretch of a timeline's resolution.
KEEP_MARKS = 5
#: Parameters per ``IN (...)``: well under SQLite's limit.
_CHUNK = 500

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
    for part in _chunks(ids):
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
    items: list[Sequence[Any]] = []
    for part in _chunks(ids):
        items.extend(db.execute(
            "SELECT rowid, event_id, receiver, alert, status, detail, created_ns, message "
            f"FROM alert_items WHERE event_id IN ({','.join('?' * len(part))}) ORDER BY rowid",
            part).fetchall())
    messages = _messages(db, {r[7] for r in items if r[7] is not None})
    for r in items:
        by_id[r[1]]["alerts"].append({
            "item": r[0], "receiver": r[2], "alert": r[3], "status": r[4], "detail": r[5],
            "created_ns": r[6], "message": _chain(messages, r[7]),
            "outcome": alert_outcome(r[4], messages.get(r[7]) if r[7] else None)})


def _messages(db: sqlite3.Connection, wanted: set[int]) -> dict[int, dict[str, Any]]:
    """Messages by id (and those they escalated to), each with its attempts."""
    out: dict[int, dict[str, Any]] = {}
    while wanted:
        batch = sorted(wanted)[:_CHUNK]
        wanted -= set(batch)
        for r in db.execute(
                "SELECT rowid, receiver, alert, title, status, event_ids, created_ns, ended_ns, "
                "attempts, escalated_to, detail, next_ns FROM alert_messages WHERE rowid IN "
                f"({','.join('?' * len(batch))})", batch):
            out[r[0]] = {"id": r[0], "receiver": r[1], "alert": r[2], "title": r[3],
                         "status": r[4], "events": json.loads(r[5]), "created_ns": r[6],
                         "ended_ns": r[7], "attempt_count": r[8], "escalated_to": r[9],
                         "detail": r[10], "next_ns": r[11], "attempts": []}
            if r[9] is not None and r[9] not in out:
                wanted.add(r[9])
    found = sorted(out)
    for part in _chunks(found):
        for r in db.execute(
                "SELECT message, attempt, status, started_ns, ended_ns, urls, error FROM "
                f"alert_attempts WHERE message IN ({','.join('?' * len(part))}) ORDER BY rowid",
                part):
            out[r[0]]["attempts"].append({
                "attempt": r[1], "status": r[2], "started_ns": r[3], "ended_ns": r[4],
                "urls": json.loads(r[5]) if r[5] else [], "error": r[6]})
    return out


def _chain(messages: dict[int, dict[str, Any]], rowid: int | None,
           depth: int = 0) -> dict[str, Any] | None:
    if rowid is None or rowid not in messages or depth > 10:
        return None
    msg = dict(messages[rowid])
    msg["escalation"] = _chain(messages, msg["escalated_to"], depth + 1) \
        if msg["escalated_to"] != rowid else None
    return msg


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


def _chunks(items: Sequence[Any]) -> Iterable[list[Any]]:
    for start in range(0, len(items), _CHUNK):
        yield list(items[start:start + _CHUNK])


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


# -- overview ------------------------------------------------------------------------------


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
    messages = _messages(db, set(ids))
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


# -- timeline ------------------------------------------------------------------------------


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

    for part in _chunks(kids):
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
        messages = _messages(db, {r[11] for r in rows if r[11] is not None})
        for r in rows:
            msg = _chain(messages, r[11])
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


# -- incidents -----------------------------------------------------------------------------


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
