"""Reading keepalived's notify FIFO: inside the router, or as ``knotify fifo PATH``.

keepalived keeps the FIFO open for writing itself, so lines written while no one
reads wait in the pipe buffer. On reload and stop it closes and unlinks the FIFO
(the reader sees EOF) and makes a new one: the reader reopens by path. Only one
reader per FIFO: a lock keyed by the FIFO's path makes a second one wait.
``knotify fifo`` run as ``*_notify_fifo_script`` gets SIGTERM on reload and just
*before* keepalived writes the STOP lines at shutdown, so it keeps reading for a
short grace after SIGTERM (keepalived SIGKILLs it about 1 s later).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import hashlib
import os
import select
import signal
import stat
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from knotify import keepalived, spool
from knotify.client import Settings, complain, deliver
from knotify.errors import ParseError, ResyncError
from knotify.stamp import boot_clock, invalid, stamp

#: How long ``knotify fifo`` keeps reading after SIGTERM (keepalived SIGKILLs at ~1 s).
TERM_GRACE = 0.8
#: After a (re)open, read what waited in the FIFO first, then ask keepalived for its states.
RESYNC_DELAY = 0.5
REOPEN_INTERVAL = 0.1
#: Lines the router's reader remembers (for a resync to know what it read meanwhile).
RECENT_LINES = 4096
#: The router's reader turns at least this often while it waits (for its watchdog).
TURN = 1.0


def event_from_line(line: str, host: str, seq: int, ts_ns: int,
                    mono_ns: int | None = None) -> dict[str, object]:
    """A wire event for one FIFO line; an unparsable line becomes an INVALID event.

    ``mono_ns`` is the boot clock when the line was read (keepalived wrote it just before).
    """
    try:
        fields = keepalived.parse_fifo_line(line)
    except ParseError as exc:
        fields = invalid("fifo", str(exc))
    fields["raw"] = line[:4096]
    return stamp(fields, "fifo", host, seq, ts_ns, boot_clock() if mono_ns is None else mono_ns)


def lock_path(spool_dir: str, fifo_path: str) -> str:
    digest = hashlib.sha1(os.path.abspath(fifo_path).encode()).hexdigest()[:16]
    return os.path.join(spool_dir, f"fifo-{digest}.lock")


def take_lock(spool_dir: str, fifo_path: str, blocking: bool) -> int | None:
    """The reader lock for ``fifo_path``: an fd to keep open, or None if another holds it."""
    os.makedirs(spool_dir, mode=0o750, exist_ok=True)
    fd = os.open(lock_path(spool_dir, fifo_path), os.O_RDWR | os.O_CREAT, 0o640)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
    except BlockingIOError:
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def is_fifo(path: str) -> bool:
    try:
        return stat.S_ISFIFO(os.stat(path).st_mode)
    except OSError:
        return False


class LineBuffer:
    """Bytes in, complete decoded lines out (undecodable bytes shown as \\xNN)."""

    def __init__(self) -> None:
        self.pending = b""

    def feed(self, data: bytes) -> list[str]:
        data = self.pending + data
        *lines, self.pending = data.split(b"\n")
        if len(self.pending) > 65536:  # a "line" this long is garbage: cut it off
            lines.append(self.pending)
            self.pending = b""
        return [ln.decode("utf-8", "backslashreplace").rstrip("\r") for ln in lines if ln.strip()]


class AsyncFifoReader:
    """The router's own FIFO source. ``on_lines`` gets (line, ts_ns, boot clock ns) in order."""

    def __init__(self, path: str, spool_dir: str,
                 on_lines: Callable[[list[tuple[str, int, int]]], None], log: Any,
                 on_open: Callable[[], None] | None = None,
                 beat: Callable[[], None] | None = None) -> None:
        self.path = path
        self.spool_dir = spool_dir
        self.on_lines = on_lines
        self.on_open = on_open
        self.log = log.bind(fifo=path)
        self.beat = beat or (lambda: None)
        self._read_now: Callable[[], None] | None = None
        #: Counts the opens: a resync compares it to know the FIFO stayed the same.
        self.generation = 0
        self._count = 0
        self._recent: deque[tuple[int, int, str]] = deque(maxlen=RECENT_LINES)

    def _remember(self, lines: list[str]) -> None:
        for line in lines:
            self._count += 1
            self._recent.append((self.generation, self._count, line))

    def mark(self) -> tuple[int, int] | None:
        """Where the reader is now: None if no FIFO is open."""
        return (self.generation, self._count) if self._read_now is not None else None

    def lines_since(self, mark: tuple[int, int] | None) -> list[str] | None:
        """Lines read from the same open FIFO since ``mark``; None if it was closed or
        reopened since (or too many came to remember)."""
        if mark is None or self._read_now is None or self.generation != mark[0]:
            return None
        lines = [line for gen, n, line in self._recent if gen == mark[0] and n > mark[1]]
        return lines if len(lines) == self._count - mark[1] else None

    def lines_this_open(self) -> list[str]:
        """The lines read since the FIFO now open was opened (as many as remembered)."""
        return [line for gen, _, line in self._recent if gen == self.generation]

    def drain(self) -> None:
        """Hand on every line already waiting in the open FIFO, now, in order.

        A resync calls this before it asks keepalived for its state dump (every line
        read by then is older than the dump) and again after the dump: the lines of
        that window may be older or newer than the dump (:meth:`lines_since`), so the
        FIFO's word wins for their instances.
        """
        if self._read_now is not None:
            self._read_now()

    async def run(self) -> None:
        lock = None
        waited = False
        try:
            while lock is None:
                lock = take_lock(self.spool_dir, self.path, blocking=False)
                if lock is None:
                    if not waited:
                        self.log.warning("fifo.busy", reason="another knotify reader holds this "
                                         "FIFO; waiting for it to go")
                        waited = True
                    self.beat()
                    await asyncio.sleep(0.5)
            await self._loop()
        finally:
            if lock is not None:
                os.close(lock)

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        missing_logged = False
        while True:
            self.beat()
            if not is_fifo(self.path):
                if not missing_logged:
                    self.log.info("fifo.waiting", reason="not there yet (keepalived creates it)")
                    missing_logged = True
                await asyncio.sleep(REOPEN_INTERVAL)
                continue
            missing_logged = False
            try:
                fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)
            except OSError as exc:
                self.log.warning("fifo.open_failed", error=str(exc))
                await asyncio.sleep(1.0)
                continue
            eof = asyncio.Event()
            buf = LineBuffer()

            def readable(fd: int = fd, buf: LineBuffer = buf, eof: asyncio.Event = eof) -> bool:
                """Read once; False when nothing more is waiting (or EOF)."""
                if eof.is_set():
                    return False
                try:
                    data = os.read(fd, 65536)
                except BlockingIOError:
                    return False
                except OSError as exc:
                    self.log.warning("fifo.read_failed", error=str(exc))
                    data = b""
                if not data:
                    eof.set()
                    return False
                ts, mono = time.time_ns(), boot_clock()
                lines = buf.feed(data)
                if lines:
                    self._remember(lines)
                    self.on_lines([(line, ts, mono) for line in lines])
                return True

            def read_now(readable: Callable[[], bool] = readable) -> None:
                while readable():
                    pass

            loop.add_reader(fd, readable)
            self.generation += 1
            self._read_now = read_now
            if self.on_open is not None:
                self.on_open()
            try:
                while not eof.is_set():
                    self.beat()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(eof.wait(), TURN)
            finally:
                self._read_now = None
                loop.remove_reader(fd)
                os.close(fd)
            if buf.pending.strip():
                self.on_lines([(buf.pending.decode("utf-8", "backslashreplace"), time.time_ns(),
                                boot_clock())])
            # EOF: keepalived closed it (reload or stop) or nobody has it open. Reopen
            # by path; a reload makes a new FIFO, so the path may now be a new inode.
            await asyncio.sleep(REOPEN_INTERVAL)


