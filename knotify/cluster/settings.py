"""``[cluster]`` (the router's cluster view) and ``[agent]`` (the sending host's side).

Instances are matched across hosts by name unless a ``[[cluster.group]]`` names them:
a group gives a label to the (host, instance) pairs it matches, e.g. when the same
VRRP instance is called ``VI_1`` on one host and ``VI_WEB`` on another, or when two
unrelated clusters both have a ``VI_1``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from knotify.rules import Pattern
from knotify.schema import Table

#: Kinds whose members can form a cluster (sync groups report MASTER/BACKUP too).
GROUPABLE = ("INSTANCE", "GROUP")


@dataclass(slots=True, frozen=True)
class GroupSpec:
    """An explicit cluster: a label for the (host, instance) pairs it matches."""

    label: str
    instances: Pattern
    hosts: Pattern = field(default_factory=Pattern)
    min_members: int | None = None
    vrid: int | None = None

    def matches(self, host: str, name: str) -> bool:
        return self.instances(name) and self.hosts(host)


@dataclass(slots=True, frozen=True)
class ClusterSettings:
    #: Make CLUSTER and PEER events. On when the config has a ``[cluster]`` table: one
    #: router hearing many unrelated pairs that all call their instance ``VI_1`` would
    #: otherwise see a split brain the day it starts.
    enabled: bool = False
    #: Two or more hosts MASTER (or a MASTER hearing lower-priority adverts) this long.
    split_brain_grace: float = 5.0
    #: Every member BACKUP/FAULT/STOP this long.
    no_master_grace: float = 10.0
    #: A host that heartbeats (or is listed in ``peers``) not heard from this long.
    silent_after: float = 30.0
    #: A MASTER_RX_LOWER_PRI report counts as split-brain evidence this long after it.
    rx_lower_pri_window: float = 3.0
    #: NO_MASTER needs at least this many member hosts (a lone host's BACKUP says nothing).
    min_members: int = 2
    kinds: tuple[str, ...] = ("INSTANCE",)
    #: Match instances of the same name across hosts when no group claims them.
    by_name: bool = True
    #: Hosts expected to heartbeat, even before the router has heard from them.
    peers: tuple[str, ...] = ()
    groups: tuple[GroupSpec, ...] = ()


@dataclass(slots=True, frozen=True)
class AgentSettings:
    """``knotify agent``: how often it heartbeats and how long it waits for each router."""

    heartbeat: float = 5.0
    timeout: float = 2.0
    #: Spooled events sent per request.
    batch: int = 200


def parse_cluster(top: Table) -> ClusterSettings:
    present = top.has("cluster")
    c = top.table("cluster")
    settings = ClusterSettings(
        enabled=c.flag("enabled", present),
        split_brain_grace=c.duration("split_brain_grace", "5s"),
        no_master_grace=c.duration("no_master_grace", "10s"),
        silent_after=c.duration("silent_after", "30s"),
        rx_lower_pri_window=c.duration("rx_lower_pri_window", "3s"),
        min_members=c.integer("min_members", 2, lo=1, hi=1000),
        kinds=tuple(_kinds(c)),
        by_name=c.flag("by_name", True),
        peers=tuple(_hosts(c, "peers")),
        groups=tuple(_groups(c)),
    )
    if settings.silent_after <= 0:
        raise c.error("silent_after", "must be more than 0")
    c.done()
    return settings


def _kinds(c: Table) -> list[str]:
    kinds = [k.upper() for k in c.strings("kinds", ["INSTANCE"], allow_str=True)]
    for kind in kinds:
        if kind not in GROUPABLE:
            raise c.error("kinds", f"expected INSTANCE and/or GROUP, found {kind!r}")
    if not kinds:
        raise c.error("kinds", "needs at least one of INSTANCE, GROUP")
    return list(dict.fromkeys(kinds))


def _hosts(c: Table, key: str) -> list[str]:
    hosts = c.strings(key, [])
    for host in hosts:
        if not 1 <= len(host) <= 255 or any(ch in host for ch in "\n\r\0*?"):
            raise c.error(key, f"expected host names (no wildcards), found {host!r}")
    return hosts


def _groups(c: Table) -> list[GroupSpec]:
    out: list[GroupSpec] = []
    seen: set[str] = set()
    for t in c.tables("group"):
        instances = t.strings("instances", allow_str=True)
        if not instances:
            raise t.error("instances", "needs at least one instance name (wildcards allowed)")
        vrid = t.raw("vrid")
        if vrid is not None:
            vrid = t.integer("vrid", None, lo=1, hi=255)
        label = t.text("label", f"VRID {vrid}" if vrid is not None else None)
        if not label.strip() or len(label) > 200 or any(ch in label for ch in "\n\r\0"):
            raise t.error("label", f"expected a short one-line label, found {label!r}")
        if label in seen:
            raise t.error("label", f"label {label!r} is used by another group")
        seen.add(label)
        min_members = t.raw("min_members")
        if min_members is not None:
            min_members = t.integer("min_members", None, lo=1, hi=1000)
        out.append(GroupSpec(label=label, instances=Pattern.parse(instances),
                             hosts=Pattern.parse(t.strings("hosts", [], allow_str=True)),
                             min_members=min_members, vrid=vrid))
        t.done()
    return out


def parse_agent(top: Table) -> AgentSettings:
    a = top.table("agent")
    settings = AgentSettings(
        heartbeat=a.duration("heartbeat", "5s"),
        timeout=a.duration("timeout", "2s"),
        batch=a.integer("batch", 200, lo=1, hi=10_000),
    )
    if settings.heartbeat <= 0:
        raise a.error("heartbeat", "must be more than 0")
    if settings.timeout <= 0:
        raise a.error("timeout", "must be more than 0")
    a.done()
    return settings
