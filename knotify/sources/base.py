"""The Source protocol and the one way in for what a source read (:class:`Inlet`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from knotify import spool
from knotify.errors import JournalError, WireError
from knotify.event import Event, decode_event
from knotify.vocab import INVALID

if TYPE_CHECKING:
    from knotify.supervisor import Faults


class Source(Protocol):
    """An input source: one loop the supervisor keeps running."""

    #: Its loop's name (in ``knotify status``, faults and the watchdog).
    name: str

    def quiet(self) -> float:
        """The longest the loop should go without a turn (seconds)."""
        ...

    async def run(self, beat: Callable[[], None]) -> None:
        """Read for ever, calling ``beat()`` at every turn."""
        ...


class Inlet:
    """Ingest or spool: the one way a source's events go in."""

    def __init__(self, ingest: Callable[[list[Event]], object], spool_dir: str,
                 faults: Faults, log: Any) -> None:
        self.ingest = ingest
        self.spool_dir = spool_dir
        self.faults = faults
        self.log = log

    def deliver(self, wire: list[dict[str, Any]], where: str) -> bool:
        """Journal ``wire`` (wire events a source stamped); spool them if that fails.
        Whether they were journaled now. Never raises."""
        try:
            self.ingest([decode(w) for w in wire])
            return True
        except Exception as exc:
            if not isinstance(exc, JournalError):
                self.faults.record(where, exc, events=len(wire))
            # Never drop what a source read: it waits in the spool until the journal is back.
            self.spool(wire, where)
            return False

    def spool(self, wire: list[dict[str, Any]], where: str) -> None:
        for w in wire:
            try:
                spool.write(self.spool_dir, w)
            except OSError as err:
                self.log.critical(f"{where}.event_lost", event_id=w.get("id"),
                                  raw=w.get("raw"), error=str(err))


def decode(w: dict[str, Any]) -> Event:
    """The event a source stamped; one the decoder refuses (a NUL in a name) is kept,
    as an INVALID event saying why."""
    try:
        return decode_event(w)
    except WireError as exc:
        return decode_event({**w, "kind": INVALID, "state": INVALID, "name": "", "vs": "",
                             "prio": None, "error": str(exc), "raw": w.get("raw")})
