"""Split brain, no master and silent peers, worked out from every host's states.

keepalived never tells a node that its peer died, or that two nodes both think they
are MASTER; a router that hears from every node can. :class:`Detector` is pure: it
is fed the tracker's states, each journaled event, each heartbeat and the time, and
returns the events it makes (kind ``CLUSTER`` or ``PEER``, source ``cluster``). The
router journals and routes them like any other event, then calls :meth:`confirm`;
if the journal fails they are simply made again on the next tick.

A cluster is the set of (host, instance) pairs that share a label: the instance name,
or the label of the ``[[cluster.group]]`` that claims them. For each:

- **SPLIT_BRAIN**: two or more hosts MASTER (or one MASTER reporting
  MASTER_RX_LOWER_PRI, i.e. hearing a lower-priority master) for longer than
  ``split_brain_grace``; **SPLIT_BRAIN_RESOLVED** as soon as that stops.
- **NO_MASTER**: at least ``min_members`` hosts, none of the ones still heard from
  MASTER, for longer than ``no_master_grace``; **MASTER_BACK** when one is.

A host that heartbeats (``knotify agent``) or is listed in ``[cluster] peers`` is
*watched*: **PEER_SILENT** when nothing came from it (no event, no heartbeat) for
``silent_after``, **PEER_BACK** when something does. A silent host's last reported
states no longer count: a host that died while MASTER cannot report STOP. For the
same reason a watched host's MASTER claim counts towards a split brain only once the
host has been heard from since the split began.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict
from typing import Any

from knotify.cluster.heartbeat import Heartbeat
from knotify.cluster.members import GroupState, Member, Peer, order, others
from knotify.cluster.settings import ClusterSettings, GroupSpec
from knotify.event import Event, Key
from knotify.templates import iso_time
from knotify.tracker import KeyState, Transition
from knotify.units import format_duration
from knotify.vocab import (
    CLUSTER,
    CLUSTER_OK,
    MASTER,
    MASTER_BACK,
    NO_MASTER,
    PEER,
    PEER_BACK,
    PEER_SILENT,
    RX_LOWER_PRI,
    SPLIT_BRAIN,
    SPLIT_BRAIN_RESOLVED,
    SYNTHETIC_KINDS,
)

SOURCE = "cluster"
RAISED = (SPLIT_BRAIN, NO_MASTER)


def _new_id() -> str:
    return os.urandom(16).hex()


class Detector:
    def __init__(self, settings: ClusterSettings, origin: str, now_ns: int,
                 states: Mapping[Key, KeyState] | None = None, peers: Iterable[str] = (),
                 new_id: Callable[[], str] = _new_id) -> None:
        self.settings = settings
        #: The host name CLUSTER events carry: the router that made them.
        self.origin = origin
        self.started_ns = now_ns
        self.new_id = new_id
        self.peers: dict[str, Peer] = {}
        self.groups: dict[str, GroupState] = {}
        self.evidence: dict[tuple[str, str, str], int] = {}
        #: Hosts that became watched by heartbeating (the router persists them).
        self.new_watched: list[str] = []
        self._labels: dict[tuple[str, str], str | None] = {}
        for host in (*settings.peers, *peers):
            self._watch(host, now_ns)
        if states:
            self._restore(states)

    # -- input ------------------------------------------------------------------------

    def _watch(self, host: str, now_ns: int) -> Peer:
        peer = self.peers.get(host)
        if peer is None:
            peer = self.peers[host] = Peer(host, watch_ns=now_ns)
        if not peer.watched:
            peer.watched = True
            peer.watch_ns = now_ns
        return peer

    def _restore(self, states: Mapping[Key, KeyState]) -> None:
        """Pick up what was raised before a restart (the journal's state table)."""
        for (host, kind, name, _vs), ks in states.items():
            if kind == CLUSTER and host == self.origin and ks.state in RAISED:
                group = self._group(name)
                group.announced, group.announced_ns = ks.state, ks.since_ns
            elif kind == PEER and ks.state in (PEER_SILENT, PEER_BACK):
                peer = self._watch(host, self.started_ns)
                if ks.state == PEER_SILENT:
                    peer.silent_ns = ks.since_ns

    def heard(self, host: str, now_ns: int, beat: Heartbeat | None = None) -> None:
        peer = self.peers.get(host)
        if peer is None:
            peer = self.peers[host] = Peer(host, watch_ns=now_ns)
        peer.heard_ns = now_ns
        if beat is None:
            peer.via = peer.via or "event"
            return
        peer.via = "heartbeat"
        peer.interval_s, peer.spool, peer.version = beat.interval_s, beat.spool, beat.version
        if not peer.watched:
            self._watch(host, now_ns)
            self.new_watched.append(host)

    def observe(self, ev: Event, tr: Transition, now_ns: int) -> None:
        """A journaled event: its host was heard; MASTER_RX_LOWER_PRI is evidence."""
        if ev.kind in SYNTHETIC_KINDS or ev.source == SOURCE:
            return
        self.heard(ev.host, now_ns)
        if ev.state == RX_LOWER_PRI and ev.kind in self.settings.kinds:
            self.evidence[(ev.host, ev.kind, ev.name)] = now_ns

    def forget(self, host: str, now_ns: int) -> list[Event]:
        """Stop watching ``host`` (decommissioned): an ``OK`` PEER event records it."""
        peer = self.peers.pop(host, None)
        if peer is None or not peer.watched:
            return []
        return [self._event(host, PEER, host, CLUSTER_OK, now_ns, {
            "detail": f"{host}: no longer watched (forgotten by an operator)"})]

    def reconfigure(self, settings: ClusterSettings, now_ns: int) -> None:
        self.settings = settings
        self._labels.clear()
        for host in settings.peers:
            self._watch(host, now_ns)

    # -- judging --------------------------------------------------------------------------

    def silent(self, host: str, now_ns: int) -> bool:
        peer = self.peers.get(host)
        if peer is None or not peer.watched:
            return False
        if peer.silent_ns is not None and (peer.heard_ns is None
                                           or peer.heard_ns <= peer.silent_ns):
            return True
        return peer.quiet_ns(now_ns) > self.settings.silent_after * 1e9

    def label_for(self, host: str, name: str) -> str | None:
        key = (host, name)
        if key not in self._labels:
            label = next((g.label for g in self.settings.groups if g.matches(host, name)), None)
            if label is None and self.settings.by_name:
                label = name
            self._labels[key] = label
        return self._labels[key]

    def _spec(self, label: str) -> GroupSpec | None:
        return next((g for g in self.settings.groups if g.label == label), None)

    def _group(self, label: str) -> GroupState:
        group = self.groups.get(label)
        if group is None:
            group = self.groups[label] = GroupState(label)
        return group

    def members(self, states: Mapping[Key, KeyState], now_ns: int) -> dict[str, list[Member]]:
        window = self.settings.rx_lower_pri_window * 1e9
        out: dict[str, list[Member]] = {}
        for (host, kind, name, _vs), ks in states.items():
            if kind not in self.settings.kinds or ks.state == "DELETED":
                continue
            label = self.label_for(host, name)
            if label is None:
                continue
            seen = self.evidence.get((host, kind, name))
            out.setdefault(label, []).append(Member(
                host, name, kind, ks.state, ks.since_ns, ks.prio, self.silent(host, now_ns),
                ks.state == MASTER and seen is not None and now_ns - seen <= window))
        return out

    def tick(self, states: Mapping[Key, KeyState], now_ns: int) -> list[Event]:
        """The events the situation calls for now (journal them, then :meth:`confirm`)."""
        if not self.settings.enabled:
            return []
        out: list[Event] = []
        for peer in sorted(self.peers.values(), key=lambda p: p.host):
            ev = self._judge_peer(peer, now_ns)
            if ev is not None:
                out.append(ev)
        members = self.members(states, now_ns)
        labels = set(members) | {label for label, g in self.groups.items() if g.announced}
        for label in sorted(labels):
            ev = self._judge_group(self._group(label), members.get(label, []), now_ns)
            if ev is not None:
                out.append(ev)
        window = self.settings.rx_lower_pri_window * 1e9
        for key in [k for k, t in self.evidence.items() if now_ns - t > window]:
            del self.evidence[key]
        return out

    def confirm(self, events: Iterable[Event]) -> None:
        """The events :meth:`tick` made are journaled: they are now the announced state."""
        for ev in events:
            if ev.kind == CLUSTER:
                group = self._group(ev.name)
                group.announced = ev.state if ev.state in RAISED else ""
                group.announced_ns = ev.ts_ns
            elif ev.kind == PEER and ev.host in self.peers:
                self.peers[ev.host].silent_ns = ev.ts_ns if ev.state == PEER_SILENT else None

    def _judge_peer(self, peer: Peer, now_ns: int) -> Event | None:
        if not peer.watched:
            return None
        if peer.silent_ns is None:
            quiet = peer.quiet_ns(now_ns)
            if quiet <= self.settings.silent_after * 1e9:
                return None
            if peer.heard_ns is None:
                detail = (f"{peer.host}: not heard from since {iso_time(peer.watch_ns)}, "
                          f"when the router began to watch it ({format_duration(quiet / 1e9)})")
            else:
                detail = (f"{peer.host}: not heard from since {iso_time(peer.heard_ns)} "
                          f"({format_duration(quiet / 1e9)})")
            return self._event(peer.host, PEER, peer.host, PEER_SILENT, now_ns, {
                "detail": detail, "last_heard_ns": peer.heard_ns,
                "silent_for_s": round(quiet / 1e9, 3)})
        if peer.heard_ns is not None and peer.heard_ns > peer.silent_ns:
            gap = (peer.heard_ns - peer.silent_ns) / 1e9 + self.settings.silent_after
            return self._event(peer.host, PEER, peer.host, PEER_BACK, now_ns, {
                "detail": f"{peer.host}: heard from again (via {peer.via}) after about "
                          f"{format_duration(gap)} of silence",
                "via": peer.via})
        return None

    def _judge_group(self, group: GroupState, members: list[Member],
                     now_ns: int) -> Event | None:
        settings = self.settings
        spec = self._spec(group.label)
        live = [m for m in members if not m.silent]
        masters = sorted({m.host for m in live if m.state == MASTER})
        evidence = sorted({m.host for m in live if m.evidence})
        split = len(masters) >= 2 or bool(evidence)
        group.split_ns = (group.split_ns if group.split_ns is not None else now_ns) \
            if split else None
        hosts = {m.host for m in members}
        least = spec.min_members if spec and spec.min_members else settings.min_members
        no_master = len(hosts) >= least and bool(live) and not masters
        group.no_master_ns = (group.no_master_ns if group.no_master_ns is not None
                              else now_ns) if no_master else None

        def event(state: str, detail: str) -> Event:
            return self._event(self.origin, CLUSTER, group.label, state, now_ns, {
                "detail": detail, "masters": masters, "evidence": evidence,
                "members": [{"host": m.host, "name": m.name, "state": m.state,
                             "silent": m.silent} for m in sorted(members, key=order)],
            })

        if group.announced == SPLIT_BRAIN:
            if split:
                return None
            lasted = format_duration(max(0, now_ns - group.announced_ns) / 1e9)
            if not members:
                now = "no host reports it any more"
            elif masters:
                now = f"{masters[0]} is the only MASTER"
            else:
                now = "no host is MASTER"
            return event(SPLIT_BRAIN_RESOLVED, f"{group.label}: split brain over after "
                         f"{lasted}: {now}{others(members, exclude=set(masters))}")
        if group.announced == NO_MASTER:
            if masters:
                return event(MASTER_BACK, f"{group.label}: {', '.join(masters)} "
                             f"{'is' if len(masters) == 1 else 'are'} MASTER"
                             f"{others(members, exclude=set(masters))}")
            if not members:
                return event(CLUSTER_OK, f"{group.label}: no host reports it any more")
            return None
        if split and group.split_ns is not None \
                and now_ns - group.split_ns >= settings.split_brain_grace * 1e9:
            confirmed = [h for h in masters if self._confirmed(h, group.split_ns)]
            if len(confirmed) >= 2 or evidence:
                lasted = format_duration((now_ns - group.split_ns) / 1e9)
                parts = []
                if len(masters) >= 2:
                    parts.append(f"{', '.join(masters)} are all MASTER")
                if evidence:
                    parts.append(f"{', '.join(evidence)} hear{'s' if len(evidence) == 1 else ''}"
                                 " a lower-priority MASTER (MASTER_RX_LOWER_PRI)")
                return event(SPLIT_BRAIN, f"{group.label}: {'; '.join(parts)} for {lasted}"
                             f"{others(members, exclude=set(masters))}")
        if no_master and group.no_master_ns is not None \
                and now_ns - group.no_master_ns >= settings.no_master_grace * 1e9:
            lasted = format_duration((now_ns - group.no_master_ns) / 1e9)
            return event(NO_MASTER, f"{group.label}: no MASTER for {lasted}{others(members)}")
        return None

    def _confirmed(self, host: str, since_ns: int) -> bool:
        peer = self.peers.get(host)
        if peer is None or not peer.watched:
            return True  # not watched: its word is all there is
        return peer.heard_ns is not None and peer.heard_ns >= since_ns

    def _event(self, host: str, kind: str, name: str, state: str, now_ns: int,
               extra: dict[str, Any]) -> Event:
        return Event(id=self.new_id(), host=host, kind=kind, name=name, state=state,
                     ts_ns=now_ns, recv_ns=now_ns, source=SOURCE, form=kind.lower(),
                     extra=extra)

    # -- the view -------------------------------------------------------------------------

    def view(self, states: Mapping[Key, KeyState], now_ns: int) -> dict[str, Any]:
        """The cluster view for ``knotify status``: clusters with 2+ hosts, and the peers."""
        members = self.members(states, now_ns)
        groups = []
        labels = set(members) | {label for label, g in self.groups.items() if g.announced}
        for label in sorted(labels):
            ms = sorted(members.get(label, []), key=order)
            group = self.groups.get(label) or GroupState(label)
            spec = self._spec(label)
            if len({m.host for m in ms}) < 2 and spec is None and not group.announced \
                    and not any(m.evidence for m in ms):
                continue
            pending: str | None = None
            pending_ns: int | None = None
            if not group.announced:
                if group.split_ns is not None:
                    pending, pending_ns = SPLIT_BRAIN, group.split_ns
                elif group.no_master_ns is not None:
                    pending, pending_ns = NO_MASTER, group.no_master_ns
            groups.append({
                "label": label, "condition": group.announced or CLUSTER_OK,
                "since_ns": group.announced_ns or None,
                "pending": pending, "pending_since_ns": pending_ns,
                "vrid": spec.vrid if spec else None,
                "masters": sorted({m.host for m in ms if m.state == MASTER and not m.silent}),
                "members": [asdict(m) for m in ms],
            })
        peers = []
        for peer in sorted(self.peers.values(), key=lambda p: p.host):
            item = asdict(peer)
            item["silent"] = self.silent(peer.host, now_ns)
            item["quiet_s"] = round(peer.quiet_ns(now_ns) / 1e9, 3)
            peers.append(item)
        s = self.settings
        return {"enabled": s.enabled, "origin": self.origin, "groups": groups, "peers": peers,
                "settings": {"split_brain_grace": s.split_brain_grace,
                             "no_master_grace": s.no_master_grace,
                             "silent_after": s.silent_after, "min_members": s.min_members}}
