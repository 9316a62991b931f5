"""What the router asks of the machine before it serves: folders, locks, owners, limits.

:class:`Runtime` takes the runtime folder (``router.lock`` refuses a second router on
it), makes the state and spool folders with the configured group, and locks the journal
(``JOURNAL.lock`` refuses a second router on the same journal from another runtime
folder). :func:`raise_nofile` and :func:`tune_runtime` set the process up for many
connections and many small events.
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import grp
import os
import resource
import stat
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from knotify import spool
from knotify.errors import RouterError
from knotify.store.db import corrupt

if TYPE_CHECKING:
    from knotify.config import Config
    from knotify.replay import SpoolReplay

#: The soft limit on open files is raised to the hard one; to this when that is unlimited.
NOFILE_CAP = 1 << 20
GC_THRESHOLD = 20_000


def tune_runtime() -> None:
    """Fewer cyclic garbage collections, for a process that handles thousands of small
    events a second: at the default threshold (700) they took ~12% of the router's time
    at full intake; what start-up loaded is frozen out of them."""
    # Kept: without it the router spends 1.15x the CPU per event (bench/README.md).
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, 20, 20)


def raise_nofile() -> int:
    """Raise the soft limit on open files to the hard one; the limit now in force.

    systemd starts services with a soft limit of 1024: every TCP connection, spool scan
    and action pipe takes a descriptor, and idle connections could use them all up.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else max(soft, NOFILE_CAP)
    if soft != resource.RLIM_INFINITY and soft < want:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
    return soft


@dataclass(slots=True, frozen=True)
class Folders:
    """Where the router keeps its files (all fixed until a restart)."""

    runtime_dir: str
    state_dir: str
    spool_dir: str
    journal: str
    group: str | None

    @classmethod
    def of(cls, config: Config) -> Folders:
        return cls(config.runtime_dir, config.state_dir, config.hook.spool_dir,
                   config.journal, config.group)


def journal_refusal(path: str, exc: BaseException) -> RouterError:
    """Why the journal at ``path`` cannot be used, in one line saying what to do."""
    if corrupt(exc):
        return RouterError(
            f"the journal {path} is corrupt ({exc}): stop anything using it, move it "
            f"aside with its -wal and -shm files (mv {path} {path}.corrupt) and start "
            f"again for a new, empty journal; `sqlite3 {path}.corrupt .recover` may "
            "save its events")
    return RouterError(f"cannot open the journal {path}: {exc}")


