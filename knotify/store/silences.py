"""The silences store: table ``silences``, one row per silence, never deleted.

Each silence has a ``uid`` that stays the same on every router it is replicated to
(:mod:`knotify.peers`), and ``changed``, which numbers this journal's additions and
expiries in order (a peer is sent the rows changed since it last heard). Rows only:
parsing matchers and deciding what a silence mutes is
:mod:`knotify.alerts.silence`'s.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from knotify.store.db import Database

SCHEMA = """
CREATE TABLE IF NOT EXISTS silences (
    id INTEGER PRIMARY KEY,
    matchers TEXT NOT NULL,
    starts_ns INTEGER NOT NULL,
    ends_ns INTEGER NOT NULL,
    created_ns INTEGER NOT NULL,
    created_by TEXT NOT NULL DEFAULT '',
    reason TEXT NOT NULL DEFAULT '',
    expired_ns INTEGER,
    uid TEXT,
    changed INTEGER NOT NULL DEFAULT 0
);
"""
_COLUMNS = ("id, matchers, starts_ns, ends_ns, created_ns, created_by, reason, expired_ns, "
            "uid")
#: Silences of one exchange with a peer at most (it asks again for the rest).
MAX_ROWS = 500


def _upgrade(db: sqlite3.Connection) -> None:
    """An older journal's silences get a uid and a change number."""
    have = {row[1] for row in db.execute("PRAGMA table_info(silences)")}
    if "uid" not in have:
        db.execute("ALTER TABLE silences ADD COLUMN uid TEXT")
    if "changed" not in have:
        db.execute("ALTER TABLE silences ADD COLUMN changed INTEGER NOT NULL DEFAULT 0")
    db.execute("UPDATE silences SET uid = 'j' || created_ns || '-' || id WHERE uid IS NULL")
    db.execute("CREATE UNIQUE INDEX IF NOT EXISTS silences_uid ON silences (uid)")


@dataclass(slots=True)
class SilenceRow:
    id: int
    matchers: list[str]
    starts_ns: int
    ends_ns: int
    created_ns: int
    by: str
    reason: str
    expired_ns: int | None
    uid: str = ""


def _row(row: Sequence[Any]) -> SilenceRow:
    return SilenceRow(int(row[0]), list(json.loads(row[1])), int(row[2]), int(row[3]),
                      int(row[4]), str(row[5]), str(row[6]),
                      None if row[7] is None else int(row[7]), str(row[8] or ""))


class SilenceRows:
    def __init__(self, database: Database) -> None:
        """The silences table in ``database``, made if missing."""
        self.database = database
        self.db = database.db
        self.db.executescript(SCHEMA)
        _upgrade(self.db)

    def open(self, now_ns: int) -> list[SilenceRow]:
        """Silences not expired by hand and not over at ``now_ns``, oldest first."""
        return [_row(r) for r in self.db.execute(
            f"SELECT {_COLUMNS} FROM silences WHERE expired_ns IS NULL AND ends_ns > ? "
            "ORDER BY id", (now_ns,)).fetchall()]

    def every(self) -> list[SilenceRow]:
        return [_row(r) for r in self.db.execute(
            f"SELECT {_COLUMNS} FROM silences ORDER BY id").fetchall()]

    def get(self, silence_id: int) -> SilenceRow | None:
        row = self.db.execute(f"SELECT {_COLUMNS} FROM silences WHERE id = ?",
                              (silence_id,)).fetchone()
        return None if row is None else _row(row)

    def add(self, matchers: list[str], starts_ns: int, ends_ns: int, created_ns: int,
            by: str, reason: str, uid: str | None = None) -> int:
        """A new silence (in the caller's transaction); its id. ``uid``: the one it has
        on every router (a new one when None)."""
        cur = self.db.execute(
            "INSERT INTO silences (matchers, starts_ns, ends_ns, created_ns, created_by, "
            "reason, uid, changed) VALUES (?, ?, ?, ?, ?, ?, ?, "
            "(SELECT coalesce(max(changed), 0) + 1 FROM silences))",
            (json.dumps(matchers), starts_ns, ends_ns, created_ns, by, reason,
             uid or secrets.token_hex(12)))
        assert cur.lastrowid is not None
        return cur.lastrowid

    def set_expired(self, silence_id: int, now_ns: int) -> None:
        self.db.execute("UPDATE silences SET expired_ns = ?, changed = (SELECT "
                        "coalesce(max(changed), 0) + 1 FROM silences) WHERE id = ?",
                        (now_ns, silence_id))

    # -- replication (knotify.peers) ------------------------------------------------------

    def last_change(self) -> int:
        return int(self.db.execute("SELECT coalesce(max(changed), 0) FROM silences")
                   .fetchone()[0])

    def since(self, changed: int, limit: int = MAX_ROWS
              ) -> tuple[list[tuple[int, SilenceRow]], int]:
        """Silences added or expired after change ``changed`` (rows are never deleted,
        so change numbers only grow), each with its change number; and the last change
        they reach."""
        rows = self.db.execute(
            f"SELECT {_COLUMNS}, changed FROM silences WHERE changed > ? ORDER BY changed "
            "LIMIT ?", (changed, limit)).fetchall()
        return [(int(r[9]), _row(r)) for r in rows], int(rows[-1][9]) if rows else changed

    def merge(self, row: SilenceRow) -> bool:
        """A peer's silence: added when new, expired when the peer expired it; whether
        anything changed here. Expiring is the one change a silence can have, so
        routers converge whatever order they hear of it in."""
        have = self.db.execute("SELECT id, expired_ns FROM silences WHERE uid = ?",
                               (row.uid,)).fetchone()
        if have is None:
            self.add(row.matchers, row.starts_ns, row.ends_ns, row.created_ns, row.by,
                     row.reason, uid=row.uid)
            if row.expired_ns is not None:
                self.set_expired(self.by_uid(row.uid), row.expired_ns)
            return True
        if row.expired_ns is not None and (have[1] is None or row.expired_ns < have[1]):
            self.set_expired(int(have[0]), row.expired_ns)
            return True
        return False

    def by_uid(self, uid: str) -> int:
        return int(self.db.execute("SELECT id FROM silences WHERE uid = ?",
                                   (uid,)).fetchone()[0])
