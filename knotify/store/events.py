"""The events store: every event, the key numbers, the state table and every action run.

An event is acked only after the transaction that holds it commits. The router
is the only writer; the CLI reads through the router, never this file. Its rows
are collected during a transaction and written just before the COMMIT.
Its tables and their migrations are in :mod:`.events_schema`, the queries that
read events back in :mod:`.events_read`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import orjson

from knotify.event import Event, Key
from knotify.outcome import Outcome
from knotify.store import events_read, events_schema
from knotify.store.db import Database
from knotify.store.events_schema import EVENT_COLUMNS
from knotify.tracker import KeyState, Transition
from knotify.vocab import INTERRUPTED, PENDING, RUNNING

#: Key numbers held in memory at most (see Journal._kids).
KIDS_CACHED = 50_000


def _dumps(data: dict[str, Any]) -> str:
    try:
        return orjson.dumps(data).decode()
    except TypeError:  # lone surrogates (undecodable argv bytes): json escapes them
        return json.dumps(data, ensure_ascii=True)


class EventStore:
    def __init__(self, database: Database) -> None:
        """The events tables in ``database``, made or brought up to this schema."""
        self.database = database
        self.path = database.path
        self.db = database.db
        events_schema.create(database)
        self._events: list[tuple[Any, ...]] = []
        self._event_ids: set[str] = set()
        self._states: dict[Key, tuple[Any, ...]] = {}
        self._runs: list[tuple[Any, ...]] = []
        #: Keys' numbers (the router is the only writer), and the batch's new ones. All of
        #: them while there are at most KIDS_CACHED; past that a cache, and a key not in
        #: it is looked up (memory stays bounded however many names senders make up).
        count, last_kid = self.db.execute("SELECT count(*), max(kid) FROM keys").fetchone()
        self._kids_all = count <= KIDS_CACHED
        self._kids: dict[Key, int] = {} if not self._kids_all else {
            (row[1], row[2], row[3], row[4]): row[0]
            for row in self.db.execute("SELECT kid, host, kind, name, vs FROM keys")}
        self._new_keys: list[tuple[Any, ...]] = []
        self._next_kid = (last_kid or 0) + 1
        last = self.db.execute("SELECT max(rowid) FROM runs").fetchone()[0]
        self._next_run = (last or 0) + 1
        database.batch(self)

    @property
    def _in_tx(self) -> bool:
        return self.database.in_transaction

    def transaction(self) -> AbstractContextManager[None]:
        """The database's transaction (:meth:`Database.transaction`)."""
        return self.database.transaction()

    def on_rollback(self, undo: Callable[[], None]) -> None:
        self.database.on_rollback(undo)


    # Rows of one transaction are collected and written with executemany just before
    # COMMIT: much cheaper per event than one execute each. Reads in the same
    # transaction see the collected events through seen() only.

    def end_batch(self, committed: bool) -> None:
        if committed:
            self._new_keys.clear()  # numbered for good
        if self._new_keys:  # still here: not committed, so not numbered
            for key_row in self._new_keys:
                self._kids.pop(key_row[1:], None)
            self._next_kid = self._new_keys[0][0]
            self._new_keys.clear()
        self._events.clear()
        self._event_ids.clear()
        self._states.clear()
        self._runs.clear()
        if len(self._kids) > KIDS_CACHED:  # every number in it is committed by now
            self._kids.clear()
            self._kids_all = False

    def write_batch(self) -> None:
        if self._new_keys:
            self.db.executemany("INSERT INTO keys VALUES (?, ?, ?, ?, ?)", self._new_keys)
        if self._events:
            self.db.executemany(
                f"INSERT INTO events ({EVENT_COLUMNS}, kid) VALUES "
                "(NULL, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", self._events)
        if self._runs:
            self.db.executemany(
                "INSERT INTO runs (rowid, event_id, rule, idx, kind, status, created_ns, detail, "
                "started_ns, ended_ns, exit_code, output) VALUES "
                "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", self._runs)
        if self._states:
            self.db.executemany(
                "INSERT OR REPLACE INTO state VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                self._states.values())

    # -- events and state -------------------------------------------------------------

    def seen_many(self, ids: list[str]) -> set[str]:
        """Which of ``ids`` are already journaled (one query per 500)."""
        found = {i for i in ids if i in self._event_ids}
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            marks = ",".join("?" * len(chunk))
            found.update(row[0] for row in self.db.execute(
                f"SELECT id FROM events WHERE id IN ({marks})", chunk))
        return found

    def add_event(self, ev: Event, tr: Transition) -> None:
        data: dict[str, Any] = {}
        if ev.argv is not None:
            data["argv"] = ev.argv
        if ev.raw is not None:
            data["raw"] = ev.raw
        if ev.extra:
            data["extra"] = ev.extra
        if ev.mono_ns:
            data["clock"] = [ev.mono_ns, ev.boot, ev.pid]
        key = ev.key
        kid = self._kids.get(key)
        if kid is None:
            found = None if self._kids_all else self.db.execute(
                "SELECT kid FROM keys WHERE host = ? AND kind = ? AND name = ? AND vs = ?",
                key).fetchone()
            if found is not None:
                kid = self._kids[key] = found[0]
            else:
                kid = self._kids[key] = self._next_kid
                self._next_kid += 1
                self._new_keys.append((kid, *key))
        row = (
            ev.id, ev.host, ev.kind, ev.name, ev.vs, ev.state, tr.state, ev.prio, ev.seq,
            ev.ts_ns, ev.recv_ns, ev.source, ev.form, tr.cls, tr.prev_state,
            tr.prev_since_ns, tr.epoch, ev.error,
            _dumps(data) if data else None, kid,
        )
        if not self._in_tx:
            with self.transaction():
                self.add_event(ev, tr)
            return
        self._events.append(row)
        self._event_ids.add(ev.id)

    def put_state(self, key: Key, ks: KeyState) -> None:
        row = (*key, ks.state, ks.prio, ks.since_ns, ks.event_id, ks.seq, ks.epoch,
               ks.updated_ns, ks.mono_ns, ks.boot, ks.pid)
        if not self._in_tx:
            with self.transaction():
                self.put_state(key, ks)
            return
        self._states[key] = row

    def load_states(self) -> dict[Key, KeyState]:
        out: dict[Key, KeyState] = {}
        for row in self.db.execute(
                "SELECT host, kind, name, vs, state, prio, since_ns, event_id, seq, epoch, "
                "updated_ns, mono_ns, boot, pid FROM state"):
            out[(row[0], row[1], row[2], row[3])] = KeyState(*row[4:])
        return out

    def prune(self, keep: int) -> int | None:
        """Drop the oldest events (and their runs) beyond ``keep``; open runs are kept.

        How many were dropped; None when there are not more than ``keep``."""
        row = self.db.execute("SELECT max(rowid) FROM events").fetchone()
        if not row or row[0] is None or row[0] <= keep:
            return None
        cutoff = row[0] - keep
        with self.transaction():
            self.db.execute(
                "DELETE FROM runs WHERE status NOT IN ('pending', 'running') AND event_id IN "
                "(SELECT id FROM events WHERE rowid <= ?)", (cutoff,))
            cur = self.db.execute(
                "DELETE FROM events WHERE rowid <= ? AND id NOT IN "
                "(SELECT event_id FROM runs WHERE status IN ('pending', 'running'))", (cutoff,))
        return cur.rowcount

    def transitions_in_window(self, event_id: str, since_ns: int, limit: int = 1000) -> int:
        """Transitions of the event's key newer than ``since_ns``, up to and including it."""
        row = self.db.execute("SELECT rowid, kid FROM events WHERE id = ?",
                              (event_id,)).fetchone()
        if row is None:
            return 0
        return int(self.db.execute(
            "SELECT count(*) FROM (SELECT ts_ns FROM events WHERE kid = ? AND "
            "class = 'transition' AND rowid <= ? ORDER BY rowid DESC "
            "LIMIT ?) WHERE ts_ns > ?", (row[1], row[0], limit, since_ns)).fetchone()[0])

    def oldest_recv_ns(self) -> int | None:
        """When the oldest event kept arrived (None: no event)."""
        row = self.db.execute("SELECT recv_ns FROM events ORDER BY rowid LIMIT 1").fetchone()
        return None if row is None else int(row[0])

    # -- action runs --------------------------------------------------------------------

    def add_run(self, event_id: str, rule: str, idx: int, kind: str, status: str = PENDING,
                detail: str | None = None, started_ns: int | None = None) -> int:
        if not self._in_tx:
            with self.transaction():
                return self.add_run(event_id, rule, idx, kind, status, detail, started_ns)
        rowid = self.reserve_run()
        self._runs.append((rowid, event_id, rule, idx, kind, status, time.time_ns(), detail,
                           started_ns, None, None, None))
        return rowid

    def reserve_run(self) -> int:
        """The next run number (for :meth:`add_finished_run` later in this transaction).

        The router is the only writer: it numbers runs itself, so they can be batched."""
        rowid = self._next_run
        self._next_run += 1
        return rowid

    def add_finished_run(self, rowid: int, event_id: str, rule: str, idx: int, kind: str,
                         outcome: Outcome, started_ns: int, ended_ns: int) -> None:
        """A run that is over already (an instant action run inside this transaction):
        one row, with its outcome, and no update later."""
        assert self._in_tx
        self._runs.append((rowid, event_id, rule, idx, kind, outcome.status, started_ns,
                           outcome.detail or None, started_ns, ended_ns, outcome.exit_code,
                           outcome.output or None))

    def start_run(self, rowid: int, started_ns: int) -> None:
        self.db.execute("UPDATE runs SET status = ?, started_ns = ? WHERE rowid = ?",
                        (RUNNING, started_ns, rowid))

    def finish_run(self, rowid: int, outcome: Outcome, started_ns: int | None,
                   ended_ns: int) -> None:
        self.finish_runs([(rowid, outcome, started_ns, ended_ns)])

    def finish_runs(self, done: list[tuple[int, Outcome, int | None, int]]) -> None:
        self.db.executemany(
            "UPDATE runs SET status = ?, started_ns = coalesce(started_ns, ?), ended_ns = ?, "
            "exit_code = ?, output = ?, detail = ? WHERE rowid = ?",
            [(o.status, started, ended, o.exit_code, o.output or None, o.detail or None, rowid)
             for rowid, o, started, ended in done],
        )

    def interrupt_running(self) -> int:
        """Runs that were under way when the router died: marked, never repeated."""
        with self.transaction():
            cur = self.db.execute(
                "UPDATE runs SET status = ?, ended_ns = ?, detail = ? WHERE status = ?",
                (INTERRUPTED, time.time_ns(),
                 "the router stopped while this ran; not repeated", RUNNING),
            )
        return cur.rowcount

    def pending_runs(self) -> list[tuple[int, str, str, int, str]]:
        """(rowid, event_id, rule, idx, kind) of runs not started yet, oldest first."""
        return list(self.db.execute(
            "SELECT rowid, event_id, rule, idx, kind FROM runs WHERE status = 'pending' "
            "ORDER BY rowid"))

    # -- reading back -------------------------------------------------------------------

    def load_event(self, event_id: str) -> tuple[Event, Transition] | None:
        return events_read.load_event(self.db, event_id)

    def status(self, offset: int = 0, limit: int = -1) -> list[dict[str, Any]]:
        """The state table in key order; ``limit`` rows from ``offset`` (-1: all)."""
        return events_read.status(self.db, offset, limit)

    def state_count(self) -> int:
        return int(self.db.execute("SELECT count(*) FROM state").fetchone()[0])

    def forget_states(self, keys: list[Key]) -> None:
        """Remove keys from the state table (in the current transaction)."""
        assert self._in_tx
        for key in keys:
            self._states.pop(key, None)
        self.db.executemany("DELETE FROM state WHERE host = ? AND kind = ? AND name = ? "
                            "AND vs = ?", keys)

    def history(self, limit: int = 50, *, host: str | None = None, kind: str | None = None,
                name: str | None = None, before: int | None = None,
                event_id: str | None = None, transitions: bool = False
                ) -> list[dict[str, Any]]:
        """Events newest first, with their runs (:func:`.events_read.history`)."""
        return events_read.history(self.db, limit, host=host, kind=kind, name=name,
                                   before=before, event_id=event_id, transitions=transitions)
