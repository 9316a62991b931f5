"""``alert`` action: a chat message or e-mail through apprise, via the durable outbox.

Running it only queues the alert in the journal (grouping, flap control, repeat
suppression and silences decide what becomes a message); delivery happens in
the background (:mod:`knotify.alerts.engine`), so an alert never holds up event
intake or the key's next action; nor does the key's other actions hold it up (the
executor gives alerts a lane of their own per key). It is idempotent by its run: a run repeated
after a crash queues nothing twice, which is why its start need not be durable.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from knotify.actions.base import Action, ActionContext, ActionSettings
from knotify.actions.registry import register
from knotify.alerts import render
from knotify.errors import JournalError, TemplateError
from knotify.outcome import Outcome
from knotify.units import format_duration
from knotify.vocab import ERROR

if TYPE_CHECKING:
    from knotify.schema import Table


@register
class AlertAction(Action):
    kind = "alert"
    durable_start = False
    #: The engine applies every silence to alerts itself, whatever the rule says.
    skipped_when_silenced = False
    pages = True
    #: Alerts never wait behind the key's execs, nor for a slot: queueing forks nothing.
    lane = "alert"
    takes_slot = False

    def __init__(self, receivers: tuple[str, ...], spec: dict[str, str],
                 repeat_s: float | None) -> None:
        self._receivers = receivers
        self._spec = spec
        self._repeat_s = repeat_s

    @property
    def receivers(self) -> tuple[str, ...]:
        return self._receivers

    @property
    def spec(self) -> dict[str, str]:
        return self._spec

    @property
    def repeat_s(self) -> float | None:
        return self._repeat_s

    @classmethod
    def from_config(cls, table: Table, settings: ActionSettings) -> AlertAction:
        key = "receivers" if table.has("receivers") or not table.has("receiver") else "receiver"
        names = table.strings(key, None, allow_str=True)
        if not names:
            raise table.error(key, "name at least one receiver")
        known = settings.receivers
        for i, name in enumerate(names):
            if name not in known:
                raise table.error(f"{key}[{i}]" if key == "receivers" else key,
                                  f"no receiver {name!r}; define [receivers.{name}] (known: "
                                  + (", ".join(sorted(known)) or "none") + ")")
        spec: dict[str, str] = {}
        for field in ("title", "body", "line"):
            text = table.opt_text(field)
            if text is None:
                continue
            try:
                render.template(text)
            except TemplateError as exc:
                raise table.error(field, str(exc)) from None
            spec[field] = text
        severity = table.opt_text("severity")
        if severity is not None:
            if not severity or len(severity) > 40 or not severity.isprintable():
                raise table.error("severity", "expected a short word such as critical, "
                                  f"warning or info, found {severity[:60]!r}")
            spec["severity"] = severity  # a label for Alertmanager receivers
        repeat_s = table.opt_duration("repeat_interval")
        return cls(tuple(dict.fromkeys(names)), spec, repeat_s)

    async def run(self, ctx: ActionContext) -> Outcome:
        engine = ctx.services.alerts
        if engine is None:
            return Outcome(ERROR, detail="no alert engine in this process")
        while True:
            try:
                outcome: Outcome = await engine.enqueue(ctx, self)
                return outcome
            except JournalError as exc:
                # Not in the outbox means not queued: wait for the journal, lose nothing.
                ctx.log.error("alert.queue_failed", error=str(exc), retry_in_s=1.0)
                await asyncio.sleep(1.0)

    def describe(self) -> str:
        text = f"alert {', '.join(self.receivers)}"
        if self.spec:
            text += " (own " + ", ".join(sorted(self.spec)) + ")"
        if self.repeat_s is not None:
            text += (f" repeat every {format_duration(self.repeat_s)}" if self.repeat_s
                     else " no repeats")
        return text
