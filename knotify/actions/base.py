"""What every action kind provides, what it is given, and the outcome it reports.

An action reaches the router's services only through :class:`Services`, each one a
small Protocol (the alert queue, silences, a clock, a log, publish), so a kind never
imports the router, the alert engine or the config.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from knotify.outcome import Outcome

if TYPE_CHECKING:
    from knotify.event import Event
    from knotify.schema import Table
    from knotify.tracker import Transition


@dataclass(slots=True, frozen=True)
class Defaults:
    """``[defaults]``: what an action's own table may leave out."""

    exec_timeout: float = 30.0
    service_timeout: float = 90.0
    systemctl: str = "systemctl"


@dataclass(slots=True, frozen=True)
class ActionSettings:
    """What a kind may read of the config besides its own ``[[rule.action]]`` table."""

    defaults: Defaults = Defaults()
    #: The names of the configured receivers (``[receivers.NAME]``).
    receivers: frozenset[str] = frozenset()


class AlertRequest(Protocol):
    """What an alert asks the queue for (the ``alert`` kind is one)."""

    @property
    def receivers(self) -> tuple[str, ...]: ...
    @property
    def spec(self) -> Mapping[str, str]: ...
    @property
    def repeat_s(self) -> float | None: ...


class AlertQueue(Protocol):
    """Where alerts are queued (the router's alert engine)."""

    async def enqueue(self, ctx: ActionContext, action: AlertRequest) -> Outcome:
        """Queue the alert durably; raise JournalError if it could not be."""
        ...


class Silences(Protocol):
    def silence_reason(self, ev: Event, tr: Transition, rule: str) -> str | None:
        """The silence muting ``ev`` for ``rule`` (described), or None."""
        ...


class Clock(Protocol):
    def time_ns(self) -> int: ...
    def monotonic(self) -> float: ...


class Publish(Protocol):
    def __call__(self, topic: str, data: dict[str, Any], /) -> None: ...


class SystemClock:
    """The machine's clocks."""

    def time_ns(self) -> int:
        return time.time_ns()

    def monotonic(self) -> float:
        return time.monotonic()


def _unpublished(topic: str, data: dict[str, Any]) -> None:
    """Nobody watches: nothing is published."""


@dataclass(slots=True, frozen=True)
class Services:
    """What the process running the actions offers them (None: not in this process)."""

    alerts: AlertQueue | None = None
    silences: Silences | None = None
    clock: Clock = field(default_factory=SystemClock)
    log: Any = None
    publish: Publish = _unpublished


@dataclass(slots=True)
class ActionContext:
    """Everything an action may use about the event that triggered it."""

    event: Event
    transition: Transition
    rule: str
    fields: dict[str, str]
    log: Any
    #: The action's run (its row in ``runs``), and its place in the rule's actions.
    run: int | None = None
    index: int = 0
    services: Services = field(default_factory=Services)


class Action(ABC):
    """One configured action. Kinds register themselves
    (:func:`knotify.actions.registry.register`)."""

    kind: ClassVar[str]
    #: True when running it twice would matter: its start is journaled before it runs,
    #: so a router crash never repeats it.
    durable_start: ClassVar[bool] = True
    #: Instant and without I/O but a log line: when nothing of its key is queued, it runs
    #: off the queue, inside the transaction that journals its event (its lines are held
    #: until that commits), and its run is journaled once, with its outcome.
    #: Kept: without it bench/intake.py's router spends 5x the CPU per event and sheds.
    inline: ClassVar[bool] = False
    #: A rule's ``honor_silences`` skips it (status "silenced") while a silence matches.
    #: False for a kind that applies silences itself.
    skipped_when_silenced: ClassVar[bool] = True
    #: The level of its "action.done" line when it went well.
    done_level: ClassVar[str] = "info"
    #: It tells people (an alert): a rule with one ends incidents too (``send_resolved``:
    #: the event that ends an incident the rule's states name runs it, and only it), and
    #: flap control counts its transitions only from when its rule exists.
    pages: ClassVar[bool] = False
    #: Non-empty: its runs wait in a lane of this name per key, in order among themselves
    #: but never behind the key's other actions (a hung restart must not hold a page).
    lane: ClassVar[str] = ""
    #: It takes one of ``max_parallel_actions``' slots while it runs (False for a kind
    #: that forks nothing).
    takes_slot: ClassVar[bool] = True

    def run_inline(self, event: Event, transition: Transition, rule: str, log: Any,
                   run: int) -> Outcome:
        """The :attr:`inline` form of :meth:`run`, synchronous."""
        raise NotImplementedError

    @classmethod
    @abstractmethod
    def from_config(cls, table: Table, settings: ActionSettings) -> Action:
        """Build from a ``[[rule.action]]`` table; raise ConfigError naming the bad key."""

    @abstractmethod
    async def run(self, ctx: ActionContext) -> Outcome:
        """Do it. Must respect its own timeout and never raise for an expected failure."""

    @abstractmethod
    def describe(self) -> str:
        """A one-line summary for check-config and logs (no secrets)."""
