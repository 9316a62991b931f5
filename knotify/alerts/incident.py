"""Incidents: which alerts of one receiver belong in one message by default.

With the default ``group_by = ["incident"]`` an alert's group is its incident:

- an INSTANCE or GROUP event: the hosts of its cluster, i.e. every host the router
  knows to serve an instance (or sync group) with the same cluster label, the label
  of the ``[[cluster.group]]`` that claims it or else its name (``[cluster] by_name``,
  on by default), sorted and joined with ``,``. When lb1 dies and lb2 takes over
  300 instances, lb1's FAULT and lb2's MASTER of each instance all have the incident
  ``lb1,lb2``: one message per receiver. An instance on other hosts (lb3/lb4) has
  another incident; an instance no other host serves has its own host.
- a CLUSTER or PEER event (what the router's cluster view raises): ``cluster view``.
  The split brains, missing masters and silent peers it raises together come from
  one cause (a network cut, a dead host) and make one page that lists them.
- any other kind (RS, VS, ...): its host.

The group waits ``group_wait`` like any other, so alerts of one incident arriving
further apart than that are more messages. A list of fields other than
``incident`` in ``group_by`` keeps grouping by exactly those fields. Pure.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from knotify.alerts.render import HOSTS_FIELD
from knotify.event import Key
from knotify.vocab import CLUSTER, DELETED, SYNTHETIC_KINDS, VRRP_KINDS

if TYPE_CHECKING:
    from knotify.cluster.settings import ClusterSettings
    from knotify.tracker import KeyState

__all__ = ["CLUSTER_VIEW", "HOSTS_FIELD", "INCIDENT", "ClusterIndex"]

#: The group_by field that means "by incident" (and the default).
INCIDENT = "incident"
#: The incident of everything the cluster view raises.
CLUSTER_VIEW = "cluster view"


class ClusterIndex:
    """Cluster labels and the hosts serving each, from the tracker's states.

    Built once per engine turn (cheap: one pass over the states); the alerts of
    that turn are looked up in it.
    """

    def __init__(self, states: Mapping[Key, KeyState], settings: ClusterSettings) -> None:
        self.settings = settings
        self._labels: dict[tuple[str, str], str | None] = {}
        self.hosts: dict[str, set[str]] = {}
        for (host, kind, name, _vs), ks in states.items():
            if kind not in VRRP_KINDS or ks.state == DELETED:
                continue
            label = self.label(host, name)
            if label is not None:
                self.hosts.setdefault(label, set()).add(host)

    def label(self, host: str, name: str) -> str | None:
        """The cluster label of ``name`` on ``host`` (as the cluster view has it)."""
        key = (host, name)
        if key not in self._labels:
            label = next((g.label for g in self.settings.groups if g.matches(host, name)),
                         None)
            if label is None and self.settings.by_name:
                label = name
            self._labels[key] = label
        return self._labels[key]

    def cluster_of(self, host: str, kind: str, name: str) -> str:
        """The ``cluster`` field of a key: its label ("" for what is in no cluster)."""
        if kind == CLUSTER:  # its name is the label
            return name
        if kind in VRRP_KINDS:
            return self.label(host, name) or ""
        return ""

    def incident(self, host: str, kind: str, name: str) -> tuple[str, str]:
        """(incident, hosts involved) of an alert for ``kind name`` on ``host``."""
        if kind in SYNTHETIC_KINDS:
            if kind == CLUSTER:
                members = self.hosts.get(name)
                return CLUSTER_VIEW, ",".join(sorted(members)) if members else host
            return CLUSTER_VIEW, host
        if kind in VRRP_KINDS:
            label = self.label(host, name)
            if label is not None:
                members = self.hosts.setdefault(label, set())
                members.add(host)
                hosts = ",".join(sorted(members))
                return hosts, hosts
        return host, host
