"""The notification log: which message of which group went to which receiver, and when.

One row per message a router (this one or a peer) delivered: its group key and
receiver, the facts it covered (each with when its message was made), when it was
sent, by which router, and when the row expires. Rows are written once and never
changed, so replication is a union: a row is identified by ``uid`` (the sending
router's name and its message number), and merging a row already held does nothing.
``changed`` numbers this router's rows in the order it got them (never reused, even
after a prune), so a peer can be sent what it has not had yet. Rows only: what
covers what is :mod:`knotify.peers.gate`'s.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from knotify.store.db import Database

SCHEMA = """
CREATE TABLE IF NOT EXISTS nflog (
    changed INTEGER PRIMARY KEY AUTOINCREMENT,
    uid TEXT NOT NULL UNIQUE,
    group_key TEXT NOT NULL,
    receiver TEXT NOT NULL,
    facts TEXT NOT NULL,
    sent_ns INTEGER NOT NULL,
    sent_by TEXT NOT NULL,
    expires_ns INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS nflog_group ON nflog (group_key, receiver);
"""
_COLUMNS = "uid, group_key, receiver, facts, sent_ns, sent_by, expires_ns"
#: Rows of one exchange at most (a peer asks again for the rest).
MAX_ROWS = 500


@dataclass(slots=True, frozen=True)
class Entry:
    uid: str
    group_key: str
    receiver: str
    #: (fact, when the message that said it was made, ns): see knotify.peers.gate.
    facts: tuple[tuple[str, int], ...]
    sent_ns: int
    sent_by: str
    expires_ns: int

    def to_wire(self) -> dict[str, Any]:
        return {"uid": self.uid, "group_key": self.group_key, "receiver": self.receiver,
                "facts": [list(f) for f in self.facts], "sent_ns": self.sent_ns,
                "sent_by": self.sent_by, "expires_ns": self.expires_ns}

    @staticmethod
    def from_wire(data: Any) -> Entry:
        """An entry a peer sent; ValueError says what is wrong with it."""
        if not isinstance(data, dict):
            raise ValueError("a notification log entry must be an object")
        text = {k: data.get(k) for k in ("uid", "group_key", "receiver", "sent_by")}
        for key, value in text.items():
            if not isinstance(value, str) or not 0 < len(value) <= 4096:
                raise ValueError(f"notification log {key!r} must be a string")
        ints = {k: data.get(k) for k in ("sent_ns", "expires_ns")}
        for key, value in ints.items():
            if type(value) is not int or not 0 <= value < 2**63:
                raise ValueError(f"notification log {key!r} must be a time in ns")
        facts = data.get("facts")
        if (not isinstance(facts, list) or len(facts) > 10_000
                or not all(isinstance(f, list) and len(f) == 2 and isinstance(f[0], str)
                           and len(f[0]) <= 4096 and type(f[1]) is int for f in facts)):
            raise ValueError("notification log 'facts' must be a list of [fact, ns]")
        return Entry(str(text["uid"]), str(text["group_key"]), str(text["receiver"]),
                     tuple((str(f[0]), int(f[1])) for f in facts), int(data["sent_ns"]),
                     str(text["sent_by"]), int(data["expires_ns"]))


def _entry(row: Sequence[Any]) -> Entry:
    return Entry(str(row[0]), str(row[1]), str(row[2]),
                 tuple((str(f), int(t)) for f, t in json.loads(row[3])), int(row[4]),
                 str(row[5]), int(row[6]))


class NotificationLog:
    """Rows of the ``nflog`` table; the caller holds the transaction."""

    VERSION = 1

    def __init__(self, database: Database) -> None:
        self.database = database
        self.db = database.db
        database.check_version("nflog", self.VERSION)
        self.db.executescript(SCHEMA)
        database.set_version("nflog", self.VERSION)

    def last_change(self) -> int:
        row = self.db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'nflog'").fetchone()
        return int(row[0]) if row else 0

    def put(self, entry: Entry) -> bool:
        """Add ``entry`` unless it is held already; whether it was new."""
        if self.db.execute("SELECT 1 FROM nflog WHERE uid = ?", (entry.uid,)).fetchone():
            return False  # (not INSERT OR IGNORE: that would use up a change number)
        cur = self.db.execute(
            f"INSERT OR IGNORE INTO nflog ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (entry.uid, entry.group_key, entry.receiver,
             json.dumps([list(f) for f in entry.facts]), entry.sent_ns, entry.sent_by,
             entry.expires_ns))
        return cur.rowcount > 0

    def group(self, group_key: str, receiver: str, now_ns: int) -> list[Entry]:
        """The live entries of one group and receiver, oldest first."""
        return [_entry(r) for r in self.db.execute(
            f"SELECT {_COLUMNS} FROM nflog WHERE group_key = ? AND receiver = ? AND "
            "expires_ns > ? ORDER BY sent_ns", (group_key, receiver, now_ns))]

    def since(self, changed: int, now_ns: int, limit: int = MAX_ROWS
              ) -> tuple[list[tuple[int, Entry]], int]:
        """Live entries this router got after change ``changed``, each with its change
        number; and the last change they reach (``changed`` when there are none)."""
        rows = self.db.execute(
            f"SELECT {_COLUMNS}, changed FROM nflog WHERE changed > ? ORDER BY changed "
            "LIMIT ?", (changed, limit)).fetchall()
        upto = int(rows[-1][7]) if rows else changed
        return [(int(r[7]), _entry(r)) for r in rows if int(r[6]) > now_ns], upto

    def count(self) -> int:
        return int(self.db.execute("SELECT count(*) FROM nflog").fetchone()[0])

    def prune(self, now_ns: int) -> int:
        """Forget expired entries (a peer that sends one again gets it ignored)."""
        return self.db.execute("DELETE FROM nflog WHERE expires_ns <= ?", (now_ns,)).rowcount
