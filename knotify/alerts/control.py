"""The engine's ops: add, list and expire silences, and what the alerts are doing.

Requests come from the router's ops (``knotify silence``, ``knotify alerts``) through
:meth:`knotify.alerts.engine.AlertEngine.command`; a request that cannot be served
raises :class:`~knotify.errors.WireError` with a message naming what was wrong.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from knotify.alerts.core import Core
from knotify.alerts.silence import Silence
from knotify.errors import SilenceError, WireError


def command(core: Core, op: str, msg: dict[str, Any],
            info: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Answer a router op; WireError for a request that cannot be served."""
    try:
        if op == "silence_add":
            return silence_add(core, msg)
        if op == "silence_list":
            include_old = msg.get("all", False) is True
            now = core.clock.time_ns()
            return {"silences": [s.to_dict(now) for s in core.silences.list(include_old)]}
        if op == "silence_expire":
            return silence_expire(core, msg)
        if op == "alerts":
            return {"alerts": info()}
    except SilenceError as exc:
        raise WireError(str(exc)) from None
    raise WireError(f"unknown op {op[:40]!r}")


def silence_add(core: Core, msg: dict[str, Any]) -> dict[str, Any]:
    matchers = msg.get("matchers")
    if not isinstance(matchers, list) or not all(isinstance(m, str) for m in matchers):
        raise WireError("silence_add 'matchers' must be a list of strings")
    duration = msg.get("duration_s")
    if (isinstance(duration, bool) or not isinstance(duration, int | float)
            or not -1e12 < duration < 1e12):
        raise WireError("silence_add 'duration_s' must be a number of seconds")
    reason = msg.get("reason", "")
    by = msg.get("by", "")
    if not isinstance(reason, str) or not isinstance(by, str):
        raise WireError("silence_add 'reason' and 'by' must be strings")
    silence = core.silences.add(matchers, float(duration), reason, by)
    if core.peers is not None:  # peering: every router honours it
        core.peers.changed()
    core.log.info("silence.added", silence=silence.id,
                  matchers=[m.text for m in silence.matchers], reason=reason,
                  by=by, until_ns=silence.ends_ns)
    return {"silence": silence.to_dict(core.clock.time_ns()), "matching": matching(core, silence)}


def silence_expire(core: Core, msg: dict[str, Any]) -> dict[str, Any]:
    ident = msg.get("id")
    if type(ident) is not int or not 0 < ident < 2**63:
        raise WireError("silence_expire 'id' must be a silence number")
    silence = core.silences.expire(ident)
    if core.peers is not None:
        core.peers.changed()
    core.log.info("silence.expired", silence=silence.id)
    return {"silence": silence.to_dict(core.clock.time_ns())}


def matching(core: Core, silence: Silence) -> list[dict[str, str]]:
    """The current states a new silence covers: a typo shows as an empty list."""
    out = []
    for (host, kind, name, vs), ks in core.tracker.states.items():
        values = {"host": host, "kind": kind, "name": name, "vs": vs, "state": ks.state,
                  "subject": f"{name} in {vs}" if vs else name}
        if silence.matches(values):
            out.append({"host": host, "kind": kind, "name": name, "vs": vs,
                        "state": ks.state})
    return out[:100]
