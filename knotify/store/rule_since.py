"""The rule-since store: table ``alert_rule_since``, since when each alert stream's rule
exists with its current definition (one row per stream ``RULE#INDEX``).

Rows only: what makes a rule new or changed is :mod:`knotify.alerts.since`'s.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from knotify.store.db import Database

SCHEMA = """
CREATE TABLE IF NOT EXISTS alert_rule_since (
    stream TEXT PRIMARY KEY,
    definition TEXT NOT NULL,
    since_ns INTEGER NOT NULL
);
"""


class RuleSinceRows:
    def __init__(self, database: Database) -> None:
        """The table in ``database``, made if missing."""
        self.database = database
        self.db = database.db
        self.db.executescript(SCHEMA)

    def known(self) -> dict[str, tuple[str, int]]:
        """Every stream kept: (its rule's definition, since when it exists)."""
        return {row[0]: (row[1], int(row[2])) for row in
                self.db.execute("SELECT stream, definition, since_ns FROM alert_rule_since")}

    def forget(self, streams: Iterable[str]) -> None:
        self.db.executemany("DELETE FROM alert_rule_since WHERE stream = ?",
                            [(s,) for s in streams])

    def put(self, definitions: Mapping[str, str], since_ns: int) -> None:
        """Streams (with their rule's definition) that exist from ``since_ns``."""
        self.db.executemany("INSERT OR REPLACE INTO alert_rule_since VALUES (?, ?, ?)",
                            [(s, d, since_ns) for s, d in definitions.items()])
