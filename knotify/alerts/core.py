"""What the alert engine's stages share: settings, stores, the clock, counts and flags.

Each stage (:mod:`.enqueue`, :mod:`.timers`, :mod:`.compose`, :mod:`.deliver`,
:mod:`.escalate`, :mod:`.attempts`, :mod:`.settle`, :mod:`.adopt`, :mod:`.control`)
is handed one :class:`Core` and reaches nothing else of the engine; :mod:`.engine`
builds the core, the stages, and joins them.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from knotify.alerts import alertmanager_desk, incident, inhibit, repeat
from knotify.alerts.pool import WorkerPool
from knotify.alerts.receivers import AlertSettings, EngineSettings, Receiver
from knotify.alerts.silence import SilenceStore
from knotify.alerts.since import RuleSince
from knotify.clock import Clock
from knotify.store.alertmanager import AlertmanagerStore
from knotify.store.outbox import Outbox
from knotify.store.rule_since import RuleSinceRows
from knotify.store.silences import SilenceRows
from knotify.tracker import Tracker

if TYPE_CHECKING:
    from knotify.peers.gate import Verdict
    from knotify.store.events import EventStore
    from knotify.store.outbox import MessageRow

#: The longest the engine's loop sleeps between two looks at what is due (seconds).
MAX_SLEEP = 1.0
#: A healthy receiver's attempts journaled at once: this many times those it may have at
#: workers (max_parallel_per_receiver), so a job is ready whenever a worker is.
AHEAD = 4


class PeerGate(Protocol):
    """Router peering as the engine sees it (knotify.peers.service.Peers)."""

    def gate(self, message: MessageRow, now_ns: int) -> Verdict: ...
    def skip(self, message: MessageRow, verdict: Verdict, now_ns: int) -> None: ...
    def sent(self, message: MessageRow, now_ns: int) -> None: ...
    def changed(self) -> None: ...


class Flights:
    """The attempts under way, and what each receiver may start next."""

    def __init__(self) -> None:
        #: Attempts (and watches of adopted ones) by message, until their outcome is journaled.
        self.inflight: dict[int, asyncio.Task[None]] = {}
        #: Messages at a worker (or waiting for one), by message: their receiver.
        self.working: dict[int, str] = {}
        #: The receiver of every message in ``inflight``.
        self.receiver_of: dict[int, str] = {}
        #: Jobs at workers, by receiver, and attempts waiting for their turn.
        self.sending: dict[str, int] = {}
        self.turns: dict[str, deque[asyncio.Future[None]]] = {}
        #: Receivers that answered "slow down": nothing goes to them before this (ns).
        self.holds: dict[str, int] = {}

    def settling(self) -> dict[str, int]:
        """Per receiver, attempts whose worker is done but whose outcome is not committed."""
        out: dict[str, int] = {}
        for message_id, name in self.receiver_of.items():
            if message_id not in self.working:
                out[name] = out.get(name, 0) + 1
        return out


class Core:
    """The engine's shared state. The caller (a stage) holds any transaction it needs."""

    def __init__(self, settings: EngineSettings, journal: EventStore,
                 tracker: Tracker, log: Any,
                 publish: Callable[[str, dict[str, Any]], None], clock: Clock) -> None:
        self.engine_settings = settings
        self.journal = journal
        self.tracker = tracker
        self.log = log
        self.publish = publish
        self.clock = clock
        self.outbox = Outbox(journal.database)
        self.silences = SilenceStore(SilenceRows(journal.database), clock)
        self.am = alertmanager_desk.Desk(AlertmanagerStore(journal.database), self.outbox, log)
        #: Since when each alert rule exists: flap control counts only from then.
        self.rule_since = RuleSince(RuleSinceRows(journal.database))
        self.result_dir = settings.result_dir
        self.pool = WorkerPool(lambda: self.settings.max_parallel,
                               lambda: self.settings.worker_idle, log)
        self.flights = Flights()
        #: Router peering ([peers]): the send gate and the notification log, or None.
        self.peers: PeerGate | None = None
        self.counts: dict[str, int] = {}
        #: Something changed that the loop should look at again at once (no sleep).
        self.again = False
        self.stopping = False
        #: When the loop's next tick is planned (ns); 0: at once.
        self.next_tick_ns = 0
        #: Wake the loop (it sleeps towards a due time) / look for the next message to
        #: send in this loop turn: set by the engine.
        self.wake: Callable[[], None] = lambda: None
        self.kick: Callable[[], None] = lambda: None
        #: The cluster labels and hosts of this turn (built on first use; see index).
        self._turn_index: incident.ClusterIndex | None = None
        self._turn_active: inhibit.Active | None = None

    @property
    def settings(self) -> AlertSettings:
        return self.engine_settings.alerts

    @property
    def receivers(self) -> Mapping[str, Receiver]:
        return self.engine_settings.receivers

    def count(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1

    def new_turn(self) -> None:
        """The tracker's states may have changed: the turn's cluster view is built anew."""
        self._turn_index = self._turn_active = None

    def index(self) -> incident.ClusterIndex:
        """The cluster view of the tracker's states for this turn of the engine (the
        states do not change within one: a tick and a group commit each start a turn)."""
        if self._turn_index is None:
            self._turn_index = incident.ClusterIndex(self.tracker.states,
                                                     self.engine_settings.cluster)
        return self._turn_index

    def inhibition(self, fields: dict[str, str]) -> inhibit.Inhibition | None:
        """What inhibits an alert now (the sources of this turn, built on first use)."""
        rules = self.settings.inhibit
        if not rules:
            return None
        if self._turn_active is None or self._turn_active.rules is not rules:
            self._turn_active = inhibit.Active(rules, self.tracker.states, self.index())
        return self._turn_active.match(fields)

    def repeat_policy(self, repeat_s: float | None) -> repeat.RepeatPolicy:
        base = self.settings.repeat
        if repeat_s is None:
            return base
        return repeat.RepeatPolicy(repeat_s, base.states)
