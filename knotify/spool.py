"""The on-disk spool: where events wait when the router does not answer in time.

Layout (maildir-like, so a reader never sees half a file)::

    SPOOL/seq          the per-host sequence counter (8 bytes, under flock)
    SPOOL/tmp/NAME     being written
    SPOOL/new/NAME     complete; NAME = <seq, 20 digits>-<id>.json, so sorting is ordering
    SPOOL/to/ENDPOINT/{tmp,new}/NAME   the same, for one remote router that missed
                       events another router got (:func:`outboxes`; knotify agent drains)

Writing uses the standard library only (the hook imports this module).

With ``[paths] group`` the spool is writable by the hook's (unprivileged) group, so
whatever is found there is treated as hostile by the reading side: folders are opened
without following links, only regular files are read (never a FIFO, a device, a folder
or a link), at most ``max_bytes`` of them, and whatever else sits there is moved to
``SPOOL/bad/`` (:func:`quarantine`) for the operator to look at.
"""

from __future__ import annotations

import fcntl
import os
import stat
import time

from knotify import fastjson
from knotify.errors import BadFile

TYPE_CHECKING = False

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

SEQ_FILE = "seq"
#: A file older than this in ``tmp/`` was left by a writer that died before its rename.
TMP_GRACE = 60.0
#: Subfolders opened by name must really be folders: a link there leads nowhere.
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
#: Never follow a link, never block on a FIFO or a device.
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC



def what_is(mode: int) -> str:
    """What a non-regular file is, in words (for the log)."""
    for test, word in ((stat.S_ISDIR, "a folder"), (stat.S_ISLNK, "a symbolic link"),
                       (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")):
        if test(mode):
            return word
    return "not a regular file"


def ensure_folder(path: str, mode: int | None = None) -> None:
    """Make ``path`` if missing, with the parent's permissions (not the umask's).

    keepalived runs scripts with umask 0177; a folder the hook creates must still be
    usable by the hook next time, and by the router, which may run as another user.
    """
    if os.path.isdir(path):
        return
    parent = os.path.dirname(path.rstrip("/")) or "."
    ensure_folder(parent, mode)
    try:
        os.mkdir(path)
    except FileExistsError:
        return
    want = mode if mode is not None else (os.stat(parent).st_mode & 0o7777)
    try:
        os.chmod(path, want | 0o700)
    except OSError:
        pass


def next_seq(spool_dir: str) -> int:
    """The next per-host sequence number: it only grows, even across racing processes.

    Returns 0 when the counter cannot be used (no permission, read-only disk, or not a
    plain file of its own: a link or a hard link there is never written through);
    0 means "unknown" and is never used to order events.
    """
    try:
        ensure_folder(spool_dir, 0o750)
        path = os.path.join(spool_dir, SEQ_FILE)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK
                     | os.O_CLOEXEC, 0o660)
    except OSError:
        return 0
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
            return 0
        if st.st_uid == os.geteuid() and st.st_mode & 0o660 != 0o660:
            os.fchmod(fd, 0o660)  # the umask (keepalived's is 0177) must not lock others out
        fcntl.flock(fd, fcntl.LOCK_EX)
        raw = os.pread(fd, 32, 0)
        try:
            value = int(raw.strip() or b"0") + 1
        except ValueError:
            value = 1
        data = b"%020d\n" % value
        os.pwrite(fd, data, 0)
        return value
    except OSError:
        return 0
    finally:
        os.close(fd)  # also releases the lock


def file_name(event: dict[str, object]) -> str:
    seq = event.get("seq")
    return f"{seq if isinstance(seq, int) else 0:020d}-{event['id']}.json"


def _open_sub(spool_dir: str, sub: str) -> int:
    """``SPOOL/sub`` opened as a folder without following a link; made if missing.

    Something else in its place (a link, a file) is moved aside first: the hook's group
    can rename entries of the spool, and a writer running as root must not write
    through a link it put there.
    """
    path = os.path.join(spool_dir, sub)
    ensure_folder(path)
    try:
        return os.open(path, _DIR_FLAGS)
    except OSError as exc:
        try:
            mode = os.lstat(path).st_mode
        except OSError:
            raise exc from None
        if stat.S_ISDIR(mode):
            raise
    os.rename(path, f"{path}.not-a-folder.{time.time_ns()}")
    ensure_folder(path)
    return os.open(path, _DIR_FLAGS)


def write(spool_dir: str, event: dict[str, object]) -> str:
    """Store one event durably and atomically; returns the final path."""
    tmp_fd = _open_sub(spool_dir, "tmp")
    try:
        new_fd = _open_sub(spool_dir, "new")
        try:
            name = file_name(event)
            data = memoryview(fastjson.dumps(event).encode())
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o640, dir_fd=tmp_fd)
            try:
                while data:
                    data = data[os.write(fd, data):]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(name, name, src_dir_fd=tmp_fd, dst_dir_fd=new_fd)
            os.fsync(new_fd)
        finally:
            os.close(new_fd)
    finally:
        os.close(tmp_fd)
    return os.path.join(spool_dir, "new", name)


