"""The router's pool of warm sender workers (:mod:`knotify.alerts.worker`).

At most ``size()`` workers live at a time, each in its own session. They are
started on demand (or ahead of need, :meth:`WorkerPool.warm`, while alerts wait
out their ``group_wait``), handed one job at a time, and closed after
``idle()`` seconds without work, so idle memory is bounded by the pool size and
falls to nothing when no alerts flow.

Every job is bounded: a worker that has not answered within the job's timeout
(plus a grace) is killed with its whole process group and dropped; the next
job gets another worker. A worker that dies, answers out of turn or asks to
retire is dropped the same way. Closing the pool closes every worker's stdin:
idle ones exit at once, busy ones finish their job (bounded by their own alarm)
and then exit; the next router reads their result files.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
from collections import deque
from collections.abc import Callable
from typing import Any

from knotify.alerts.sender import GRACE
from knotify.errors import PoolError

WORKER_MODULE = "knotify.alerts.worker"
#: Seconds a new worker may take to import apprise and say it is ready.
READY_TIMEOUT = 60.0
ERR_TAIL = 2000



class Worker:
    """One worker process, as the router sees it."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.pid = proc.pid
        self.jobs = 0
        self.usable = True
        self.killed = False
        self.died = False
        self.idle_timer: asyncio.TimerHandle | None = None
        self._tail = bytearray()
        self._seq = 0
        assert proc.stderr is not None
        self._pump = asyncio.get_running_loop().create_task(self._read_stderr(proc.stderr))

    async def _read_stderr(self, stderr: asyncio.StreamReader) -> None:
        with contextlib.suppress(Exception):
            while chunk := await stderr.read(65536):
                self._tail.extend(chunk)
                del self._tail[:-ERR_TAIL]

    async def wait_closed(self) -> None:
        """Wait for the process to exit and its stderr to be read to the end."""
        await self.proc.wait()
        await self._pump

    def tail(self) -> str:
        lines = self._tail.decode("utf-8", "replace").strip().splitlines()
        return lines[-1][:300] if lines else ""

    @classmethod
    async def start(cls, python: str) -> Worker:
        try:
            proc = await asyncio.create_subprocess_exec(
                python, "-m", WORKER_MODULE, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, start_new_session=True, cwd="/")
        except (OSError, ValueError, subprocess.SubprocessError) as exc:
            raise PoolError(f"could not start a sender worker: {exc}") from None
        worker = cls(proc)
        assert proc.stdout is not None
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), READY_TIMEOUT)
        except TimeoutError:
            await worker.kill()
            raise PoolError(f"a sender worker was not ready after {READY_TIMEOUT:g}s; "
                            f"killed") from None
        except BaseException:
            await worker.kill()
            raise
        try:
            ready = json.loads(line) if line else None
        except ValueError:
            ready = None
        if not isinstance(ready, dict) or ready.get("ready") != proc.pid:
            await worker.kill()
            raise PoolError("a sender worker did not start"
                            + (f": {worker.tail()}" if worker.tail() else f": {line[:200]!r}"))
        return worker

    @property
    def alive(self) -> bool:
        return self.proc.returncode is None

    async def call(self, request: dict[str, Any], timeout: float,
                   grace: float = GRACE) -> tuple[bool, str]:
        """Send one job and wait for its reply: (timed out?, a note when it did not go well).

        The worker is killed, with its process group, if no reply comes within
        ``timeout`` (the job's own) plus ``grace``.

        A cancelled call leaves the worker to finish the job alone (its stdin is
        closed, so it exits afterwards): the job's result file says what it did.
        """
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self._seq += 1
        self.jobs += 1
        request = {"id": self._seq, **request}
        try:
            self.proc.stdin.write(json.dumps(request).encode() + b"\n")
            await self.proc.stdin.drain()
        except (BrokenPipeError, ConnectionResetError):
            pass  # it died: the reply read below finds out
        try:
            line = await asyncio.wait_for(self.proc.stdout.readline(), timeout + grace)
        except TimeoutError:
            await self.kill()
            return True, (f"timed out after {timeout:g}s; worker process group "
                          f"{self.pid} killed")
        except asyncio.CancelledError:
            self.retire()
            raise
        except (ValueError, OSError) as exc:  # a line over the stream's limit, a broken pipe
            await self.kill()
            return False, f"the sender worker's reply could not be read: {exc}"
        if not line:
            self.usable = False
            self.died = True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.proc.wait(), 5.0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._pump), 1.0)
            code = self.proc.returncode
            text = self.tail()
            return False, (f"the sender worker {self.pid} exited "
                           f"{code if code is not None else '(still running: killed)'}"
                           + (f": {text}" if text else ""))
        try:
            reply = json.loads(line)
        except ValueError:
            reply = None
        if not isinstance(reply, dict) or reply.get("id") != self._seq:
            await self.kill()
            return False, f"the sender worker answered out of turn: {line[:200]!r}"
        if reply.get("retire"):
            self.retire()
        error = reply.get("error")
        return False, str(error) if error else ""

    def retire(self) -> None:
        """No more jobs: close stdin, so the worker exits after what it is doing."""
        self.usable = False
        if self.idle_timer is not None:
            self.idle_timer.cancel()
            self.idle_timer = None
        if self.proc.stdin is not None and not self.proc.stdin.is_closing():
            self.proc.stdin.close()

    async def kill(self) -> None:
        self.killed = True
        self.retire()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        await self.proc.wait()


