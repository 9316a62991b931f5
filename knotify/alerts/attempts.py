"""One delivery attempt: its start journaled, a turn of its receiver, a warm worker, the job,
then its outcome settled (:mod:`.settle`).

A receiver has at most ``max_parallel_per_receiver`` jobs at workers; more attempts
may be journaled and wait for their turn here, so the next job is ready the moment a
worker is. Every attempt is a task tracked by message until its outcome is journaled.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
from collections import deque
from collections.abc import Coroutine
from typing import Any

from knotify.alerts.commit import GroupCommit
from knotify.alerts.core import Core
from knotify.alerts.pool import Worker
from knotify.alerts.receivers import Receiver
from knotify.alerts.settle import Ending, Settle
from knotify.errors import JournalError, PoolError
from knotify.store.outbox import MessageRow


class Attempts:
    def __init__(self, core: Core, commit: GroupCommit, settle: Settle) -> None:
        self.core = core
        self.commit = commit
        self.settle = settle

    def start(self, message: MessageRow, receiver: Receiver) -> None:
        """Start an attempt at ``message``: its start joins this loop turn's group commit."""
        core = self.core
        now = core.clock.time_ns()
        path = os.path.join(core.result_dir,
                            f"m{message.rowid}-a{message.attempts + 1}-{now}.jsonl")
        started = self.commit.op(functools.partial(core.outbox.start_attempt, message, path, now))
        core.flights.working[message.rowid] = receiver.name
        self.track(message.rowid, receiver.name, self._attempt(message, receiver, path, started))

    def track(self, message_id: int, receiver: str, work: Coroutine[Any, Any, None]) -> None:
        """Run one attempt (or the watch of an adopted one) for message ``message_id``."""
        core, flights = self.core, self.core.flights
        task = asyncio.get_running_loop().create_task(work)
        flights.inflight[message_id] = task
        flights.receiver_of[message_id] = receiver

        def done(_: asyncio.Task[None]) -> None:
            if flights.inflight.get(message_id) is task:
                del flights.inflight[message_id]
                flights.receiver_of.pop(message_id, None)
            flights.working.pop(message_id, None)
            if not task.cancelled() and task.exception() is not None:
                exc = task.exception()
                core.count("attempt_crashed")
                core.log.error("alert.attempt_crashed", message=message_id,
                               error=f"{type(exc).__name__}: {exc}")
            core.kick()

        task.add_done_callback(done)

    async def _attempt(self, message: MessageRow, receiver: Receiver, path: str,
                       started: asyncio.Future[int]) -> None:
        """One attempt: its start journaled, a worker, the job, the outcome journaled.

        :meth:`start` queued the start in this loop turn's group commit, with the
        outcomes of the attempts that just ended: one COMMIT for all of them.
        """
        core = self.core
        try:
            attempt_id = await started
        except JournalError as exc:
            core.log.warning("alerts.journal_failed", error=str(exc), message=message.rowid,
                             event_ids=message.event_ids)
            await asyncio.sleep(1.0)
            return
        worker: Worker | None = None
        timed_out, note, interrupted = False, "", False
        entered = False
        try:
            await self._enter(receiver.name)
            entered = True
            try:
                worker = await core.pool.acquire()
            except PoolError as exc:
                # Journaled as an attempt that failed (retried later), or at a stop as
                # one that never began (tried again at once after the next start).
                note, interrupted = str(exc), core.stopping
            except Exception as exc:  # a bug: the attempt must still be settled
                core.log.exception("alert.attempt_crashed", message=message.rowid)
                core.count("attempt_crashed")
                note = f"{type(exc).__name__}: {exc}"
            core.log.info("alert.attempt", event_ids=message.event_ids, message=message.rowid,
                          receiver=receiver.name, attempt=message.attempts + 1,
                          urls_done=len(message.done), timeout=receiver.timeout,
                          worker=worker.pid if worker is not None else None)
            if worker is not None:
                timed_out, note = await self._run_job(worker, path, message, receiver)
        finally:
            if worker is not None:
                core.pool.release(worker)
            if entered:
                self._leave(receiver.name)
        # The worker is free for the next message while this outcome waits for its commit.
        core.flights.working.pop(message.rowid, None)
        core.kick()
        await self.settle.until_journaled(Ending(attempt_id, message.rowid, receiver.name, path,
                                                 timed_out, note, interrupted))

    async def _enter(self, name: str) -> None:
        """Wait until fewer than max_parallel_per_receiver jobs of ``name`` are at workers."""
        flights = self.core.flights
        while flights.sending.get(name, 0) >= self.core.settings.max_parallel_per_receiver:
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            waiters = flights.turns.setdefault(name, deque())
            waiters.append(fut)
            try:
                await fut
            finally:
                with contextlib.suppress(ValueError):
                    waiters.remove(fut)
        flights.sending[name] = flights.sending.get(name, 0) + 1

    def _leave(self, name: str) -> None:
        flights = self.core.flights
        left = flights.sending.get(name, 1) - 1
        if left > 0:
            flights.sending[name] = left
        else:
            flights.sending.pop(name, None)
        waiters = flights.turns.get(name)
        while waiters:
            fut = waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                break
        if waiters is not None and not waiters:
            flights.turns.pop(name, None)

    async def _run_job(self, worker: Worker, path: str, message: MessageRow,
                       receiver: Receiver) -> tuple[bool, str]:
        core = self.core
        job = {**receiver.job(), "title": message.title, "body": message.body,
               "type": message.notify_type, "skip": message.done}
        if receiver.alertmanager is not None:
            job["alerts"] = core.am.alerts(message.rowid, receiver)
        try:
            if not os.path.isdir(core.result_dir):
                os.makedirs(core.result_dir, mode=0o700, exist_ok=True)
                os.chmod(core.result_dir, 0o700)  # whatever the umask
            # The worker opens it but never creates it: a file this router removed (it
            # gave up on the attempt) is not written again. 0600 whatever the umask: it
            # names receivers and errors.
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
                         | os.O_NOFOLLOW, 0o600)
            try:
                os.fchmod(fd, 0o600)
            finally:
                os.close(fd)
        except OSError as exc:
            return False, f"cannot create the result file {path}: {exc.strerror}"
        try:
            return await worker.call({"result": path, "job": job}, receiver.timeout)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug here must not leave the message "sending"
            core.log.exception("alert.attempt_crashed", event_ids=message.event_ids,
                               message=message.rowid)
            core.count("attempt_crashed")
            await worker.kill()
            return False, f"{type(exc).__name__}: {exc}"
