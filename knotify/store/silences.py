"""The silences store: table ``silences``, one row per silence, never deleted.

Rows only: parsing matchers and deciding what a silence mutes is
:mod:`knotify.alerts.silence`'s.
"""

from __future__ import annotations

import json
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
    expired_ns INTEGER
);
"""
_COLUMNS = "id, matchers, starts_ns, ends_ns, created_ns, created_by, reason, expired_ns"


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


def _row(row: Sequence[Any]) -> SilenceRow:
    return SilenceRow(int(row[0]), list(json.loads(row[1])), int(row[2]), int(row[3]),
                      int(row[4]), str(row[5]), str(row[6]),
                      None if row[7] is None else int(row[7]))


class SilenceRows:
    def __init__(self, database: Database) -> None:
        """The silences table in ``database``, made if missing."""
        self.database = database
        self.db = database.db
        self.db.executescript(SCHEMA)

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
            by: str, reason: str) -> int:
        """A new silence (in the caller's transaction); its id."""
        cur = self.db.execute(
            "INSERT INTO silences (matchers, starts_ns, ends_ns, created_ns, created_by, "
            "reason) VALUES (?, ?, ?, ?, ?, ?)",
            (json.dumps(matchers), starts_ns, ends_ns, created_ns, by, reason))
        assert cur.lastrowid is not None
        return cur.lastrowid

    def set_expired(self, silence_id: int, now_ns: int) -> None:
        self.db.execute("UPDATE silences SET expired_ns = ? WHERE id = ?", (now_ns, silence_id))
