"""The on-disk spool: where events wait when the router does not answer in time.

Layout (maildir-like, so a reader never sees half a file)::

    SPOOL/seq          the per-host sequence counter (8 bytes, under flock)
    SPOOL/tmp/NAME     being written
    SPOOL/new/NAME     complete; NAME = <seq, 20 digits>-<id>.json, so sorting is ordering
    SPOOL/to/ENDPOINT/{tmp,new}/NAME   the same, for one remote router that missed
                       events another router got (:func:`outboxes`; knotify agent drains)

Writing uses the standard library only (the hook imports this module).
"""

from __future__ import annotations

import fcntl
import os

from knotify import fastjson

TYPE_CHECKING = False

if TYPE_CHECKING:
    from collections.abc import Iterator

SEQ_FILE = "seq"


def _ensure(path: str, mode: int | None = None) -> None:
    """Make ``path`` if missing, with the parent's permissions (not the umask's).

    keepalived runs scripts with umask 0177; a folder the hook creates must still be
    usable by the hook next time, and by the router, which may run as another user.
    """
    if os.path.isdir(path):
        return
    parent = os.path.dirname(path.rstrip("/")) or "."
    _ensure(parent, mode)
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

    Returns 0 when the counter cannot be used (no permission, read-only disk);
    0 means "unknown" and is never used to order events.
    """
    try:
        _ensure(spool_dir, 0o750)
        path = os.path.join(spool_dir, SEQ_FILE)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o660)
    except OSError:
        return 0
    try:
        st = os.fstat(fd)
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


def write(spool_dir: str, event: dict[str, object]) -> str:
    """Store one event durably and atomically; returns the final path."""
    tmp_dir = os.path.join(spool_dir, "tmp")
    new_dir = os.path.join(spool_dir, "new")
    _ensure(tmp_dir)
    _ensure(new_dir)
    name = file_name(event)
    tmp = os.path.join(tmp_dir, name)
    data = fastjson.dumps(event).encode()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    final = os.path.join(new_dir, name)
    os.rename(tmp, final)
    dfd = os.open(new_dir, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    return final


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


def pending(spool_dir: str, limit: int = 10_000) -> list[str]:
    """Paths of spooled events, oldest first, at most ``limit``."""
    new_dir = os.path.join(spool_dir, "new")
    try:
        names = [n for n in os.listdir(new_dir) if n.endswith(".json")]
    except FileNotFoundError:
        return []
    names.sort()
    return [os.path.join(new_dir, n) for n in names[:limit]]


def depth(spool_dir: str) -> int:
    try:
        return sum(1 for n in os.listdir(os.path.join(spool_dir, "new")) if n.endswith(".json"))
    except FileNotFoundError:
        return 0


def read(paths: list[str]) -> Iterator[tuple[str, bytes]]:
    """(path, content) for each readable file; vanished files are skipped."""
    for path in paths:
        try:
            with open(path, "rb") as fh:
                yield path, fh.read()
        except FileNotFoundError:
            continue


def remove(paths: list[str]) -> None:
    for path in paths:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