def endpoint_dir(spool_dir: str, endpoint: str) -> str:
    """The outbox of one remote router: ``SPOOL/to/<endpoint, '/' and '%' escaped>``."""
    return os.path.join(spool_dir, "to", endpoint.replace("%", "%25").replace("/", "%2F"))


def outboxes(spool_dir: str, endpoints: list[str], missed: list[str]) -> list[str]:
    """Where an event goes that the ``missed`` routers (of ``endpoints``) did not ack.

    ``SPOOL`` itself is what a local router (an ``ipc://`` endpoint; any one of them is
    enough) replays, and, with only remote routers, what ``knotify agent`` sends to
    all of them. A remote (``tcp://``) router that missed an event another router got
    has its own outbox (:func:`endpoint_dir`), which the agent drains.
    """
    local = [e for e in endpoints if e.startswith("ipc://")]
    if len(endpoints) <= 1 or (not local and len(set(missed)) >= len(set(endpoints))):
        return [spool_dir]
    out = []
    if local and all(e in missed for e in local):
        out.append(spool_dir)
    for endpoint in dict.fromkeys(missed):
        if not endpoint.startswith("ipc://"):
            out.append(endpoint_dir(spool_dir, endpoint))
    return out


def pending(spool_dir: str, limit: int = 10_000, skip: set[str] | None = None) -> list[str]:
    """Paths of spooled events, oldest first, at most ``limit``; names in ``skip``
    (bad files that could not be moved away) are left out and not counted."""
    new_dir = os.path.join(spool_dir, "new")
    try:
        names = [n for n in os.listdir(new_dir) if n.endswith(".json")]
    except (FileNotFoundError, NotADirectoryError):
        return []
    if skip:
        names = [n for n in names if n not in skip]
    names.sort()
    return [os.path.join(new_dir, n) for n in names[:limit]]


def depth(spool_dir: str) -> int:
    try:
        return sum(1 for n in os.listdir(os.path.join(spool_dir, "new")) if n.endswith(".json"))
    except (FileNotFoundError, NotADirectoryError):
        return 0


def read_file(path: str, max_bytes: int, dir_fd: int | None = None) -> bytes:
    """The content of one spool file, read as hostile input; BadFile says why not.

    Only a regular file with one link is read: anything else is never even opened (a
    device could act on open), and the file is opened without following a link and
    without blocking, then checked again; it is read only if it holds at most
    ``max_bytes``. FileNotFoundError: it vanished (another reader took it). Other
    OSErrors (too many open files, I/O) are the reader's problem, not the file's.
    """
    first = os.stat(path, dir_fd=dir_fd, follow_symlinks=False)
    if not stat.S_ISREG(first.st_mode):
        raise BadFile(f"not a regular file ({what_is(first.st_mode)})")
    try:
        fd = os.open(path, _READ_FLAGS, dir_fd=dir_fd)
    except OSError:
        try:
            now = os.stat(path, dir_fd=dir_fd, follow_symlinks=False).st_mode
        except OSError:
            now = first.st_mode
        if not stat.S_ISREG(now):  # swapped for a link (or else) since the stat
            raise BadFile(f"not a regular file ({what_is(now)})") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) != (first.st_dev,
                                                                     first.st_ino):
            raise BadFile("replaced while it was read")
        if st.st_nlink != 1:
            raise BadFile(f"has {st.st_nlink} hard links (a spool file has one)")
        if st.st_size > max_bytes:
            raise BadFile(f"{st.st_size} bytes, over the {max_bytes}-byte limit")
        chunks: list[bytes] = []
        size = 0
        while chunk := os.read(fd, max_bytes + 1 - size):
            chunks.append(chunk)
            size += len(chunk)
            if size > max_bytes:
                raise BadFile(f"grew over the {max_bytes}-byte limit while read")
        return b"".join(chunks)
    finally:
        os.close(fd)


