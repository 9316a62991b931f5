"""The router's side of Alertmanager receivers: which alerts are active, resolved, re-posted.

An Alertmanager alert is a *condition*: the subject of an event (an instance, a
cluster, a peer) in the state that was paged. Its rows (``am_alerts``, one per
receiver and label set) say since when it holds and, once it no longer does,
when it ended. Every post is a message of the ordinary outbox (so it is
journaled, retried with backoff, held on 429) linked to the alerts it carries
(``am_posts``); what is posted is read when the attempt starts, so a retry
always says the truth of that moment (an alert resolved meanwhile goes out
resolved). A receiver's posts go out one after another (one group key), so an
older post never overtakes a newer one.

- A message composed for the receiver (:meth:`Desk.composed`) fires the alert of
  each of its events; an event that ends an incident (SPLIT_BRAIN_RESOLVED,
  MASTER_BACK, PEER_BACK, OK) or that moves the subject to another state resolves
  the subject's alert in its previous state.
- :meth:`Desk.tick` (the engine's loop, at least once a second) resolves every active
  alert whose subject the tracker no longer sees in that state (a FAULT instance
  back in BACKUP, whatever rule matched that) and, every ``repost_interval``, posts
  the receiver's active alerts again: Alertmanager resolves an alert that is not
  re-sent (each is posted valid for 4 intervals, its ``endsAt``).
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from knotify.alerts import render
from knotify.alerts.alertmanager import fingerprint, labels_for
from knotify.cluster import MASTER_BACK, OK, PEER_BACK, SPLIT_BRAIN_RESOLVED
from knotify.event import Key
from knotify.tracker import KeyState

if TYPE_CHECKING:
    from knotify.alerts.outbox import ItemRow, Outbox
    from knotify.alerts.receivers import Receiver

SCHEMA = """
CREATE TABLE IF NOT EXISTS am_alerts (
    receiver TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    labels TEXT NOT NULL,
    annotations TEXT NOT NULL,
    host TEXT NOT NULL,
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    vs TEXT NOT NULL,
    state TEXT NOT NULL,
    starts_ns INTEGER NOT NULL,
    ends_ns INTEGER,
    event_ids TEXT NOT NULL,
    PRIMARY KEY (receiver, fingerprint)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS am_alerts_active ON am_alerts (receiver) WHERE ends_ns IS NULL;
CREATE TABLE IF NOT EXISTS am_posts (
    message INTEGER NOT NULL,
    receiver TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    PRIMARY KEY (message, fingerprint)
) WITHOUT ROWID;
"""

#: States that end an incident: their event resolves the condition it ended.
ENDING_STATES = frozenset({SPLIT_BRAIN_RESOLVED, MASTER_BACK, PEER_BACK, OK})
#: Event ids an alert's annotation keeps (the newest).
MAX_IDS = 10
#: Resolved alerts are forgotten this long after they ended (their posts long done).
KEEP_RESOLVED_NS = 2 * 86400 * 10**9
PRUNE_EVERY_NS = 3600 * 10**9


def group_key(receiver: str) -> str:
    """Every post to one Alertmanager receiver is in one group: they go out in order."""
    return json.dumps(["alertmanager", receiver], separators=(",", ":"))


@dataclass(slots=True)
class AMAlert:
    receiver: str
    fingerprint: str
    labels: dict[str, str]
    annotations: dict[str, str]
    key: Key
    state: str
    starts_ns: int
    ends_ns: int | None
    event_ids: list[str]

    def post(self) -> dict[str, Any]:
        return {"labels": self.labels, "annotations": self.annotations,
                "starts_ns": self.starts_ns, "ends_ns": self.ends_ns}

    def describe(self) -> str:
        what = (self.labels.get("instance") or self.labels.get("cluster")
                or self.labels.get("real_server") or self.labels.get("virtual_server")
                or self.key[2])
        where = self.labels.get("host")
        return f"{what} {self.state}" + (f" on {where}" if where and where != what else "")


_COLUMNS = ("receiver, fingerprint, labels, annotations, host, kind, name, vs, state, "
            "starts_ns, ends_ns, event_ids")


def _row(r: Sequence[Any]) -> AMAlert:
    return AMAlert(r[0], r[1], json.loads(r[2]), json.loads(r[3]), (r[4], r[5], r[6], r[7]),
                   r[8], r[9], r[10], json.loads(r[11]))


def _ns(text: str | None, default: int) -> int:
    try:
        return int(text) if text else default
    except ValueError:
        return default


def _clock(ns: int) -> str:
    return dt.datetime.fromtimestamp(ns / 1e9).astimezone().isoformat(timespec="seconds")


class Desk:
    """Alertmanager alerts in the journal; the caller holds the transaction where noted."""

    def __init__(self, journal: Any, outbox: Outbox, log: Any) -> None:
        self.journal = journal
        self.outbox = outbox
        self.log = log
        #: When each receiver's active alerts were last re-posted (ns), or since when it has
        #: had some; at the first tick (a router that starts): due at once.
        self._reposted: dict[str, int] = {}
        self._first = True
        self._pruned = 0

    @property
    def db(self) -> sqlite3.Connection:
        db: sqlite3.Connection = self.journal.db
        return db

    # -- rows ---------------------------------------------------------------------------------

    def get(self, receiver: str, fp: str) -> AMAlert | None:
        r = self.db.execute(f"SELECT {_COLUMNS} FROM am_alerts WHERE receiver = ? AND "
                            "fingerprint = ?", (receiver, fp)).fetchone()
        return _row(r) if r else None

    def active(self, receiver: str | None = None) -> list[AMAlert]:
        if receiver is None:
            rows = self.db.execute(f"SELECT {_COLUMNS} FROM am_alerts WHERE ends_ns IS NULL "
                                   "ORDER BY starts_ns").fetchall()
        else:
            rows = self.db.execute(f"SELECT {_COLUMNS} FROM am_alerts WHERE ends_ns IS NULL "
                                   "AND receiver = ? ORDER BY starts_ns", (receiver,)).fetchall()
        return [_row(r) for r in rows]

    def _put(self, a: AMAlert) -> None:
        self.db.execute(
            f"INSERT OR REPLACE INTO am_alerts ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, "
            "?, ?, ?)",
            (a.receiver, a.fingerprint, json.dumps(a.labels, ensure_ascii=True),
             json.dumps(a.annotations, ensure_ascii=True), *a.key, a.state, a.starts_ns,
             a.ends_ns, json.dumps(a.event_ids)))

    def _resolve(self, a: AMAlert, ends_ns: int) -> None:
        a.ends_ns = max(a.starts_ns, ends_ns)
        self.db.execute("UPDATE am_alerts SET ends_ns = ? WHERE receiver = ? AND "
                        "fingerprint = ?", (a.ends_ns, a.receiver, a.fingerprint))

    def _link(self, message: int, receiver: str, fps: Sequence[str]) -> None:
        self.db.executemany("INSERT OR IGNORE INTO am_posts (message, receiver, fingerprint) "
                            "VALUES (?, ?, ?)", [(message, receiver, fp) for fp in fps])

    # -- a message composed for the receiver (inside the engine's transaction) ----------------

    def composed(self, message: int, receiver: Receiver, items: Sequence[ItemRow],
                 group_by: Sequence[str], now: int) -> list[str]:
        """Fire (or resolve) the alerts of a message's events; its fingerprints."""
        am = receiver.alertmanager
        assert am is not None
        touched: dict[str, None] = {}
        for item in items:
            f = item.fields
            key: Key = (f.get("host", ""), f.get("kind", ""), f.get("name", ""), f.get("vs", ""))
            ts = _ns(f.get("ts_ns"), now)
            state = f.get("state", "")
            ended = False
            for old in self._active_of(receiver.name, key):
                if old.state != state:  # the subject left the paged state: that alert ends
                    self._resolve(old, ts)
                    touched[old.fingerprint] = None
                    ended = True
            severity = item.spec.get("severity") or None
            if state in ENDING_STATES:
                prev = f.get("prev_state", "")
                if not ended and prev and prev != "INIT" and prev not in ENDING_STATES:
                    # Nothing of ours to end (paged elsewhere, or by the other router):
                    # say it ended all the same; Alertmanager merges it with the firing one.
                    labels = labels_for({**f, "state": prev}, severity, dict(am.labels),
                                        group_by)
                    fp = fingerprint(labels)
                    if self.get(receiver.name, fp) is None:
                        self._put(AMAlert(receiver.name, fp, labels,
                                          self._annotations(receiver, item), key, prev, ts,
                                          ts, [item.event_id]))
                        touched[fp] = None
                continue
            labels = labels_for(f, severity, dict(am.labels), group_by)
            fp = fingerprint(labels)
            current = self.get(receiver.name, fp)
            if current is not None and current.ends_ns is None:
                starts, ids = current.starts_ns, [*current.event_ids, item.event_id]
            else:
                starts, ids = ts, [item.event_id]
            ids = list(dict.fromkeys(ids))[-MAX_IDS:]
            annotations = self._annotations(receiver, item, ids)
            self._put(AMAlert(receiver.name, fp, labels, annotations, key, state, starts, None,
                              ids))
            touched[fp] = None
        self._link(message, receiver.name, list(touched))
        self.db.execute("UPDATE alert_messages SET group_key = ? WHERE rowid = ?",
                        (group_key(receiver.name), message))
        return list(touched)

    def _active_of(self, receiver: str, key: Key) -> list[AMAlert]:
        rows = self.db.execute(
            f"SELECT {_COLUMNS} FROM am_alerts WHERE ends_ns IS NULL AND receiver = ? AND "
            "host = ? AND kind = ? AND name = ? AND vs = ?", (receiver, *key)).fetchall()
        return [_row(r) for r in rows]

    @staticmethod
    def _annotations(receiver: Receiver, item: ItemRow,
                     ids: Sequence[str] | None = None) -> dict[str, str]:
        rendered = render.compose([render.Item(item.alert, item.fields)],
                                  receiver.templates.over(item.spec), receiver.name)
        out = {"summary": rendered.title, "description": rendered.body,
               "event_ids": ", ".join(ids or [item.event_id])}
        if item.fields.get("rule"):
            out["rule"] = item.fields["rule"]
        if item.fields.get("kind") == "CLUSTER" and item.fields.get("host"):
            out["detected_by"] = item.fields["host"]
        if item.fields.get("detail"):
            out["detail"] = item.fields["detail"]
        return out

    # -- the engine's loop ----------------------------------------------------------------------

    def tick(self, now: int, states: Mapping[Key, KeyState],
             receivers: Mapping[str, Receiver]) -> tuple[int | None, int]:
        """Resolve what no longer holds, re-post what does; (next due ns, messages added)."""
        ours = {n: r for n, r in receivers.items() if r.alertmanager is not None}
        if not ours:
            self._first = False
            return None, 0
        added = 0
        nxt: int | None = None
        active = [a for a in self.active() if a.receiver in ours]
        ended: dict[str, list[AMAlert]] = {}
        for a in active:
            current = states.get(a.key)
            if current is None or current.state != a.state:
                ended.setdefault(a.receiver, []).append(a)
        if ended:
            with self.journal.transaction():
                for name, alerts in ended.items():
                    for a in alerts:
                        current = states.get(a.key)
                        self._resolve(a, min(now, current.since_ns) if current else now)
                    self._message(name, "resolved", alerts, now)
                    added += 1
            for name, alerts in ended.items():
                self.log.info("alertmanager.resolved", receiver=name,
                              alerts=[a.describe() for a in alerts])
        gone = {a.fingerprint for alerts in ended.values() for a in alerts}
        for name, receiver in ours.items():
            mine = [a for a in active if a.receiver == name and a.fingerprint not in gone]
            if not mine:
                self._reposted.pop(name, None)
                continue
            assert receiver.alertmanager is not None
            every = int(receiver.alertmanager.repost_interval * 1e9)
            # A first alert was just posted: its re-post is due an interval later.
            last = self._reposted.setdefault(name, 0 if self._first else now)
            due = last + every
            if due <= now:
                if self.outbox.open_messages(name):
                    due = now + 10**9  # a post is still on its way: it says as much
                else:
                    with self.journal.transaction():
                        self._message(name, "repost", mine, now)
                    added += 1
                    self._reposted[name] = now
                    due = now + every
            nxt = due if nxt is None else min(nxt, due)
        self._first = False
        if now - self._pruned >= PRUNE_EVERY_NS:
            self._pruned = now
            with self.journal.transaction():
                self.prune(now)
        return nxt, added

    def _message(self, receiver: str, what: str, alerts: Sequence[AMAlert], now: int) -> int:
        if what == "resolved":
            head = (f"resolved: {alerts[0].describe()}" if len(alerts) == 1
                    else f"resolved: {len(alerts)} alerts")
            lines = [f"{a.describe()}: ended {_clock(a.ends_ns or now)}" for a in alerts]
            kind = "success"
        else:
            head = (f"still active: {alerts[0].describe()}" if len(alerts) == 1
                    else f"still active: {len(alerts)} alerts")
            lines = [f"{a.describe()}: since {_clock(a.starts_ns)}" for a in alerts]
            kind = "info"
        ids = list(dict.fromkeys(i for a in alerts for i in a.event_ids[-1:]))
        message = self.outbox.add_message(receiver, what, f"[Alertmanager] {head}",
                                          "\n".join(lines), kind, ids, now,
                                          group_key=group_key(receiver))
        self._link(message, receiver, [a.fingerprint for a in alerts])
        return message

    def prune(self, now: int) -> None:
        self.db.execute("DELETE FROM am_posts WHERE message NOT IN "
                        "(SELECT rowid FROM alert_messages WHERE status IN ('pending', 'sending'))")
        self.db.execute("DELETE FROM am_alerts WHERE ends_ns IS NOT NULL AND ends_ns < ?",
                        (now - KEEP_RESOLVED_NS,))

    # -- an attempt starts: what it posts ------------------------------------------------------

    def alerts(self, message: int, receiver: Receiver) -> list[dict[str, Any]]:
        """The alerts message ``message`` carries, as they stand now (firing or resolved).

        A message with none linked (one escalated here from another receiver) carries
        its events' alerts as firing ones, not remembered.
        """
        rows = self.db.execute(
            f"SELECT {', '.join('a.' + c.strip() for c in _COLUMNS.split(','))} FROM am_posts p "
            "JOIN am_alerts a ON a.receiver = p.receiver AND a.fingerprint = p.fingerprint "
            "WHERE p.message = ? ORDER BY a.starts_ns", (message,)).fetchall()
        if rows:
            return [_row(r).post() for r in rows]
        row = self.outbox.message(message)
        am = receiver.alertmanager
        if row is None or am is None:
            return []
        out = []
        for item in self.outbox.message_items(row.origin):
            labels = labels_for(item.fields, item.spec.get("severity") or None, dict(am.labels))
            out.append({"labels": labels, "annotations": self._annotations(receiver, item),
                        "starts_ns": _ns(item.fields.get("ts_ns"), row.created_ns),
                        "ends_ns": None})
        return out
