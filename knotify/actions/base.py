"""What every action kind provides, and the outcome it reports."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

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


@dataclass(slots=True)
class ActionContext:
    """Everything an action may use about the event that triggered it."""

    event: Event
    transition: Transition
    rule: str
    fields: dict[str, str]
    log: Any
    extra: dict[str, Any] = field(default_factory=dict)


class Action(ABC):
    """One configured action. Subclasses register themselves with :func:`register`."""

    kind: ClassVar[str]
    #: True when running it twice would matter: its start is journaled before it runs,
    #: so a router crash never repeats it.
    durable_start: ClassVar[bool] = True
    #: Instant and without I/O but a log line: when nothing of its key is queued, it runs
    #: off the queue, inside the transaction that journals its event (its lines are held
    #: until that commits), and its run is journaled once, with its outcome.
    inline: ClassVar[bool] = False

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
