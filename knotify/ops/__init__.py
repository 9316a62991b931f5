"""The router's ops (its control surface): one module per op, found through a registry.

As circus does with its commands, each module holds both sides of what it does:

* the daemon side: ``OPS``, the wire ops it answers, each an :class:`~knotify.ops.base.Op`
  whose ``execute(ctx, msg)`` returns the reply (or the fields of an ok reply) and raises
  WireError for a request it cannot serve; ``ctx`` is what the op may use of the router
  (:class:`~knotify.ops.base.OpContext`);
* the CLI side, for the ops a person runs: ``COMMAND`` (its name on the command line),
  ``HELP``, ``register(parser)`` and ``run(args) -> exit code``.

Each :class:`~knotify.ops.base.Op` also says who may use it (``access``: admins only by
default, any sender, or a key about its own hosts; :mod:`knotify.trust` applies it).
Adding an op is one module here and its name in :data:`MODULES`. The router answers an op
message with :func:`dispatch`; ``knotify.cli`` adds :data:`COMMANDS` to the CLI. Commands
that are not ops (run, send, watch, ...) live in :mod:`knotify.commands`.
"""

from __future__ import annotations

from knotify.ops import (
    alerts,
    heartbeat,
    history,
    peer_forget,
    peer_sync,
    ping,
    reload,
    silence,
    stats,
    status,
)
from knotify.ops.base import CommandModule, Op, OpContext, OpModule
from knotify.ops.dispatch import Dispatcher
from knotify.vocab import ADMINS_ONLY

__all__ = ["COMMANDS", "MODULES", "REGISTRY", "Dispatcher", "Op", "OpContext", "access",
           "dispatch", "registry"]

MODULES: tuple[OpModule, ...] = (ping, status, history, stats, reload, heartbeat,
                                 peer_forget, silence, alerts, peer_sync)
#: The ops with a CLI side, by their command name.
COMMANDS: dict[str, CommandModule] = {
    module.COMMAND: module for module in (status, history, reload, peer_forget, silence)}


def registry(modules: tuple[OpModule, ...] = MODULES) -> dict[str, Op]:
    """Every wire op by name; an op named twice is a mistake caught at import."""
    ops: dict[str, Op] = {}
    for module in modules:
        for op in module.OPS:
            if op.name in ops:
                raise ValueError(f"op {op.name!r} is registered twice")
            ops[op.name] = op
    return ops


REGISTRY = registry()
dispatch = Dispatcher(REGISTRY).answer


def access(op: str) -> str:
    """Who may use ``op`` (:data:`knotify.vocab.OP_ACCESS`); an unknown op: admins only
    (so a sender who may not use it is told that, and nothing about what exists)."""
    found = REGISTRY.get(op)
    return ADMINS_ONLY if found is None else found.access
