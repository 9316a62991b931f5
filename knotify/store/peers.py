"""The cluster peers store: the hosts that heartbeat, remembered across restarts.

Table ``cluster_peers`` (written when a new host appears), so that after a restart
the router still expects them.
"""

from __future__ import annotations

from knotify.store.db import Database

SCHEMA = """
CREATE TABLE IF NOT EXISTS cluster_peers (host TEXT PRIMARY KEY, first_ns INTEGER NOT NULL);
"""


class PeerStore:
    def __init__(self, database: Database) -> None:
        """The peers table in ``database``, made if missing (sqlite3.Error if it cannot be)."""
        self.database = database
        self.db = database.db
        self.db.executescript(SCHEMA)

    def hosts(self) -> list[str]:
        return [row[0] for row in self.db.execute("SELECT host FROM cluster_peers")]

    def add(self, hosts: list[str], now_ns: int) -> None:
        """Remember ``hosts`` (in a transaction of their own, or the caller's)."""
        with self.database.transaction():
            self.db.executemany("INSERT OR IGNORE INTO cluster_peers VALUES (?, ?)",
                                [(h, now_ns) for h in hosts])

    def forget(self, host: str) -> None:
        with self.database.transaction():
            self.db.execute("DELETE FROM cluster_peers WHERE host = ?", (host,))
