"""The events store's tables (events, keys, state, runs), and how an older journal is
brought up to them.

A newer journal is refused (:meth:`Database.check_version`); schema 1 gains the key
numbers (``kid``), the state table its clock columns. Each step runs once, inside
its own transaction where it rewrites rows.
"""

from __future__ import annotations

from knotify.store.db import Database

#: 2: events carry ``kid`` (their key's number in ``keys``), indexed instead of the four
#: key columns: a small integer index costs a third as much to keep up at full intake.
SCHEMA_VERSION = 2
#: Its version in the meta table (the name knotify has always used).
VERSION_KEY = "schema"

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    rowid INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    host TEXT NOT NULL,
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    vs TEXT NOT NULL DEFAULT '',
    state TEXT NOT NULL,
    effective TEXT,
    prio INTEGER,
    seq INTEGER NOT NULL,
    ts_ns INTEGER NOT NULL,
    recv_ns INTEGER NOT NULL,
    source TEXT NOT NULL,
    form TEXT NOT NULL DEFAULT '',
    class TEXT NOT NULL,
    prev_state TEXT,
    prev_since_ns INTEGER,
    epoch INTEGER,
    error TEXT,
    data TEXT,
    kid INTEGER
);
CREATE TABLE IF NOT EXISTS keys (
    kid INTEGER PRIMARY KEY,
    host TEXT NOT NULL,
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    vs TEXT NOT NULL,
    UNIQUE (host, kind, name, vs)
);
CREATE TABLE IF NOT EXISTS state (
    host TEXT NOT NULL,
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    vs TEXT NOT NULL,
    state TEXT NOT NULL,
    prio INTEGER,
    since_ns INTEGER NOT NULL,
    event_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    epoch INTEGER NOT NULL,
    updated_ns INTEGER NOT NULL,
    mono_ns INTEGER NOT NULL DEFAULT 0,
    boot TEXT NOT NULL DEFAULT '',
    pid INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (host, kind, name, vs)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS runs (
    rowid INTEGER PRIMARY KEY,
    event_id TEXT NOT NULL,
    rule TEXT NOT NULL,
    idx INTEGER NOT NULL,
    kind TEXT NOT NULL,
    status TEXT NOT NULL,
    created_ns INTEGER NOT NULL,
    started_ns INTEGER,
    ended_ns INTEGER,
    exit_code INTEGER,
    output TEXT,
    detail TEXT
);
CREATE INDEX IF NOT EXISTS runs_event ON runs (event_id);
CREATE INDEX IF NOT EXISTS runs_open ON runs (status) WHERE status IN ('pending', 'running');
"""

EVENT_COLUMNS = (
    "rowid, id, host, kind, name, vs, state, effective, prio, seq, ts_ns, recv_ns, source, "
    "form, class, prev_state, prev_since_ns, epoch, error, data"
)


def create(database: Database) -> None:
    """The tables, made if missing and brought up to :data:`SCHEMA_VERSION`."""
    database.db.executescript(SCHEMA)
    migrate(database)


def migrate(database: Database) -> None:
    """Refuse a newer journal; bring an older one up to this schema."""
    database.check_version(VERSION_KEY, SCHEMA_VERSION)
    have = {row[1] for row in database.db.execute("PRAGMA table_info(events)")}
    if "kid" not in have:  # schema 1: number the keys, index the numbers
        database.db.execute("BEGIN IMMEDIATE")
        try:
            database.db.execute("ALTER TABLE events ADD COLUMN kid INTEGER")
            database.db.execute(
                "INSERT OR IGNORE INTO keys (host, kind, name, vs) "
                "SELECT host, kind, name, vs FROM events ORDER BY rowid")
            database.db.execute(
                "UPDATE events SET kid = (SELECT kid FROM keys k WHERE k.host = events.host "
                "AND k.kind = events.kind AND k.name = events.name AND k.vs = events.vs)")
            database.db.execute("DROP INDEX IF EXISTS events_key")
            database.db.execute("COMMIT")
        except BaseException:
            database.rollback()
            raise
    database.db.execute("CREATE INDEX IF NOT EXISTS events_kid ON events (kid)")
    database.set_version(VERSION_KEY, SCHEMA_VERSION)
    have = {row[1] for row in database.db.execute("PRAGMA table_info(state)")}
    for column, decl in (("mono_ns", "INTEGER NOT NULL DEFAULT 0"),
                         ("boot", "TEXT NOT NULL DEFAULT ''"),
                         ("pid", "INTEGER NOT NULL DEFAULT 0")):
        if column not in have:
            database.db.execute(f"ALTER TABLE state ADD COLUMN {column} {decl}")
