"""The alert engine's group commit: the journal writes of one loop turn share one COMMIT.

Attempt starts and outcomes and the alerts queued in one event-loop turn (a mass
failover queues hundreds) are each an op; :meth:`GroupCommit.op` queues one and
returns a future of its result, and one transaction runs them all.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from knotify.errors import JournalError

if TYPE_CHECKING:
    from knotify.store.events import EventStore

#: Seconds between two of the engine's group commits, at least.
COMMIT_INTERVAL = 0.01


class GroupCommit:
    def __init__(self, journal: EventStore, new_turn: Callable[[], None]) -> None:
        self.journal = journal
        #: Called before each commit's ops run (the engine's view of the states is reset).
        self.new_turn = new_turn
        #: Group commits done.
        self.commits = 0
        self._ops: list[tuple[Callable[[], Any], asyncio.Future[Any]]] = []
        self._scheduled = False
        self._last = 0.0

    def op(self, op: Callable[[], Any]) -> asyncio.Future[Any]:
        """Run ``op`` in the next group commit (one transaction per loop turn); its result."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        self._ops.append((op, fut))
        if not self._scheduled:
            self._scheduled = True
            # At most one commit per COMMIT_INTERVAL: under a mass delivery each carries
            # the starts and outcomes of many attempts, not one or two.
            wait = self._last + COMMIT_INTERVAL - loop.time()
            if wait > 0:
                loop.call_later(wait, self.commit)
            else:
                loop.call_soon(self.commit)
        return fut

    def commit(self) -> None:
        """Every op queued so far, in one transaction.

        Each op runs in a savepoint, so a bug in one undoes only its own writes; a
        journal error fails them all (their callers retry).
        """
        self._scheduled = False
        self.new_turn()
        ops, self._ops = self._ops, []
        if not ops:
            return
        self._last = asyncio.get_running_loop().time()
        done: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
        db = self.journal.db
        ops = [(op, fut) for op, fut in ops if not fut.cancelled()]  # nobody waits: not done
        if not ops:
            return
        try:
            with self.journal.transaction():
                for op, fut in ops:
                    db.execute("SAVEPOINT alert_op")
                    try:
                        value = op()
                    except sqlite3.Error:
                        raise
                    except Exception as exc:
                        db.execute("ROLLBACK TO alert_op")
                        done.append((fut, None, exc))
                    else:
                        done.append((fut, value, None))
                    db.execute("RELEASE alert_op")
        except (JournalError, sqlite3.Error) as exc:
            error = exc if isinstance(exc, JournalError) else JournalError(str(exc))
            for _, fut in ops:
                if not fut.done():
                    fut.set_exception(error)
            return
        self.commits += 1
        for fut, value, failure in done:
            if fut.done():
                continue
            if failure is not None:
                fut.set_exception(failure)
            else:
                fut.set_result(value)