def _script_resync(pid: int, settings: Settings,
                   out: Callable[[str], None] | None) -> None:
    from knotify import resync

    try:
        instances = resync.snapshot(pid, resync.dump_path())
    except ResyncError as exc:
        complain(f"resync: {exc}")
        return
    for event in resync.wire_events(instances, settings.host,
                                    lambda: spool.next_seq(settings.spool_dir)):
        result = deliver(event, settings)
        if out:
            out(f"{result} resync {event['name']} {event['state']}")


def run_script_reader(path: str, settings: Settings, *, once: bool = False,
                      out: Callable[[str], None] | None = None,
                      resync_pid: int | None = None) -> int:
    """``knotify fifo PATH``: forward each line to the router (ack or spool), in order.

    With ``resync_pid`` (keepalived, our parent when run as its fifo script), each
    (re)open is followed by a state snapshot from keepalived's JSON dump.
    """
    term_at: list[float] = []

    def on_term(signum: int, frame: object) -> None:
        if not term_at:
            term_at.append(time.monotonic())
            settings.ack_timeout = min(settings.ack_timeout, 0.1)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    lock = None
    while lock is None:
        lock = take_lock(settings.spool_dir, path, blocking=False)
        if lock is None:
            if term_at:
                return 0
            time.sleep(0.05)
    delivered = 0
    # After a failed delivery, spool straight away for a while: at shutdown keepalived
    # kills this reader ~1 s after SIGTERM, too soon to wait out one ack timeout per line.
    skip_until = 0.0
    try:
        while True:
            if term_at and time.monotonic() - term_at[0] > TERM_GRACE:
                return 0
            if not is_fifo(path):
                if once and delivered:
                    return 0
                time.sleep(REOPEN_INTERVAL)
                continue
            try:
                fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
            except OSError as exc:
                complain(f"cannot open FIFO {path}: {exc}")
                time.sleep(1.0)
                continue
            buf = LineBuffer()
            resync_due = time.monotonic() + RESYNC_DELAY if resync_pid else None
            try:
                while True:
                    timeout = 0.5
                    if term_at:
                        timeout = max(0.0, TERM_GRACE - (time.monotonic() - term_at[0]))
                        if timeout == 0:
                            return 0
                    elif resync_due is not None:
                        timeout = max(0.0, min(timeout, resync_due - time.monotonic()))
                    try:
                        ready, _, _ = select.select([fd], [], [], timeout)
                    except InterruptedError:
                        continue
                    if not ready:
                        if (resync_due is not None and resync_pid and not term_at
                                and time.monotonic() >= resync_due):
                            resync_due = None
                            _script_resync(resync_pid, settings, out)
                        continue
                    try:
                        data = os.read(fd, 65536)
                    except BlockingIOError:
                        continue
                    except OSError as exc:
                        if exc.errno == errno.EINTR:
                            continue
                        raise
                    if not data:
                        break
                    ts, mono = time.time_ns(), boot_clock()
                    for line in buf.feed(data):
                        event = event_from_line(line, settings.host,
                                                spool.next_seq(settings.spool_dir), ts, mono)
                        now = time.monotonic()
                        result = deliver(event, settings, send=now >= skip_until)
                        if result != "acked":
                            skip_until = now + 2.0
                        delivered += 1
                        if out:
                            out(f"{result} {line}")
            finally:
                os.close(fd)
            if term_at or once:
                # SIGTERM then EOF: keepalived is reloading or stopping; a new reader
                # (if any) is started by keepalived. Never stay as a second reader.
                return 0
            # EOF without SIGTERM: wait a moment for the SIGTERM a reload sends.
            deadline = time.monotonic() + 0.3
            while time.monotonic() < deadline and not term_at:
                time.sleep(0.02)
            if term_at:
                return 0
    finally:
        with contextlib.suppress(OSError):
            os.close(lock)
