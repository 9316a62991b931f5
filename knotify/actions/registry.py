"""Action kinds by name. A kind registers itself (``@register`` on its class), and
:mod:`knotify.actions` imports every kind's module: a new kind is one file plus one
import line there."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import TypeVar

from knotify.actions.base import Action

_KINDS: dict[str, type[Action]] = {}
#: Every registered kind, by its ``type`` name in the config.
KINDS: Mapping[str, type[Action]] = MappingProxyType(_KINDS)

A = TypeVar("A", bound=type[Action])


def register(cls: A) -> A:
    """Make ``cls`` the kind named ``cls.kind`` (a name used twice is a bug)."""
    if cls.kind in _KINDS and _KINDS[cls.kind] is not cls:
        raise RuntimeError(f"action kind {cls.kind!r} is registered twice")
    _KINDS[cls.kind] = cls
    return cls
