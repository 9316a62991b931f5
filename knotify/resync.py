"""Re-learn keepalived's instance states from its JSON dump.

keepalived re-announces nothing after a reload (and even with
``fifo_write_vrrp_states_on_reload`` not its MASTER instances), and FIFO lines
still in the pipe are lost when keepalived stops while no one reads. After a
FIFO is (re)opened, knotify asks keepalived for its state (the JSON dump signal,
``keepalived --signum=JSON``; Debian's build has ``--enable-json``) and reports
each instance as an event with source ``resync``. The router classifies them
like any report: an unchanged state is a repeat; a state it missed is a transition.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from typing import Any

from knotify import keepalived
from knotify.errors import ParseError, ResyncError
from knotify.stamp import boot_clock, stamp
from knotify.vocab import BACKUP, DELETED, FAULT, INSTANCE, MASTER, STOP

JSON_FILE = "/tmp/keepalived.json"
# vrrp.h (keepalived 2.2.7): INIT 0, BACK 1, MAST 2, FAULT 3, DELETED 97, STOP 98.
STATES = {1: BACKUP, 2: MASTER, 3: FAULT, 97: DELETED, 98: STOP}


def dump_path() -> str:
    """Where our parent keepalived writes its dump: keepalived 2.2.7 writes
    ``$TMPDIR/keepalived.json`` (``/tmp`` without TMPDIR), and its scripts share its
    environment."""
    return os.path.join(os.environ.get("TMPDIR") or "/tmp", "keepalived.json")


_signum: int | None = None



def json_signal() -> int:
    """The signal keepalived dumps JSON on (it varies by build); asked once."""
    global _signum
    if _signum is None:
        try:
            out = subprocess.run(["keepalived", "--signum=JSON"], capture_output=True,
                                 text=True, timeout=5, env={"PATH": "/usr/sbin:/usr/bin:/sbin"})
            _signum = int(out.stdout.strip())
        except (OSError, ValueError, subprocess.SubprocessError):
            _signum = signal.SIGRTMIN + 2
    return _signum


def is_keepalived(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/comm") as fh:
            return fh.read().strip() == "keepalived"
    except OSError:
        return False


def read_pidfile(path: str) -> int:
    try:
        with open(path) as fh:
            return int(fh.read().split()[0])
    except (OSError, ValueError, IndexError) as exc:
        raise ResyncError(f"cannot read keepalived's pid from {path}: {exc}") from None


def parse_dump(data: Any) -> list[dict[str, Any]]:
    """(name, state, prio, last_transition) of each instance in a keepalived JSON dump."""
    if not isinstance(data, list):
        raise ResyncError("keepalived's JSON dump is not a list of instances")
    out = []
    for item in data:
        inst = item.get("data") if isinstance(item, dict) else None
        if not isinstance(inst, dict) or not isinstance(inst.get("iname"), str):
            continue
        state = STATES.get(inst.get("state"))  # type: ignore[arg-type]
        if state is None:
            continue  # INIT: nothing to say yet
        prio = inst.get("effective_priority")
        out.append({
            "name": inst["iname"],
            "state": state,
            "prio": prio if isinstance(prio, int) and 0 <= prio <= 255 else None,
            "last_transition": inst.get("last_transition"),
        })
    return out


def snapshot(pid: int, json_file: str = JSON_FILE, timeout: float = 3.0) -> list[dict[str, Any]]:
    """Signal keepalived ``pid`` to dump its state and read the dump (blocking, bounded)."""
    if not is_keepalived(pid):
        raise ResyncError(f"pid {pid} is not keepalived")
    before = 0
    with contextlib.suppress(OSError):
        before = os.stat(json_file).st_mtime_ns
    try:
        os.kill(pid, json_signal())
    except OSError as exc:
        raise ResyncError(f"cannot signal keepalived (pid {pid}): {exc.strerror}") from None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.05)
        try:
            st = os.stat(json_file)
        except OSError:
            continue
        if st.st_mtime_ns == before:
            continue
        try:
            with open(json_file) as fh:
                return parse_dump(json.load(fh))
        except ValueError:
            continue  # still being written
        except OSError as exc:
            raise ResyncError(f"cannot read {json_file}: {exc.strerror}") from None
    raise ResyncError(f"keepalived (pid {pid}) wrote no JSON dump to {json_file} "
                      f"within {timeout:g}s (is it built with --enable-json?)")


def overtaken(window: list[str], this_open: list[str]) -> set[str]:
    """Instance names a snapshot must not report: the FIFO has the truer word on them.

    ``window`` holds the FIFO lines read while the dump was asked for and read: each
    may have been written before the dump or after it, so the FIFO's own, ordered,
    lines win for those instances. ``this_open`` holds every line read since the FIFO
    was opened: an instance that said STOP (or DELETED) there is going away, and a dump
    keepalived writes while it shuts down can still call it MASTER.
    """
    names: set[str] = set()
    for line, gone_only in [(ln, False) for ln in window] + [(ln, True) for ln in this_open]:
        try:
            fields = keepalived.parse_fifo_line(line)
        except ParseError:
            continue
        if fields.get("kind") != INSTANCE:
            continue
        if not gone_only or fields.get("state") in (STOP, DELETED):
            names.add(str(fields["name"]))
    return names


def wire_events(instances: list[dict[str, Any]], host: str, next_seq: Callable[[], int],
                new_id: Callable[[], str] | None = None) -> list[dict[str, object]]:
    """Wire events for a snapshot, stamped as every sender stamps (:func:`knotify.stamp.stamp`)
    with sequence numbers from ``next_seq`` (and ids from ``new_id``, by default fresh ones)."""
    now = time.time_ns()
    mono = boot_clock()
    events: list[dict[str, object]] = []
    for inst in instances:
        extra = {}
        if isinstance(inst.get("last_transition"), int | float):
            extra["keepalived_since_ns"] = int(inst["last_transition"] * 1e9)
        fields: dict[str, object] = {
            "kind": INSTANCE, "name": inst["name"], "state": inst["state"],
            "prio": inst["prio"], "vs": "", "form": "resync", "extra": extra}
        events.append(stamp(fields, "resync", host, next_seq(), now, mono,
                            None if new_id is None else new_id()))
    return events
