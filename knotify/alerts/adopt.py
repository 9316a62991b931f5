"""At start: the attempts that were running when the router stopped are watched or settled.

A worker of the previous router still holding the attempt's result file is
finishing it: it is watched (and killed at the attempt's deadline), then its
outcome is read. Otherwise the file already says all that was done.
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any

from knotify.alerts import attempt
from knotify.alerts.attempts import Attempts
from knotify.alerts.core import Core
from knotify.alerts.settle import Ending, Settle
from knotify.store.outbox import AttemptRow


def adopt(core: Core, attempts: Attempts, settle: Settle) -> None:
    """Watch or settle every attempt the journal says is running."""
    for row in core.outbox.running_attempts():
        receiver = core.receivers.get(row.receiver)
        timeout = receiver.timeout if receiver is not None else core.settings.timeout
        deadline = row.started_ns + int((timeout + attempt.GRACE) * 1e9)
        path = row.result_path
        res = attempt.read_results(path)
        watch: Coroutine[Any, Any, tuple[bool, str]]
        if path and attempt.locked(path):
            watch = attempt.watch_locked(path, row.started_ns, timeout + attempt.GRACE,
                                         core.clock.time_ns)
        elif path and res.pid is not None and attempt.sender_alive(res.pid, path):
            watch = attempt.watch(res.pid, path, deadline, core.clock.time_ns)  # one-shot
        else:
            settle.now(Ending(row.rowid, row.message, row.receiver, path, False,
                              "the router stopped during this attempt", interrupted=True))
            continue
        message = core.outbox.message(row.message)
        core.log.info("alert.adopted", event_ids=message.event_ids if message else [],
                      message=row.message, receiver=row.receiver, pid=res.pid,
                      attempt=row.attempt)
        core.flights.working[row.message] = row.receiver
        attempts.track(row.message, row.receiver, _watch(core, settle, row, watch))


async def _watch(core: Core, settle: Settle, row: AttemptRow,
                 watch: Coroutine[Any, Any, tuple[bool, str]]) -> None:
    timed_out, note = await watch
    core.flights.working.pop(row.message, None)
    await settle.until_journaled(Ending(row.rowid, row.message, row.receiver, row.result_path,
                                        timed_out, note))
