"""Action kinds: one module each, registered by name (:mod:`.registry`).

A new kind is one module here (its class decorated with ``@register``) plus its
import line below.
"""

from __future__ import annotations

import knotify.actions.alert
import knotify.actions.exec
import knotify.actions.log  # noqa: F401
from knotify.actions.base import Action, ActionContext, Services
from knotify.actions.registry import KINDS

__all__ = ["KINDS", "Action", "ActionContext", "Services"]
