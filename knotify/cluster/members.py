"""What the cluster detector keeps per host, instance and cluster, and how members are
told in a detail text (``node3 BACKUP, node4 STOP, silent: node5``)."""

from __future__ import annotations

from dataclasses import dataclass

from knotify.vocab import BACKUP, FAULT, MASTER, STOP


@dataclass(slots=True)
class Member:
    """One host's instance in a cluster, as the tracker has it."""

    host: str
    name: str
    kind: str
    state: str
    since_ns: int
    prio: int | None
    silent: bool = False
    #: Reported MASTER_RX_LOWER_PRI within ``rx_lower_pri_window``.
    evidence: bool = False


@dataclass(slots=True)
class Peer:
    host: str
    #: Expected to be heard from regularly: it heartbeats, or the config lists it.
    watched: bool = False
    #: When the router last heard from it (router clock); None: not since it started.
    heard_ns: int | None = None
    #: When the silence clock started for a watched peer not heard yet (router start).
    watch_ns: int = 0
    via: str = ""
    interval_s: float | None = None
    spool: int | None = None
    version: str = ""
    #: When PEER_SILENT was journaled (None: not silent).
    silent_ns: int | None = None

    def quiet_ns(self, now_ns: int) -> int:
        return now_ns - (self.heard_ns if self.heard_ns is not None else self.watch_ns)


@dataclass(slots=True)
class GroupState:
    label: str
    #: SPLIT_BRAIN or NO_MASTER while one is raised (journaled), else "".
    announced: str = ""
    announced_ns: int = 0
    #: When the raw condition began (router clock), before its grace has passed.
    split_ns: int | None = None
    no_master_ns: int | None = None


_RANK = {MASTER: 0, BACKUP: 1, FAULT: 2, STOP: 3}


def order(m: Member) -> tuple[int, str, str]:
    return (_RANK.get(m.state, 4), m.host, m.name)


def others(members: list[Member], exclude: set[str] | None = None) -> str:
    """`` (node3 BACKUP, node4 STOP, silent: node5)`` for a detail text."""
    shown = [m for m in sorted(members, key=order) if not exclude or m.host not in exclude]
    if not shown:
        return ""
    words = [f"{m.host} {m.state}" + (" (silent)" if m.silent else "") for m in shown]
    return " (" + ", ".join(words) + ")"
