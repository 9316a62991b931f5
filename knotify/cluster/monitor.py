"""The cluster view inside the router: feeds the :class:`Detector`, journals what it makes.

Heartbeats only touch memory. The hosts that heartbeat are remembered in the journal
(:mod:`knotify.store.peers`, written when a new one appears), so that after a restart
the router still expects them: their silence clock starts at the router's start.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from knotify.cluster import heartbeat
from knotify.cluster.detect import Detector
from knotify.errors import JournalError, WireError
from knotify.event import Event, reply
from knotify.store.db import Database
from knotify.store.peers import PeerStore
from knotify.tracker import Tracker, Transition

if TYPE_CHECKING:
    from knotify.cluster.settings import ClusterSettings

TICK = 0.5


class ClusterMonitor:
    def __init__(self, settings: ClusterSettings, origin: str, database: Database,
                 tracker: Tracker,
                 ingest: Callable[[list[Event]], list[bool]], log: Any) -> None:
        self.peers: PeerStore | None = None
        self._tracker = tracker
        self._ingest = ingest
        self.log = log
        self.heartbeats = 0
        try:
            self.peers = PeerStore(database)
            known = self.peers.hosts()
        except sqlite3.Error as exc:  # the watch list is a convenience: start without it
            log.warning("cluster.peers_unavailable", error=str(exc))
            known = []
        self.detector = Detector(settings, origin, time.time_ns(), tracker.states,
                                 known)
        self._failing = False

    @property
    def settings(self) -> ClusterSettings:
        return self.detector.settings

    def observe(self, ev: Event, tr: Transition) -> None:
        self.detector.observe(ev, tr, time.time_ns())

    def heartbeat(self, msg: dict[str, Any]) -> bytes:
        beat = heartbeat.decode(msg)
        self.heartbeats += 1
        self.detector.heard(beat.host, time.time_ns(), beat)
        return reply(True, host=beat.host, silent_after_s=self.settings.silent_after)

    def view(self) -> dict[str, Any]:
        return self.detector.view(self._tracker.states, time.time_ns())

    def forget(self, msg: dict[str, Any]) -> bytes:
        host = msg.get("host")
        if not isinstance(host, str) or not host:
            raise WireError("peer_forget needs 'host' (a string)")
        events = self.detector.forget(host, time.time_ns())
        try:
            if self.peers is not None:
                self.peers.forget(host)
            if events:
                self._ingest(events)
        except JournalError as exc:
            return reply(False, error=f"journal unavailable: {exc}")
        if not events:
            return reply(False, error=f"{host!r} is not a watched peer")
        self.log.info("cluster.peer_forgotten", host=host)
        return reply(True, host=host)

    def apply(self, settings: ClusterSettings) -> None:
        """A reload's new ``[cluster]``."""
        self.detector.reconfigure(settings, time.time_ns())

    def tick(self) -> list[Event]:
        """Persist newly watched hosts, then journal and route what the detector makes."""
        detector = self.detector
        if detector.new_watched:
            hosts, detector.new_watched = detector.new_watched, []
            try:
                if self.peers is None:
                    raise JournalError("the cluster_peers table is unavailable")
                self.peers.add(hosts, time.time_ns())
            except (JournalError, sqlite3.Error):
                detector.new_watched[:0] = hosts  # again on the next tick
            else:
                for host in hosts:
                    self.log.info("cluster.peer_watched", host=host)
        events = detector.tick(self._tracker.states, time.time_ns())
        if not events:
            return []
        try:
            self._ingest(events)
        except JournalError as exc:
            if not self._failing:
                self.log.warning("cluster.journal_failed", error=str(exc),
                                 detail="cluster events are made again on the next tick")
            self._failing = True
            return []
        self._failing = False
        detector.confirm(events)
        return events

    async def run(self) -> None:
        while True:
            await asyncio.sleep(TICK)
            try:
                self.tick()
            except Exception:  # a bug here must not take the router down
                self.log.exception("cluster.tick_failed")
