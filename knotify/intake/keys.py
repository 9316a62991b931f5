"""What bounds the state table: ``max_keys``, forgetting DELETED keys, clocks ahead.

A hostile or broken sender must not grow the router's memory without end (a flood of new
names) nor pin a key's state in the future (a clock far ahead): :class:`KeyBounds` is
asked by the intake for every new key and every event dated ahead of the router.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from knotify.tracker import Tracker, Transition
from knotify.vocab import DELETED, KINDS, REFUSED

if TYPE_CHECKING:
    from knotify.event import Event
    from knotify.intake.settings import IntakeSettings
    from knotify.store.events import EventStore

#: Kinds whose keys count against max_keys (the router's own CLUSTER/PEER events do not).
KEYED_KINDS = frozenset(KINDS)
KEYS_FULL_LOG_EVERY = 60.0
#: How often keys DELETED for longer than [router] forget_deleted are looked for.
FORGET_EVERY = 60.0


class KeyBounds:
    """Keeps the state table within ``max_keys`` and the clocks it believes sane."""

    def __init__(self, settings: IntakeSettings, journal: EventStore,
                 tracker: Tracker, log: Any, stats: dict[str, int]) -> None:
        self.settings = settings
        self.journal = journal
        self.tracker = tracker
        self.log = log
        self.stats = stats
        #: Whether a key may be DELETED (looked for again only once one is reported).
        self.maybe_deleted = True
        self._full_logged = -KEYS_FULL_LOG_EVERY

    def clock_ahead(self, ev: Event, now_ns: int) -> None:
        """An event dated further ahead of the router's clock than ``max_clock_skew``
        (another boot's clock, a bad NTP step, a hostile sender): it is ordered as if it
        happened when it arrived, so it cannot make the key's later real events stale.
        What it said is kept in ``extra.clock`` and shows in history."""
        ahead_s = round((ev.ts_ns - now_ns) / 1e9, 3)
        ev.extra = {**ev.extra, "clock": {"reported_ts_ns": ev.ts_ns, "ahead_s": ahead_s,
                                          "ordered": "as received"}}
        self.log.warning("event.clock_ahead", event_id=ev.id, host=ev.host, kind=ev.kind,
                         name=ev.name, ahead_s=ahead_s,
                         max_clock_skew_s=self.settings.max_clock_skew,
                         detail="ordered as received (the router's clock)")
        ev.ts_ns = min(ev.recv_ns, now_ns) if ev.recv_ns else now_ns
        self.stats["clock_ahead"] += 1

    def make_room(self) -> bool:
        """At max_keys: forget the keys reported DELETED longest ago (a few at once), in
        the current transaction. Whether there is room now."""
        if not self.maybe_deleted:
            return False  # (none since the last look: a flood of new names costs nothing)
        deleted = sorted((ks.updated_ns, key) for key, ks in self.tracker.states.items()
                         if ks.state == DELETED)
        if not deleted:
            self.maybe_deleted = False
            return False
        keys = [key for _, key in deleted[:max(1, self.settings.max_keys // 100)]]
        self.forget(keys, "to make room under max_keys")
        return True

    def forget(self, keys: list[Any], why: str) -> None:
        self.tracker.forget(keys)
        self.journal.forget_states(keys)
        self.stats["keys_forgotten"] += len(keys)
        self.log.info("keys.forgotten", keys=len(keys), reason=why,
                      first=dict(zip(("host", "kind", "name", "vs"), keys[0], strict=True)))

    def forget_deleted(self) -> None:
        """Forget keys that have been DELETED for longer than [router] forget_deleted."""
        after = self.settings.forget_deleted
        cutoff = time.time_ns() - int(after * 1e9)
        old = [key for key, ks in self.tracker.states.items()
               if ks.state == DELETED and ks.updated_ns < cutoff]
        if old:
            with self.journal.transaction():
                self.forget(old, f"DELETED for longer than {after:g}s")

    def refuse(self, ev: Event) -> Transition:
        """A new key past max_keys: the event is journaled (not lost, not retried) as
        ``refused``, with the reason; it is not tracked and fires nothing."""
        limit = self.settings.max_keys
        ev.error = (f"not tracked: the router already tracks [router] max_keys = {limit} "
                    "keys and none is DELETED; raise max_keys, or report the keys that are "
                    "gone as DELETED")
        self.stats["keys_refused"] += 1
        now = time.monotonic()
        if now - self._full_logged > KEYS_FULL_LOG_EVERY:
            self._full_logged = now
            self.log.warning("keys.full", max_keys=limit, refused=self.stats["keys_refused"],
                             event_id=ev.id, host=ev.host, kind=ev.kind, name=ev.name,
                             detail="events of new keys are journaled as 'refused' and fire "
                             "nothing until there is room")
        return Transition(REFUSED, ev.state, "", None, 0)

    def unpin_states(self) -> None:
        """States a journal holds with a start far ahead of the router's clock (written
        before max_clock_skew, or with a larger one): brought back to now, so that their
        keys' real events are no longer stale."""
        now = time.time_ns()
        limit = now + int(self.settings.max_clock_skew * 1e9)
        pinned = [(key, ks) for key, ks in self.tracker.states.items()
                  if ks.since_ns > limit]
        if not pinned:
            return
        with self.journal.transaction():
            for key, ks in pinned:
                ks.since_ns = now
                ks.boot, ks.mono_ns, ks.pid = "", 0, 0
                self.journal.put_state(key, ks)
        self.log.warning("state.clock_ahead", keys=len(pinned),
                         first=dict(zip(("host", "kind", "name", "vs"), pinned[0][0],
                                        strict=True)),
                         detail="these states began after the router's clock plus "
                         "max_clock_skew; they now count from the router's start")
