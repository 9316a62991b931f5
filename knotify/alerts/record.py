"""What every sender writes, apprise's (:mod:`.sender`) and Alertmanager's
(:mod:`.alertmanager`): the result file of an attempt (:class:`Result`; its records
are described in :mod:`.sender`), who wrote it (:func:`start_ticks`, with the pid),
and how long a ``Retry-After`` header asks to wait (:func:`parse_retry_after`)."""

from __future__ import annotations

import email.utils
import json
import os
import time
from typing import Any

#: Longest Retry-After taken literally (a week); longer values are cut to this.
MAX_RETRY_AFTER = 7 * 86400.0


class Result:
    """The result file of one attempt, appended line by line."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    @classmethod
    def create(cls, path: str) -> Result:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC | os.O_NOFOLLOW,
                     0o600)
        os.fchmod(fd, 0o600)  # whatever the umask: it names receivers and errors
        return cls(fd)

    def write(self, record: dict[str, Any]) -> None:
        os.write(self.fd, (json.dumps(record, ensure_ascii=True) + "\n").encode())


def start_ticks(pid: int | str = "self") -> int | None:
    """When process ``pid`` started (clock ticks since boot): with the pid, who it is."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return int(fh.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds a ``Retry-After`` header asks for (delta-seconds or an HTTP date), or None."""
    if value is None:
        return None
    text = value.strip()
    if text.isdigit():
        return min(float(text), MAX_RETRY_AFTER)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    now = time.time() if now is None else now
    return min(max(0.0, when.timestamp() - now), MAX_RETRY_AFTER)
