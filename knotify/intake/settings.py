"""The intake's settings: what it needs of the config."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from knotify.config import Config
    from knotify.rules import Rule


@dataclass(slots=True, frozen=True)
class IntakeSettings:
    """What the intake needs of the config (a reload hands it new ones)."""

    rules: tuple[Rule, ...]
    max_keys: int
    max_clock_skew: float
    forget_deleted: float
    keep_events: int
    max_message: int
    max_backlog: int

    @classmethod
    def of(cls, config: Config) -> IntakeSettings:
        return cls(config.rules, config.max_keys, config.max_clock_skew,
                   config.forget_deleted, config.keep_events, config.max_message,
                   config.max_backlog)

    @property
    def skew_ns(self) -> int:
        return int(self.max_clock_skew * 1e9)
