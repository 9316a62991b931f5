"""What an op is, and what of the router it may use (:class:`OpContext`).

The parts are typed by small Protocols naming only what the ops call, so an op module
depends on no router, store or engine module (and a test can hand it real parts built
on their own).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from knotify.errors import WireError
from knotify.vocab import ADMINS_ONLY

#: What ``execute`` returns: a whole reply, or the fields of an ok reply.
Answer = bytes | dict[str, Any]


class Journal(Protocol):
    def status(self, offset: int = 0, limit: int = -1) -> list[dict[str, Any]]: ...

    def history(self, limit: int = 50, *, host: str | None = None, kind: str | None = None,
                name: str | None = None, before: int | None = None,
                event_id: str | None = None, transitions: bool = False
                ) -> list[dict[str, Any]]: ...


class Outbox(Protocol):
    def attach_history(self, by_id: dict[str, dict[str, Any]]) -> None: ...


class Tracker(Protocol):
    @property
    def states(self) -> Mapping[Any, Any]: ...


class Cluster(Protocol):
    def heartbeat(self, msg: dict[str, Any]) -> bytes: ...

    def forget(self, msg: dict[str, Any]) -> bytes: ...

    def view(self) -> dict[str, Any]: ...


class Alerts(Protocol):
    def command(self, op: str, msg: dict[str, Any]) -> dict[str, Any]: ...


class PeerSync(Protocol):
    def command(self, op: str, msg: dict[str, Any]) -> dict[str, Any]: ...


class Faults(Protocol):
    def record(self, where: str, exc: BaseException, **fields: Any) -> str: ...


class OpContext(Protocol):
    """What an op may use: the router's parts (None: not there, e.g. not started)."""

    @property
    def journal(self) -> Journal | None: ...

    @property
    def outbox(self) -> Outbox | None: ...

    @property
    def tracker(self) -> Tracker: ...

    @property
    def cluster(self) -> Cluster | None: ...

    @property
    def alerts(self) -> Alerts | None: ...

    @property
    def peers(self) -> PeerSync | None: ...

    @property
    def faults(self) -> Faults: ...

    @property
    def started(self) -> float:
        """When the router started (time.time())."""

    def info(self) -> dict[str, Any]:
        """The router's figures, as ``stats`` and ``status`` show them."""

    def reload(self) -> tuple[bool, str]:
        """Re-read the config: (whether it is in force, what happened)."""


@dataclass(frozen=True, slots=True)
class Op:
    """One wire op: its name, what answers it, and who may use it.

    ``execute(ctx, msg)`` returns the reply (bytes) or the fields of an ok reply, and
    raises WireError for a request it cannot serve (the reason goes back to the sender).
    ``access`` (:data:`knotify.vocab.OP_ACCESS`) is checked by :mod:`knotify.trust` before
    ``execute`` runs: the local control socket and admin keys may use every op.
    """

    name: str
    execute: Callable[[OpContext, dict[str, Any]], Answer]
    access: str = ADMINS_ONLY


class OpModule(Protocol):
    """A module under knotify/ops/: the wire ops it answers (its ``OPS``)."""

    @property
    def OPS(self) -> tuple[Op, ...]: ...


class CommandModule(OpModule, Protocol):
    """An op module with a CLI side: ``knotify COMMAND``."""

    @property
    def COMMAND(self) -> str: ...

    @property
    def HELP(self) -> str: ...

    def register(self, parser: argparse.ArgumentParser) -> None: ...

    def run(self, args: argparse.Namespace) -> int: ...


def unknown(op: str) -> WireError:
    """The refusal of an op this router does not serve (unknown, or its part is off)."""
    return WireError(f"unknown op {op[:40]!r}")


def journal_of(ctx: OpContext) -> Journal:
    """The journal; a router that has not opened it yet answers no op that reads it."""
    if ctx.journal is None:
        raise RuntimeError("the journal is not open")
    return ctx.journal


def outbox_of(ctx: OpContext) -> Outbox:
    if ctx.outbox is None:
        raise RuntimeError("the alert outbox is not open")
    return ctx.outbox
