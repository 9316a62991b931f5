"""Spool replay: the router's side of the spool, every file in it treated as hostile.

With ``[paths] group`` the spool is writable by the hook's unprivileged group, so a
file in ``SPOOL/new`` may be anything: a FIFO that would block ``open()``, a folder, a
link to a root-only file, a device, JSON nested beyond any parser, an event the journal
cannot store. Each is moved to ``SPOOL/bad`` (or, if even that fails, skipped until the
router restarts) with one log line and a count in ``spool_bad``; it never blocks the
loop, stops start-up, ends the spool loop or holds back the good files around it.

Files a writer left in ``SPOOL/tmp`` (a hook killed between its fsync and its rename)
are recovered once they are older than :data:`knotify.spool.TMP_GRACE`: a complete
event goes on to ``new/``, an empty file is removed, a cut-off one goes to ``bad/``.
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Callable
from typing import Any

from knotify import paths, spool
from knotify.errors import BadFile, JournalError
from knotify.event import Event, decode_event, loads

#: Files read per batch (one journal transaction).
MAX_BATCH = 2000
#: Names of bad files that could not be moved away, remembered at most.
MAX_SKIPPED = 100_000
#: How often the default spool (where a hook with a missing config spools) is looked at.
UNREAD_EVERY = 60.0
#: Errors of the router, not of the file: the scan stops and is tried again later.
_OURS = frozenset((errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.EIO, errno.ENOSPC,
                   errno.EROFS))


def _reason(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    if not isinstance(exc, (BadFile, ValueError)) or isinstance(exc, RecursionError):
        text = f"{type(exc).__name__}: {text}"
    return text[:500]


class SpoolReplay:
    """Reads ``spool_dir`` for the router: :meth:`run` journals what waits there."""

    def __init__(self, spool_dir: str, max_bytes: int, ingest: Callable[[list[Event]], Any],
                 log: Any, stats: dict[str, int], on_failure: Callable[[], None]) -> None:
        self.spool_dir = spool_dir
        self.max_bytes = max_bytes
        self.ingest = ingest
        self.log = log
        self.stats = stats
        #: Called after a batch failed for another reason than the journal (the tracker
        #: may have seen events that were rolled back).
        self.on_failure = on_failure
        #: Mode and group of ``new/`` and ``tmp/`` when they have to be made again.
        self.folder_mode = 0o750
        self.gid = -1
        self.skip: set[str] = set()
        self.last_config_problem: dict[str, Any] | None = None
        self.unread: dict[str, Any] | None = None
        self._unread_checked = -UNREAD_EVERY
        self._last_failure = ("", 0.0)
        for key in ("spool_bad", "spool_recovered", "spool_scan_errors",
                    "hook_config_problems"):
            stats.setdefault(key, 0)

    def report(self) -> dict[str, Any]:
        """What ``status`` shows about the spool beyond the counters."""
        return {"last_config_problem": self.last_config_problem, "unread": self.unread}

    # -- one replay ------------------------------------------------------------------

    def run(self, busy: Callable[[], bool]) -> int:
        """Journal what waits in the spool, oldest first; files are removed only after
        the commit. Stops early when ``busy()`` or the journal fails (files stay).
        Never raises: a scan that fails is logged (once per reason a minute) and counted."""
        total = 0
        try:
            self._check_unread()
            self._recover_tmp()
            while not busy():
                done, more = self._batch()
                total += done
                if not more:
                    break
        except JournalError:
            pass  # the files stay; ingest said so loudly, retried on the next scan
        except Exception as exc:  # a boundary: the spool loop and start-up go on
            self._failed(exc)
        self.stats["spool_replayed"] = self.stats.get("spool_replayed", 0) + total
        return total

    def _batch(self) -> tuple[int, bool]:
        """One batch: (events journaled, whether a full batch was read)."""
        fd = self._open("new")
        if fd is None:
            return 0, False
        try:
            names = spool.names(fd, self.skip)[:MAX_BATCH]
            good: list[tuple[str, Event]] = []
            now = time.time_ns()
            for name in names:
                ev = self._load(fd, name, now)
                if ev is not None:
                    good.append((name, ev))
            done = self._ingest(fd, good)
            for name in done:
                try:
                    os.unlink(name, dir_fd=fd)
                except FileNotFoundError:
                    pass
            by_name = dict(good)
            for name in done:
                problem = by_name[name].extra.get("config_problem")
                if problem:
                    self.config_problem(by_name[name], str(problem))
            return len(done), len(names) == MAX_BATCH and len(done) == len(good)
        finally:
            os.close(fd)

    def _load(self, fd: int, name: str, now: int, where: str = "new") -> Event | None:
        """The event in ``name``, or None (it vanished, or it was bad and set aside)."""
        try:
            content = spool.read_file(name, self.max_bytes, dir_fd=fd)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno in _OURS:
                raise
            self._bad(fd, name, f"cannot be read: {exc.strerror or exc}", where)
            return None
        except BadFile as exc:
            self._bad(fd, name, str(exc), where)
            return None
        try:
            ev = decode_event(loads(content), now)
        except Exception as exc:  # not JSON, nested beyond the parser, not an event...
            self._bad(fd, name, _reason(exc), where)
            return None
        ev.extra = {**ev.extra, "via": "spool"}
        return ev

    def _ingest(self, fd: int, good: list[tuple[str, Event]]) -> list[str]:
        """Journal ``good``; the names whose events are committed.

        A batch that fails for another reason than the journal is tried event by event,
        so that the one the journal refuses is set aside and the others go in.
        JournalError propagates: nothing more can be journaled now.
        """
        if not good:
            return []
        try:
            self.ingest([ev for _, ev in good])
            return [name for name, _ in good]
        except JournalError:
            raise
        except Exception:
            self.on_failure()
        done: list[str] = []
        for name, ev in good:
            try:
                self.ingest([ev])
            except JournalError:
                if done:
                    return done
                raise
            except Exception as exc:
                self.on_failure()
                self._bad(fd, name, f"the router could not journal it: {_reason(exc)}")
                continue
            done.append(name)
        return done

    # -- files that are not events -----------------------------------------------------

    def _bad(self, fd: int, name: str, reason: str, where: str = "new") -> None:
        self.stats["spool_bad"] += 1
        path = os.path.join(self.spool_dir, where, name)
        try:
            moved = spool.quarantine(self.spool_dir, fd, name)
        except OSError as exc:
            if len(self.skip) < MAX_SKIPPED:
                self.skip.add(name)
            moved = f"left in place ({exc.strerror or exc}); skipped until the router restarts"
        self.log.error("spool.bad_file", path=path, reason=reason, moved_to=moved)

    def _open(self, sub: str) -> int | None:
        """``SPOOL/sub`` opened without following links; None if there is none. Anything
        else in its place is moved aside (and logged) and a real folder made."""
        try:
            return spool.open_folder(self.spool_dir, sub)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                raise
        self.repair(sub)
        return spool.open_folder(self.spool_dir, sub)

    def repair(self, sub: str) -> None:
        """Make ``SPOOL/sub`` a real folder; say so if something else was there."""
        found = spool.repair(self.spool_dir, sub, 0o700 if sub == "bad" else self.folder_mode,
                             -1 if sub == "bad" else self.gid)
        if found:
            self.stats["spool_bad"] += 1
            self.log.error("spool.not_a_folder", path=os.path.join(self.spool_dir, sub),
                           found=found, detail="replaced by a real folder; nothing in a link "
                           "is read or moved")

    def _recover_tmp(self) -> None:
        """What a writer left in ``tmp/`` when it died before its rename."""
        tmp_fd = self._open("tmp")  # (a link or a file in its place is moved aside)
        if tmp_fd is None:
            return
        os.close(tmp_fd)
        new_fd = self._open("new")
        if new_fd is None:
            self.repair("new")
        else:
            os.close(new_fd)
        self.stats["spool_recovered"] += recover_tmp(
            self.spool_dir, self.max_bytes, self.log,
            lambda fd, name, reason: self._bad(fd, name, reason, "tmp"))

    # -- what the operator must hear about -------------------------------------------------

    def config_problem(self, ev: Event, problem: str, live: bool = False) -> None:
        """An event whose hook could not read the config it was given (finding 15):
        replayed from this spool, or (``live``) acked straight from the hook."""
        self.stats["hook_config_problems"] += 1
        spool = None if live else self.spool_dir
        self.last_config_problem = {"host": ev.host, "event_id": ev.id, "problem": problem,
                                    "spool": spool, "at_ns": time.time_ns()}
        self.log.warning("hook.config_problem" if live else "spool.config_problem",
                         host=ev.host, event_id=ev.id, problem=problem[:500], spool=spool,
                         hint="the hook could not read the config it was given and used the "
                         "default folders; fix the -c path where keepalived runs it")

    def _check_unread(self) -> None:
        """Events in the default spool, which this router does not read: where a hook
        given a config path that does not exist puts them (finding 15)."""
        now = time.monotonic()
        if now - self._unread_checked < UNREAD_EVERY:
            return
        self._unread_checked = now
        default = os.path.join(paths.state_dir(), "spool")
        if os.path.realpath(default) == os.path.realpath(self.spool_dir):
            return
        count = spool.depth(default)
        before = self.unread["events"] if self.unread else 0
        self.unread = {"spool": default, "events": count} if count else None
        if count > before:
            self.log.warning("spool.unread", spool=default, events=count,
                             reason="events wait in the default spool, which this router "
                             "does not read: a hook given a config path that does not "
                             "exist spools there", hint=f"knotify send them or move them "
                             f"to {os.path.join(self.spool_dir, 'new')}")

    def _failed(self, exc: BaseException) -> None:
        self.stats["spool_scan_errors"] += 1
        text = _reason(exc)
        last, when = self._last_failure
        now = time.monotonic()
        if text != last or now - when > 60:
            self._last_failure = (text, now)
            self.log.warning("spool.scan_failed", error=text,
                             detail="the spool is scanned again at the next interval")


def recover_tmp(folder: str, max_bytes: int, log: Any,
                bad: Callable[[int, str, str], None]) -> int:
    """Events a writer left in ``FOLDER/tmp`` when it died between its fsync and its
    rename (files older than :data:`knotify.spool.TMP_GRACE`): a complete one is moved to
    ``FOLDER/new`` (how many is returned), an empty one removed, anything else given to
    ``bad(tmp_fd, name, reason)``. Younger files are left to their writer."""
    try:
        tmp_fd = spool.open_folder(folder, "tmp")
    except FileNotFoundError:
        return 0
    try:
        stale = spool.stale_tmp(folder, tmp_fd)
        if not stale:
            return 0
        new_fd = spool.open_folder(folder, "new")
        try:
            return sum(_recover(folder, tmp_fd, new_fd, name, max_bytes, log, bad)
                       for name in stale)
        finally:
            os.close(new_fd)
    finally:
        os.close(tmp_fd)


def _recover(folder: str, tmp_fd: int, new_fd: int, name: str, max_bytes: int, log: Any,
             bad: Callable[[int, str, str], None]) -> int:
    path = os.path.join(folder, "tmp", name)
    try:
        content = spool.read_file(name, max_bytes, dir_fd=tmp_fd)
    except FileNotFoundError:
        return 0
    except OSError as exc:
        if exc.errno in _OURS:
            raise
        bad(tmp_fd, name, f"cannot be read: {exc.strerror or exc}")
        return 0
    except BadFile as exc:
        bad(tmp_fd, name, str(exc))
        return 0
    if not content.strip():
        os.unlink(name, dir_fd=tmp_fd)
        log.warning("spool.tmp_removed", path=path,
                    reason="empty: its writer died before writing the event")
        return 0
    try:
        ev = decode_event(loads(content))
    except Exception as exc:
        bad(tmp_fd, name, "an incomplete event left by a writer that died: " + _reason(exc))
        return 0
    try:
        os.rename(name, name, src_dir_fd=tmp_fd, dst_dir_fd=new_fd)
    except FileNotFoundError:
        return 0  # its writer (or another reader) moved it after all
    os.fsync(new_fd)
    log.warning("spool.tmp_recovered", path=path, event_id=ev.id,
                reason="its writer died between writing it and moving it to new/; "
                "replayed now")
    return 1
