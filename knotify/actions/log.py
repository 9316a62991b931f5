"""``log`` action: one structured log line per firing."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from knotify import log as logmod
from knotify.actions.base import Action, ActionContext, ActionSettings
from knotify.actions.registry import register
from knotify.errors import TemplateError
from knotify.outcome import Outcome
from knotify.templates import Template, event_fields
from knotify.vocab import OK

if TYPE_CHECKING:
    from knotify.event import Event
    from knotify.schema import Table
    from knotify.tracker import Transition

DEFAULT_MESSAGE = "{kind} {subject} on {host}: {prev_state} -> {state}"
LEVELS = ("debug", "info", "warning", "error", "critical")


@register
class LogAction(Action):
    kind = "log"
    #: Its own line says it all: "action.done" only at debug.
    done_level = "debug"

    def __init__(self, message: Template, level: str) -> None:
        self.message = message
        self.level = level

    @classmethod
    def from_config(cls, table: Table, settings: ActionSettings) -> LogAction:
        text = table.text("message", DEFAULT_MESSAGE)
        try:
            message = Template(text)
        except TemplateError as exc:
            raise table.error("message", str(exc)) from None
        return cls(message, table.text("level", "info", choices=LEVELS))

    inline = True

    async def run(self, ctx: ActionContext) -> Outcome:
        text = self.message.render(ctx.fields)
        getattr(ctx.log, self.level)("rule.log", message=text)
        return Outcome(OK, detail=text)

    def run_inline(self, event: Event, transition: Transition, rule: str, log: Any,
                   run: int) -> Outcome:
        fields = event_fields(event, transition, rule, only=self.message.fields)
        text = self.message.render(fields)
        logmod.emit(log, self.level, "rule.log", {"message": text, "event_id": event.id,
                                                  "rule": rule, "action": self.kind, "run": run})
        return Outcome(OK, detail=text)

    def describe(self) -> str:
        return f"log {self.level} {self.message.text!r}"