class Runtime:
    """The router's folders and locks, held for its life."""

    def __init__(self, folders: Folders, log: Any) -> None:
        self.folders = folders
        self.log = log
        self._lock_fd: int | None = None
        self._journal_lock_fd: int | None = None

    def gid(self) -> int:
        group = self.folders.group
        return grp.getgrnam(group).gr_gid if group else -1

    def own(self, path: str, mode: int) -> None:
        """Set mode (and the configured group) on a path this process owns."""
        st = os.stat(path)
        if st.st_uid != os.geteuid():
            return
        gid = self.gid()
        if gid >= 0 and st.st_gid != gid:
            os.chown(path, -1, gid)
        os.chmod(path, mode)

    def take(self, replay: SpoolReplay) -> None:
        """Make and lock the runtime folder; make the state and spool folders (and
        ``replay``'s sub-folders) with the configured group; RouterError if it fails."""
        f = self.folders
        try:
            os.makedirs(f.runtime_dir, mode=0o750, exist_ok=True)
            self.own(f.runtime_dir, 0o750)
            self._lock_fd = self.lock(os.path.join(f.runtime_dir, "router.lock"), 0o640, (
                "another knotify router (pid {pid}) is running on " + f.runtime_dir + "; "
                "refusing to take over its socket (stop it first, or give this one another "
                "runtime_dir)"))
            # The hook may run as another user (keepalived_script): with a group set, the
            # spool is writable by that group and the socket connectable by it. Whatever
            # that group left in the spool is never followed (spool.repair, O_NOFOLLOW).
            os.makedirs(f.state_dir, mode=0o750, exist_ok=True)
            os.makedirs(f.spool_dir, mode=0o750, exist_ok=True)
            if f.group:
                self.own(f.state_dir, 0o750)
                self.own(f.spool_dir, 0o2770)
                replay.folder_mode, replay.gid = 0o2770, self.gid()
                self._own_seq(f.spool_dir)
            for sub in ("tmp", "new", "bad"):
                replay.repair(sub)
        except OSError as exc:
            where = f" {exc.filename}" if exc.filename else ""
            raise RouterError(f"cannot prepare the runtime and state folders:{where}: "
                              f"{exc.strerror or exc}") from None

    def lock_journal(self) -> tuple[int, int]:
        """Lock the journal for the router's life, or RouterError naming the holder.

        A second router on the same journal, from another runtime_dir, is refused. The
        journal and its -wal/-shm files are 0600 (0640 with ``[paths] group``) whatever
        the umask, and in the router's own group: never readable by the hooks' group.
        Returns the (mode, gid) the journal's files get.
        """
        path = self.folders.journal
        gid = os.getegid()
        mode = 0o640 if self.folders.group else 0o600
        try:
            os.makedirs(os.path.dirname(path) or ".", mode=0o750, exist_ok=True)
            self._journal_lock_fd = self.lock(path + ".lock", mode, (
                "another knotify router (pid {pid}, runtime_dir {holder}) holds the journal "
                + path + "; refusing to start a second router on it (stop that one first, "
                "or give this one its own state_dir or [router] journal)"), gid)
        except OSError as exc:
            raise RouterError(f"cannot lock the journal {path}: {exc.strerror or exc}; "
                              "check the folder and its permissions") from None
        return mode, gid

    def lock(self, path: str, mode: int, refusal: str, gid: int = -1) -> int:
        """Hold an exclusive lock on ``path`` for the router's life, or RouterError with
        ``refusal`` (``{pid}``, ``{holder}``: what the holder wrote in it)."""
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            words = os.pread(fd, 4096, 0).decode(errors="replace").split("\n")
            os.close(fd)
            raise RouterError(refusal.format(pid=words[0].strip() or "?",
                                             holder=words[1].strip() if len(words) > 1
                                             else "?")) from None
        st = os.fstat(fd)
        if gid >= 0 and st.st_gid != gid:
            os.fchown(fd, -1, gid)
        if st.st_mode & 0o7777 != mode:
            os.fchmod(fd, mode)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n{self.folders.runtime_dir}\n".encode())
        return fd

    def _own_seq(self, spool_dir: str) -> None:
        """The sequence counter, shared with the hook's group; a link or another kind of
        file in its place is moved aside, never followed."""
        seq = os.path.join(spool_dir, spool.SEQ_FILE)
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        try:
            fd = os.open(seq, flags, 0o660)
        except OSError:
            fd = -1
        if fd >= 0:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
                os.close(fd)
                fd = -1
        if fd < 0:
            found = spool.what_is(os.lstat(seq).st_mode)
            aside = f"{seq}.not-a-file.{time.time_ns()}"
            os.rename(seq, aside)
            self.log.error("spool.seq_replaced", path=seq, found=found, moved_to=aside,
                           detail="a new counter is started; nothing in a link is written")
            fd = os.open(seq, flags | os.O_EXCL, 0o660)
        try:
            if os.fstat(fd).st_uid == os.geteuid():
                os.fchown(fd, -1, self.gid())
                os.fchmod(fd, 0o660)
        finally:
            os.close(fd)

    def release(self) -> None:
        """Let go of both locks (the journal is closed by then)."""
        for fd in (self._lock_fd, self._journal_lock_fd):
            if fd is not None:
                os.close(fd)
        self._lock_fd = self._journal_lock_fd = None