def read(paths: list[str], max_bytes: int = 1 << 20,
         on_bad: Callable[[str, str], None] | None = None) -> Iterator[tuple[str, bytes]]:
    """(path, content) for each readable file (:func:`read_file`); vanished files are
    skipped, and bad ones are given to ``on_bad(path, reason)`` (else skipped)."""
    for path in paths:
        try:
            content = read_file(path, max_bytes)
        except FileNotFoundError:
            continue
        except (BadFile, OSError) as exc:
            if on_bad is not None:
                on_bad(path, str(exc))
            continue
        yield path, content


def remove(paths: list[str]) -> None:
    for path in paths:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def repair(spool_dir: str, sub: str, mode: int, gid: int = -1) -> str | None:
    """Make ``SPOOL/sub`` a real folder with ``mode`` (and group ``gid``) if it is not.

    Something else in its place (a link, a file, a FIFO) is renamed to
    ``SUB.not-a-folder.NS``, never followed; returns a description of it then, else None.
    """
    path = os.path.join(spool_dir, sub)
    found = None
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        st = None
    if st is not None and not stat.S_ISDIR(st.st_mode):
        aside = f"{path}.not-a-folder.{time.time_ns()}"
        os.rename(path, aside)
        found = f"{what_is(st.st_mode)}, moved to {aside}"
        st = None
    if st is None:
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass
    fd = os.open(path, _DIR_FLAGS)
    try:
        st = os.fstat(fd)
        if st.st_uid == os.geteuid():
            if gid >= 0 and st.st_gid != gid:
                os.fchown(fd, -1, gid)
            if stat.S_IMODE(st.st_mode) != mode:
                os.fchmod(fd, mode)
    finally:
        os.close(fd)
    return found


def open_folder(spool_dir: str, sub: str) -> int:
    """``SPOOL/sub`` opened as a folder, never through a link (OSError otherwise)."""
    return os.open(os.path.join(spool_dir, sub), _DIR_FLAGS)


def names(dir_fd: int, skip: set[str] | None = None) -> list[str]:
    """The ``*.json`` names in an open folder, sorted (oldest first), minus ``skip``."""
    found = [n for n in os.listdir(dir_fd) if n.endswith(".json")]
    if skip:
        found = [n for n in found if n not in skip]
    found.sort()
    return found


def quarantine(spool_dir: str, dir_fd: int, name: str) -> str:
    """Move ``name`` (in the open folder ``dir_fd``) to ``SPOOL/bad/``, whatever it is,
    without following it; returns where it went. OSError if it cannot be moved."""
    repair(spool_dir, "bad", 0o700)
    bad_fd = open_folder(spool_dir, "bad")
    try:
        target = name
        try:
            os.stat(target, dir_fd=bad_fd, follow_symlinks=False)
            target = f"{name}.{time.time_ns()}"  # never replace an earlier one
        except FileNotFoundError:
            pass
        os.rename(name, target, src_dir_fd=dir_fd, dst_dir_fd=bad_fd)
    finally:
        os.close(bad_fd)
    return os.path.join(spool_dir, "bad", target)


def stale_tmp(spool_dir: str, tmp_fd: int, grace: float = TMP_GRACE,
              now: float | None = None) -> list[str]:
    """Names in ``SPOOL/tmp`` (open as ``tmp_fd``) last changed more than ``grace``
    seconds ago: left there by a writer killed before its rename, oldest name first."""
    limit = (time.time() if now is None else now) - grace
    out = []
    for name in sorted(os.listdir(tmp_fd)):
        try:
            st = os.stat(name, dir_fd=tmp_fd, follow_symlinks=False)
        except FileNotFoundError:
            continue
        if st.st_mtime < limit:
            out.append(name)
    return out
