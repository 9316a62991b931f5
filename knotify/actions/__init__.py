"""Action kinds: one module each, registered by name (:mod:`.registry`).

A new kind is one module here (its class decorated with ``@register``) plus its
import line below.
"""

from __future__ import annotations

# Each kind's module registers it; in this order, which is the order the config's
# "expected one of ..." lists them in.
# isort: off
import knotify.actions.exec
import knotify.actions.log
import knotify.actions.alert  # noqa: F401
# isort: on
from knotify.actions.base import Action, ActionContext, Services
from knotify.actions.registry import KINDS

__all__ = ["KINDS", "Action", "ActionContext", "Services"]
