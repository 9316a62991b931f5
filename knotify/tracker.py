"""Current state per (host, kind, name, vs), and what each new event means for it.

keepalived reports one change several times (``notify_master`` and the generic
``notify`` and the FIFO), reports news that is not a change (``MASTER_PRIORITY``),
and its scripts can arrive out of order. :meth:`Tracker.observe` sorts that out
into a :class:`Transition` whose ``cls`` rules match on.
"""

from __future__ import annotations

from dataclasses import dataclass

from knotify.event import Event, Key
from knotify.vocab import (
    BACKUP,
    BACKUP_PRIORITY,
    CONDITIONS,
    GROUP,
    INIT,
    INVALID,
    INVALID_CLASS,
    MASTER,
    MASTER_PRIORITY,
    NO_CONDITION,
    NOTICE,
    REPEAT,
    RX_LOWER_PRI,
    STALE,
    SYNTHETIC_KINDS,
    TRANSITION,
    UNKNOWN_STATE,
)

#: The state a FIFO-only report implies ({UNKNOWN} implies nothing).
EFFECTIVE = {
    MASTER_PRIORITY: MASTER,
    BACKUP_PRIORITY: BACKUP,
    RX_LOWER_PRI: MASTER,
    UNKNOWN_STATE: None,
}

@dataclass(slots=True)
class KeyState:
    state: str
    prio: int | None
    since_ns: int
    event_id: str
    seq: int
    epoch: int
    updated_ns: int
    #: Where the newest report applied so far sits on its host's clock (see :func:`order`).
    mono_ns: int = 0
    boot: str = ""
    pid: int = 0


#: A hook's fork time is known to one clock tick (10 ms): closer than that, fall back.
TICK_NS = 10_000_000
#: [router] max_clock_skew's default: how far a host's clocks may be off the router's.
DEFAULT_SKEW_NS = 300 * 10**9
#: A per-host sequence number that jumps further than this is not believed.
MAX_SEQ_JUMP = 2**32


def order(ev: Event, cur: KeyState) -> int:
    """-1 if ``ev`` happened before the report ``cur`` holds, 1 if after, 0 if unknown.

    Within one boot, the boot clock decides (a hook's fork time, a FIFO line's read
    time), then the pid for hooks forked within one tick, since keepalived forks a
    change's hooks in order; across boots the wall clock; last, the per-host sequence,
    which is taken when a hook *runs*, and a hook can run late.
    """
    if ev.boot and cur.boot:
        if ev.boot == cur.boot:
            if ev.mono_ns and cur.mono_ns:
                delta = ev.mono_ns - cur.mono_ns
                if delta < -TICK_NS:
                    return -1
                if delta > TICK_NS:
                    return 1
                if ev.pid and cur.pid and ev.pid != cur.pid:
                    return -1 if ev.pid < cur.pid else 1
        else:
            return -1 if ev.ts_ns < cur.since_ns else 1
    if ev.seq and cur.seq and ev.seq != cur.seq:
        return -1 if ev.seq < cur.seq else 1
    return 0


@dataclass(slots=True)
class Transition:
    """What one event meant: its class, the state it leads to, and where it came from."""

    cls: str
    state: str
    prev_state: str
    prev_since_ns: int | None
    epoch: int

    def duration_s(self, ts_ns: int) -> float | None:
        """How long the previous state lasted, up to this event."""
        if self.prev_since_ns is None:
            return None
        return max(0.0, (ts_ns - self.prev_since_ns) / 1e9)


class Tracker:
    """The state table. Pure bookkeeping: no I/O, so it is cheap to test exhaustively."""

    def __init__(self, states: dict[Key, KeyState] | None = None,
                 skew_ns: int = DEFAULT_SKEW_NS) -> None:
        self.states: dict[Key, KeyState] = states or {}
        #: How far a host's clocks may be off: what bounds the damage of a forged or
        #: broken clock (see :meth:`observe`).
        self.skew_ns = skew_ns

    def forget(self, keys: list[Key]) -> None:
        """Drop keys from the table (a key reported DELETED, to make room)."""
        for key in keys:
            self.states.pop(key, None)

    def _leaps(self, ev: Event, current: KeyState) -> bool:
        """``ev``'s boot clock ran further ahead of the key's last report than the time
        that passed at the router (plus the skew): not believed, so it cannot make the
        key's later real reports look older (its state still applies)."""
        if ev.boot != current.boot or not current.mono_ns:
            return False
        passed = max(0, ev.recv_ns - current.updated_ns)
        return ev.mono_ns - current.mono_ns > passed + self.skew_ns

    def epoch(self, key: Key) -> int:
        current = self.states.get(key)
        return current.epoch if current else 0

    def observe(self, ev: Event) -> Transition:
        """Classify ``ev`` against the current state and update the table."""
        if ev.kind == INVALID:
            return Transition(INVALID_CLASS, INVALID, "", None, 0)
        key = ev.key
        current = self.states.get(key)
        effective = EFFECTIVE.get(ev.state, ev.state)
        if current is None:
            if effective is None:
                return Transition(NOTICE, ev.state, INIT, None, 0)
            self.states[key] = KeyState(
                effective, ev.prio, ev.ts_ns, ev.id, ev.seq, 1, ev.recv_ns,
                ev.mono_ns, ev.boot, ev.pid,
            )
            first = NO_CONDITION if ev.kind in SYNTHETIC_KINDS else INIT
            return Transition(TRANSITION, effective, first, None, 1)
        same = effective is None or effective == current.state
        newer = order(ev, current)
        if newer < 0 and ev.ts_ns > current.updated_ns + self.skew_ns:
            # Dated well after the report this key applied last had arrived: it cannot be
            # older, whatever a boot clock or sequence number (forged, or reset) says.
            newer = 1
        if newer < 0:
            # Older than what this key has already seen from its host: it cannot
            # change the state (a newer report won), but agreeing reports are repeats.
            cls = REPEAT if same and ev.state == current.state else STALE
            return Transition(cls, current.state, current.state, current.since_ns, current.epoch)
        if not current.seq or ev.seq - current.seq <= MAX_SEQ_JUMP:
            current.seq = max(current.seq, ev.seq)
        if ev.mono_ns and ev.boot and not self._leaps(ev, current):
            current.mono_ns, current.boot, current.pid = ev.mono_ns, ev.boot, ev.pid
        current.updated_ns = ev.recv_ns
        if ev.prio is not None and not (ev.kind == GROUP and ev.prio == 0):
            current.prio = ev.prio
        if same:
            cls = REPEAT if ev.state == current.state else NOTICE
            return Transition(cls, current.state, current.state, current.since_ns, current.epoch)
        assert effective is not None
        prev_state, prev_since = current.state, current.since_ns
        if ev.kind in SYNTHETIC_KINDS and prev_state not in CONDITIONS:
            prev_state = NO_CONDITION
        current.state = effective
        current.since_ns = ev.ts_ns
        current.event_id = ev.id
        current.epoch += 1
        # (prio was updated above, where a group's constant 0 is ignored)
        return Transition(TRANSITION, effective, prev_state, prev_since, current.epoch)