class WorkerPool:
    """Warm workers, handed out one job at a time; waiting callers are served in order."""

    def __init__(self, size: Callable[[], int], idle: Callable[[], float], log: Any,
                 python: str = sys.executable) -> None:
        self.size = size
        self.idle_s = idle
        self.log = log
        self.python = python
        self.workers: set[Worker] = set()
        self.idle: list[Worker] = []
        self.starting = 0
        #: Of those starting, the ones warm() started (for whoever comes first).
        self.warming = 0
        self.waiters: deque[asyncio.Future[Worker | None]] = deque()
        self.closed = False
        self.counts: dict[str, int] = {}
        self._reaping: set[asyncio.Task[None]] = set()

    def _count(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1

    @property
    def busy(self) -> int:
        return len(self.workers) - len(self.idle)

    def info(self) -> dict[str, Any]:
        return {"workers": len(self.workers), "busy": self.busy, "starting": self.starting,
                "warming": self.warming,
                "pids": sorted(w.pid for w in self.workers), **self.counts}

    async def acquire(self) -> Worker:
        """A worker for one job: an idle one, a new one if the pool has room, else wait."""
        while True:
            if self.closed:
                raise PoolError("the sender pool is closed (the router is stopping)")
            while self.idle:
                worker = self.idle.pop()  # the most recently used: the others may idle out
                if worker.idle_timer is not None:
                    worker.idle_timer.cancel()
                    worker.idle_timer = None
                if worker.usable and worker.alive:
                    return worker
                self._drop(worker)
            # A worker warming up for nobody yet is on its way: wait for it rather
            # than start another.
            if (self.warming <= len(self.waiters)
                    and len(self.workers) + self.starting < self.size()):
                return await self._spawn()
            fut: asyncio.Future[Worker | None] = asyncio.get_running_loop().create_future()
            self.waiters.append(fut)
            try:
                handed = await fut
            except asyncio.CancelledError:
                handed = fut.result() if fut.done() and not fut.cancelled() else None
                if handed is not None:
                    self.release(handed)  # handed over just as we were cancelled
                with contextlib.suppress(ValueError):
                    self.waiters.remove(fut)
                raise
            if handed is not None:
                return handed
            # None: a place in the pool came free; go round and start a worker

    async def _spawn(self) -> Worker:
        self.starting += 1
        try:
            worker = await Worker.start(self.python)
        except BaseException as exc:
            self.starting -= 1
            self._wake_one(None)  # the place is free again: a waiter may start one itself
            if isinstance(exc, PoolError):
                self._count("start_failed")
                self.log.error("alert.worker_failed", error=str(exc))
            raise
        self.starting -= 1
        self.workers.add(worker)
        self._count("started")
        self.log.debug("alert.worker_started", pid=worker.pid, workers=len(self.workers))
        if self.closed:
            self._drop(worker)
            raise PoolError("the sender pool is closed (the router is stopping)")
        return worker

    def _wake_one(self, worker: Worker | None) -> bool:
        while self.waiters:
            fut = self.waiters.popleft()
            if not fut.done():
                fut.set_result(worker)
                return True
        return False

    def release(self, worker: Worker) -> None:
        """A worker is done with its job: to the next waiter, to the idle list, or away."""
        if (self.closed or not worker.usable or not worker.alive
                or len(self.workers) > self.size()):
            if worker.killed:
                self._count("killed")
            elif worker.died:
                self._count("died")
            elif not worker.usable:
                self._count("retired")
            self._drop(worker)
            self._wake_one(None)
            return
        if self._wake_one(worker):
            return
        self.idle.append(worker)
        worker.idle_timer = asyncio.get_running_loop().call_later(
            max(0.0, self.idle_s()), self._idle_out, worker)

    def _idle_out(self, worker: Worker) -> None:
        worker.idle_timer = None
        if worker in self.idle:
            self.idle.remove(worker)
            self._count("idled_out")
            self.log.debug("alert.worker_idle_exit", pid=worker.pid, jobs=worker.jobs)
            self._drop(worker)

    def _drop(self, worker: Worker) -> None:
        """Forget a worker: close its stdin and reap it in the background."""
        self.workers.discard(worker)
        with contextlib.suppress(ValueError):
            self.idle.remove(worker)
        worker.retire()
        task = asyncio.get_running_loop().create_task(self._reap(worker))
        self._reaping.add(task)
        task.add_done_callback(self._reaping.discard)

    async def _reap(self, worker: Worker) -> None:
        with contextlib.suppress(Exception):
            await worker.wait_closed()

    def warm(self, count: int) -> None:
        """Start workers in the background until ``count`` (at most the pool size) exist."""
        want = min(count, self.size())
        loop = asyncio.get_running_loop()
        while not self.closed and len(self.workers) + self.starting < want:
            self.starting += 1  # counted now, so the loop ends; _warm_one takes it over
            self.warming += 1
            task = loop.create_task(self._warm_one())
            self._reaping.add(task)
            task.add_done_callback(self._reaping.discard)

    async def _warm_one(self) -> None:
        self.starting -= 1
        try:
            worker = await self._spawn()
        except PoolError:
            return  # logged and counted by _spawn (which woke a waiter to try itself)
        except Exception:  # a background task never dies silently
            self._count("warm_crashed")
            self.log.exception("alert.worker_warm_crashed")
            return
        finally:
            self.warming -= 1
        self.release(worker)

    async def close(self, timeout: float = 2.0) -> None:
        """Take no more jobs; idle workers exit now, busy ones after their job."""
        self.closed = True
        while self.waiters:
            fut = self.waiters.popleft()
            if not fut.done():
                fut.set_exception(PoolError("the sender pool is closed"))
        for worker in list(self.workers):
            worker.retire()
        idle = [w for w in self.idle]
        for worker in idle:
            self._drop(worker)
        if self._reaping:
            await asyncio.wait(list(self._reaping), timeout=timeout)
