"""The Alertmanager store: the alerts knotify posts to Alertmanager receivers, and which
outbox message carried which.

- ``am_alerts``: one row per receiver and label set (its fingerprint): the subject
  and state paged, since when it holds and, once it no longer does, when it ended.
- ``am_posts``: which alerts an outbox message (``alert_messages.rowid``) posts.

Rows only: what fires, resolves and is re-posted is
:mod:`knotify.alerts.alertmanager_desk`'s.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from knotify.event import Key
from knotify.store.db import Database
from knotify.vocab import PENDING, SENDING

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


class AlertmanagerStore:
    """The ``am_alerts`` and ``am_posts`` tables; writes join the caller's transaction."""

    def __init__(self, database: Database) -> None:
        """The tables in ``database``, made if missing."""
        self.database = database
        self.db = database.db
        self.db.executescript(SCHEMA)

    def get(self, receiver: str, fp: str) -> AMAlert | None:
        r = self.db.execute(f"SELECT {_COLUMNS} FROM am_alerts WHERE receiver = ? AND "
                            "fingerprint = ?", (receiver, fp)).fetchone()
        return _row(r) if r else None

    def active(self, receiver: str | None = None) -> list[AMAlert]:
        """Alerts not resolved (of ``receiver``, or every one), oldest first."""
        if receiver is None:
            rows = self.db.execute(f"SELECT {_COLUMNS} FROM am_alerts WHERE ends_ns IS NULL "
                                   "ORDER BY starts_ns").fetchall()
        else:
            rows = self.db.execute(f"SELECT {_COLUMNS} FROM am_alerts WHERE ends_ns IS NULL "
                                   "AND receiver = ? ORDER BY starts_ns", (receiver,)).fetchall()
        return [_row(r) for r in rows]

    def active_of(self, receiver: str, key: Key) -> list[AMAlert]:
        """The receiver's alerts about ``key`` that are not resolved."""
        rows = self.db.execute(
            f"SELECT {_COLUMNS} FROM am_alerts WHERE ends_ns IS NULL AND receiver = ? AND "
            "host = ? AND kind = ? AND name = ? AND vs = ?", (receiver, *key)).fetchall()
        return [_row(r) for r in rows]

    def put(self, a: AMAlert) -> None:
        self.db.execute(
            f"INSERT OR REPLACE INTO am_alerts ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, "
            "?, ?, ?)",
            (a.receiver, a.fingerprint, json.dumps(a.labels, ensure_ascii=True),
             json.dumps(a.annotations, ensure_ascii=True), *a.key, a.state, a.starts_ns,
             a.ends_ns, json.dumps(a.event_ids)))

    def set_ended(self, a: AMAlert) -> None:
        """Keep ``a.ends_ns`` (the alert is resolved from then)."""
        self.db.execute("UPDATE am_alerts SET ends_ns = ? WHERE receiver = ? AND "
                        "fingerprint = ?", (a.ends_ns, a.receiver, a.fingerprint))

    def link(self, message: int, receiver: str, fps: Sequence[str]) -> None:
        """Message ``message`` posts the receiver's alerts ``fps``."""
        self.db.executemany("INSERT OR IGNORE INTO am_posts (message, receiver, fingerprint) "
                            "VALUES (?, ?, ?)", [(message, receiver, fp) for fp in fps])

    def posted(self, message: int) -> list[AMAlert]:
        """The alerts linked to ``message``, as they stand now, oldest first."""
        rows = self.db.execute(
            f"SELECT {', '.join('a.' + c.strip() for c in _COLUMNS.split(','))} FROM am_posts p "
            "JOIN am_alerts a ON a.receiver = p.receiver AND a.fingerprint = p.fingerprint "
            "WHERE p.message = ? ORDER BY a.starts_ns", (message,)).fetchall()
        return [_row(r) for r in rows]

    def prune(self, ended_before_ns: int) -> None:
        """Forget the links of messages no longer open (read from the outbox's
        ``alert_messages``) and the alerts resolved before ``ended_before_ns``."""
        self.db.execute("DELETE FROM am_posts WHERE message NOT IN "
                        f"(SELECT rowid FROM alert_messages WHERE status IN ('{PENDING}', "
                        f"'{SENDING}'))")
        self.db.execute("DELETE FROM am_alerts WHERE ends_ns IS NOT NULL AND ends_ns < ?",
                        (ended_before_ns,))
