"""The journal's SQLite file: connection, WAL, file modes, transactions, schema versions.

The router is the only writer. One transaction at a time (BEGIN IMMEDIATE ..
COMMIT); a store that collects rows in memory writes them just before the COMMIT
(:meth:`Database.batch`), and what a caller took out of its own memory for a
transaction goes back there if it rolls back (:meth:`Database.on_rollback`).
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Protocol

from knotify.errors import JournalError

#: SQLite's primary result codes for a damaged file.
_SQLITE_CORRUPT, _SQLITE_NOTADB = 11, 26

META = "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"


def corrupt(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) says the journal file is damaged."""
    while exc is not None:
        code = getattr(exc, "sqlite_errorcode", None)
        if isinstance(code, int) and code & 0xFF in (_SQLITE_CORRUPT, _SQLITE_NOTADB):
            return True
        if isinstance(exc, sqlite3.DatabaseError) and (
                "malformed" in str(exc) or "not a database" in str(exc)):
            return True
        exc = exc.__cause__  # type: ignore[assignment]
    return False


def set_mode(path: str, mode: int, gid: int = -1) -> None:
    """Give the journal (made now if missing) and its -wal/-shm files ``mode`` and group
    ``gid``, whatever the umask: SQLite gives new -wal/-shm files the journal's mode."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        _own(fd, mode, gid)
    finally:
        os.close(fd)
    for suffix in ("-wal", "-shm", "-journal"):
        try:
            fd = os.open(path + suffix, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            continue
        try:
            _own(fd, mode, gid)
        finally:
            os.close(fd)


def _own(fd: int, mode: int, gid: int) -> None:
    st = os.fstat(fd)
    if st.st_uid != os.geteuid():
        return
    if gid >= 0 and st.st_gid != gid:
        os.fchown(fd, -1, gid)
    if st.st_mode & 0o7777 != mode:
        os.fchmod(fd, mode)


class Batch(Protocol):
    """A store that collects a transaction's rows in memory (see :meth:`Database.batch`)."""

    def write_batch(self) -> None:
        """Write the collected rows (inside the transaction, just before COMMIT)."""

    def end_batch(self, committed: bool) -> None:
        """The transaction is over: forget the rows (and undo what needs it if not committed)."""


class Database:
    def __init__(self, path: str, synchronous: str = "full", mode: int | None = None,
                 gid: int = -1) -> None:
        """Open (or make) the journal at ``path``; with ``mode``, it and its -wal/-shm
        files get that mode (and group ``gid``) whatever the umask."""
        self.path = path
        directory = os.path.dirname(path) or "."
        os.makedirs(directory, mode=0o750, exist_ok=True)
        if mode is not None:
            set_mode(path, mode, gid)
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        # Short: the router's loop waits on it; a locked journal means "no ack, spool".
        self.db.execute("PRAGMA busy_timeout = 500")
        journal_mode = self.db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(journal_mode).lower() != "wal":
            raise JournalError(f"{path}: cannot switch SQLite to WAL mode (got {journal_mode})")
        self.db.execute(f"PRAGMA synchronous = {synchronous.upper()}")
        self.db.executescript(META)
        self._in_tx = False
        self._undo: list[Callable[[], None]] = []
        self._batches: list[Batch] = []

    def close(self) -> None:
        self.db.close()

    # -- schema versions ----------------------------------------------------------------

    def version(self, name: str) -> int | None:
        """The schema version a store wrote under ``name``, or None."""
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (name,)).fetchone()
        return None if row is None else int(row[0])

    def check_version(self, name: str, current: int) -> None:
        """Refuse a journal whose ``name`` tables were written by a newer knotify."""
        found = self.version(name)
        if found is not None and found > current:
            raise JournalError(f"{self.path}: journal {name} {found} is newer than this knotify")

    def set_version(self, name: str, version: int) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (name, str(version)))

    # -- transactions -------------------------------------------------------------------

    @property
    def in_transaction(self) -> bool:
        return self._in_tx

    def batch(self, store: Batch) -> None:
        """Have ``store`` write its collected rows at every COMMIT (and forget them after)."""
        self._batches.append(store)

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """BEGIN IMMEDIATE .. COMMIT; any SQLite error rolls back and becomes JournalError.

        Nested, it joins the transaction under way."""
        if self._in_tx:
            yield
            return
        try:
            self.db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise JournalError(f"{self.path}: {exc}") from exc
        self._in_tx = True
        committed = False
        try:
            yield
            for store in self._batches:
                store.write_batch()
            self.db.execute("COMMIT")
            committed = True
            self._undo.clear()
        except sqlite3.Error as exc:
            self.rollback()
            raise JournalError(f"{self.path}: {exc}") from exc
        except BaseException:
            self.rollback()
            raise
        finally:
            self._in_tx = False
            for store in self._batches:
                store.end_batch(committed)

    def on_rollback(self, undo: Callable[[], None]) -> None:
        """Call ``undo`` if the transaction under way (the outermost) does not commit.

        What a caller took out of its own memory to write in a nested transaction must
        go back there when the outer one fails (:meth:`Executor.flush`).
        """
        assert self._in_tx
        self._undo.append(undo)

    def rollback(self) -> None:
        try:
            self.db.execute("ROLLBACK")
        except sqlite3.Error:
            pass
        undo, self._undo = self._undo, []
        for call in reversed(undo):
            call()
