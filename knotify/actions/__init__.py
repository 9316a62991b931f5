"""Action kinds. A new kind is one module here plus one line in :data:`KINDS`."""

from __future__ import annotations

from knotify.actions.alert import AlertAction
from knotify.actions.base import Action, ActionContext
from knotify.actions.exec import ExecAction, ServiceAction
from knotify.actions.log import LogAction

KINDS: dict[str, type[Action]] = {
    "exec": ExecAction,
    "service": ServiceAction,
    "log": LogAction,
    "alert": AlertAction,
}

__all__ = ["KINDS", "Action", "ActionContext"]
