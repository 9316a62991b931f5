"""One stamp for every event knotify sends: the hook, the FIFO readers, resync, ``knotify send``.

Parsing (:mod:`knotify.keepalived`) gives an event's fields: kind, name, state, ... Stamping
makes them a complete wire event: the wire version, a unique id, the reporting host and
its sequence number, the wall time, the source, and when it happened on this host's boot
clock (with the boot's id, since that clock means something within one boot only). The
router orders one host's reports by that clock, so every sender must stamp alike.

On the hook's path: standard library only, nothing heavy.
"""

from __future__ import annotations

import os
import time

from knotify.vocab import INVALID
from knotify.wire import WIRE_VERSION


def new_id() -> str:
    """A fresh event id: 128 random bits as 32 hex digits (the router dedupes by it)."""
    return os.urandom(16).hex()


_boot_id = ""


def boot_id() -> str:
    """This boot's id: a CLOCK_BOOTTIME value only means something within one boot."""
    global _boot_id
    if not _boot_id:
        try:
            with open("/proc/sys/kernel/random/boot_id") as fh:
                _boot_id = fh.read().strip()[:36]
        except OSError:
            _boot_id = "?"
    return _boot_id


def boot_clock() -> int:
    """Now on this host's boot clock (CLOCK_BOOTTIME, ns): what a FIFO line is stamped with."""
    return time.clock_gettime_ns(time.CLOCK_BOOTTIME)


def fork_clock() -> int:
    """When this process was forked, in CLOCK_BOOTTIME ns (10 ms steps); 0 if unknown.

    keepalived forks a change's hooks in order, but they may run late and in any order;
    the fork time (with the pid within one clock tick) is what orders them.
    """
    try:
        with open("/proc/self/stat", "rb") as fh:
            data = fh.read()
        start_ticks = int(data[data.rindex(b")") + 2 :].split()[19])
        return start_ticks * 1_000_000_000 // os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0


def invalid(form: str, error: str) -> dict[str, object]:
    """The fields of an event made from input that could not be read (kept, as INVALID)."""
    return {"kind": INVALID, "name": "", "state": INVALID, "prio": None, "vs": "",
            "form": form, "error": error}


def stamp(
    fields: dict[str, object], source: str, host: str, seq: int,
    ts_ns: int | None = None, mono_ns: int | None = None, ident: str | None = None,
) -> dict[str, object]:
    """A complete wire event: ``fields`` plus version, id, host, sequence, times and source.

    ``ts_ns`` is the wall time it was seen (default now). ``mono_ns`` is when it happened
    on the boot clock; by default this process's fork time with its pid, for senders that
    are one process per event (a hook, ``knotify send``), since keepalived may run those
    late and in any order. ``ident`` replaces the fresh random id.
    """
    event: dict[str, object] = {
        "v": WIRE_VERSION,
        "id": new_id() if ident is None else ident,
        "host": host,
        "seq": seq,
        "ts_ns": time.time_ns() if ts_ns is None else ts_ns,
        "source": source,
        "mono_ns": fork_clock() if mono_ns is None else mono_ns,
        "boot": boot_id(),
    }
    if mono_ns is None:
        event["pid"] = os.getpid()
    event.update(fields)
    return event
