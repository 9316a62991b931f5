"""The cluster view: many keepalived hosts reporting to one router.

:mod:`~knotify.cluster.settings` reads ``[cluster]`` and ``[agent]``;
:mod:`~knotify.cluster.detect` works out split brain, no master and silent peers
(pure), over the values in :mod:`~knotify.cluster.members`;
:mod:`~knotify.cluster.heartbeat` is the heartbeat wire op;
:mod:`~knotify.cluster.monitor` runs the detector inside the router.
"""

from __future__ import annotations

from knotify.cluster.detect import Detector
from knotify.cluster.settings import AgentSettings, ClusterSettings, GroupSpec

__all__ = ["AgentSettings", "ClusterSettings", "Detector", "GroupSpec"]
