"""knotifyd: the router's assembly and lifecycle.

:meth:`Router.open` takes the folders and the journal (:mod:`knotify.runtime`) and builds
the parts on them: the intake (:mod:`knotify.intake`: decode → journal → ack → dispatch),
the executor, the alert engine, the cluster monitor, the input sources
(:mod:`knotify.sources`). :meth:`Router.run` binds the sockets (:mod:`knotify.endpoints`),
runs every loop under the supervisor, and stops them in order. Ops are answered here;
a reload hands each part its new settings.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import signal
import sqlite3
import time
from dataclasses import replace
from typing import Any

from knotify import __version__, ops, sdnotify, spool
from knotify import config as configmod
from knotify import log as logmod
from knotify import metrics as metricsmod
from knotify.alerts.engine import MAX_SLEEP as ALERTS_MAX_SLEEP
from knotify.alerts.engine import AlertEngine
from knotify.cluster.monitor import TICK as CLUSTER_TICK
from knotify.cluster.monitor import ClusterMonitor
from knotify.endpoints import Endpoints, Publisher, SocketSettings
from knotify.errors import ConfigError, JournalError, RouterError
from knotify.event import Event
from knotify.executor import Executor
from knotify.intake import Intake, IntakeSettings, WireIntake
from knotify.intake.keys import FORGET_EVERY
from knotify.intake.recover import resume_runs
from knotify.peers.service import Peers
from knotify.replay import SpoolReplay
from knotify.runtime import Folders, Runtime, journal_refusal, raise_nofile, tune_runtime
from knotify.sources import Inlet, Source
from knotify.sources.fifo import FifoSource
from knotify.sources.spooled import SpoolSource
from knotify.store.db import Database
from knotify.store.events import EventStore
from knotify.store.outbox import Outbox
from knotify.supervisor import Faults, Supervisor
from knotify.tracker import Tracker

FLUSH_INTERVAL = 0.2


class Router:
    #: The parts :meth:`open` builds on the journal.
    database: Database
    journal: EventStore
    outbox: Outbox
    executor: Executor
    alerts: AlertEngine
    cluster: ClusterMonitor
    intake: Intake
    wire: WireIntake
    spool: SpoolSource

    def __init__(self, config: configmod.Config, log: Any = None) -> None:
        self.config = config
        self.log = log = log or logmod.get()
        self.stats = {"received": 0, "batches": 0, "journaled": 0, "duplicates": 0, "rejected": 0,
                      "journal_errors": 0, "spool_replayed": 0, "shed": 0, "shed_periods": 0,
                      "unauthorised": 0, "clock_ahead": 0, "largest_batch": 0,
                      "keys_refused": 0, "keys_forgotten": 0}
        self.faults = Faults(log)
        self.supervisor = Supervisor(log, self.faults, self.fail)
        self.runtime = Runtime(Folders.of(config), log)
        self.endpoints = Endpoints(SocketSettings.of(config), log, self.faults, self.runtime.own)
        self.publisher = Publisher()
        #: The state table: one object for the router's life (a failed batch resets it).
        self.tracker = Tracker(skew_ns=IntakeSettings.of(config).skew_ns)
        self.replay = SpoolReplay(config.hook.spool_dir, config.max_message, self.ingest, log,
                                  self.stats, lambda: self.intake.reset())
        self.sources: list[Source] = []
        #: Router peering ([peers]), or None: this router alone.
        self.peers: Peers | None = None
        self.stop_event = asyncio.Event()
        self.started = time.time()
        self.nofile: int | None = None
        #: Why the router stopped on its own (it then exits 1), or None.
        self.fatal: str | None = None

    def open(self) -> None:
        """Take the folders and the journal and build every part on them (no socket yet:
        :meth:`run` binds them). RouterError says in one line what stands in the way."""
        cfg, log, publish = self.config, self.log, self.publisher.publish
        self.nofile = raise_nofile()
        self.runtime.take(self.replay)
        mode, gid = self.runtime.lock_journal()
        try:  # whatever the file holds: one line, never a traceback
            self.database = database = Database(cfg.journal, cfg.synchronous, mode, gid)
            self.journal = journal = EventStore(database)
            self.outbox = Outbox(database)
            self.tracker.states = journal.load_states()
        except Exception as exc:
            raise journal_refusal(cfg.journal, exc) from None
        self.executor = Executor(journal, self.tracker, log, publish, cfg.max_parallel)
        self.alerts = AlertEngine(cfg.alert_engine, journal, self.tracker, log, publish)
        self.executor.services = replace(self.executor.services, alerts=self.alerts,
                                         silences=self.alerts)
        self.executor.watched = self.publisher.watched
        if cfg.peers is not None:  # peering: the send gate, log and replication
            self.peers = Peers.start(cfg, self.alerts, lambda: self.tracker,
                                     lambda: self.config.cluster, log, self.endpoints.ctx)
        self.cluster = ClusterMonitor(cfg.cluster, cfg.hook.host or os.uname().nodename,
                                      database, self.tracker, self.ingest, log)
        self.intake = Intake(IntakeSettings.of(cfg), self.tracker, journal, self.outbox,
                             self.executor, self.cluster, self.publisher, log, self.stats,
                             functools.partial(self.replay.config_problem, live=True))
        self.wire = WireIntake(self.intake, self._command, ops.access, self.faults, log,
                               self.stats)
        self.spool = SpoolSource(self.replay, self.intake, cfg.spool_interval, self.faults, log)
        inlet = Inlet(self.ingest, cfg.hook.spool_dir, self.faults, log)
        resync_lock = asyncio.Lock()
        self.sources = [self.spool, *(
            FifoSource(f, f.host or cfg.hook.host or os.uname().nodename, cfg.hook.spool_dir,
                       inlet, self.faults, log, resync_lock) for f in cfg.fifos)]

    def ingest(self, events: list[Event]) -> list[bool]:
        """Journal, classify and route a batch: the one way in (:class:`Intake`)."""
        return self.intake.ingest(events)

    def _rejected(self, reason: str, envelope: list[bytes]) -> None:
        self.wire.rejected(reason)

    # -- commands (the CLI's surface) ----------------------------------------------------

    def _command(self, msg: dict[str, Any]) -> bytes:
        """Answer an op (knotify/ops/): a refused request is counted as rejected, a fault
        under ``command``; either way the sender gets an answer and the router serves on."""
        return ops.dispatch(self, msg, lambda reason: self._rejected(reason, []))

    def metrics_snapshot(self) -> metricsmod.Snapshot:
        """What a metrics scrape shows, copied in the event loop."""
        ex, cluster = self.executor, self.cluster
        return metricsmod.Snapshot(
            states=[(key, ks.state, ks.since_ns, ks.prio, ks.epoch)
                    for key, ks in self.tracker.states.items()],
            stats={**self.stats, "curve_refused": self.endpoints.refused},
            faults=dict(self.faults.counts), loops=self.supervisor.view(),
            actions=dict(ex.counts), queued=ex.queued, running=len(ex.active),
            spool_depth=spool.depth(self.config.hook.spool_dir), alerts=self.alerts.info(),
            cluster=cluster.view(), heartbeats=cluster.heartbeats,
            peers=self.peers.info() if self.peers is not None else None)

    def info(self) -> dict[str, Any]:
        ex, cfg = self.executor, self.config
        return {
            "version": __version__, "pid": os.getpid(), "config": cfg.path,
            "uptime_s": round(time.time() - self.started, 3), "journal": cfg.journal,
            "endpoints": self.endpoints.names, "fifos": [f.path for f in cfg.fifos],
            "rules": len(cfg.rules), "keys": len(self.tracker.states),
            "spool_depth": spool.depth(cfg.hook.spool_dir), "spool": self.replay.report(),
            "actions_queued": ex.queued, "actions_running": len(ex.active),
            "action_outcomes": dict(ex.counts), "alerts": self.alerts.info(),
            "faults": dict(self.faults.counts), "loops": self.supervisor.view(),
            "open_files_limit": self.nofile, "curve_refused": self.endpoints.refused,
            "peers": self.peers.info() if self.peers is not None else None,
            **self.stats,
        }

    def reload(self) -> tuple[bool, str]:
        path = None if self.config.path == configmod.EMBEDDED else self.config.path
        try:
            new = configmod.load(path)
        except ConfigError as exc:
            self.log.error("config.reload_refused", error=str(exc),
                           detail="the running config stays in force")
            return False, f"new config refused, old one kept: {exc}"
        fixed = configmod.restart_needed(self.config, new)
        self.config = config = configmod.reloaded(self.config, new)
        # Each part gets its new settings, through its own method.
        self.intake.apply(IntakeSettings.of(config))
        self.spool.apply(config.spool_interval)
        self.alerts.apply(config.alert_engine)
        self.cluster.apply(config.cluster)
        self.endpoints.apply(config.curve)
        detail = f"config reloaded: {len(new.rules)} rules"
        if fixed:
            detail += f"; changes to {', '.join(fixed)} need a restart"
        self.log.info("config.reloaded", rules=len(new.rules), restart_needed=fixed or None)
        return True, detail

    # -- lifecycle ----------------------------------------------------------------------

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(self.faults.loop_exception)
        self.open()
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGTERM, self.stop)
            loop.add_signal_handler(signal.SIGINT, self.stop)
            loop.add_signal_handler(signal.SIGHUP, self.reload)
        cfg = self.config
        try:
            try:
                self.intake.keys.unpin_states()
                resume_runs(self.journal, self.executor, cfg.rules, self.log)
            except (sqlite3.DatabaseError, JournalError) as exc:
                raise journal_refusal(cfg.journal, exc) from None
            replayed = self.spool.replay_now()
            self.endpoints.bind()
            self.publisher.bind(cfg.pub_endpoint, self.runtime.own,
                                0o660 if cfg.group else 0o600)
            metrics = (await metricsmod.start(self.metrics_snapshot, self.faults, cfg.metrics,
                                              self.log) if cfg.metrics.listen else None)
            self.log.info(
                "router.started", version=__version__, pid=os.getpid(), config=cfg.path,
                endpoints=self.endpoints.names, journal=cfg.journal, rules=len(cfg.rules),
                keys=len(self.tracker.states), spool_replayed=replayed,
                fifos=[f.path for f in cfg.fifos], open_files_limit=self.nofile,
            )
            tune_runtime()
            self._start_loops(metrics)
            sdnotify.notify(f"READY=1\nMAINPID={os.getpid()}\nSTATUS=serving")
            await self.stop_event.wait()
        finally:
            await self.close()
        if self.fatal is not None:
            raise RouterError(f"the router stopped: {self.fatal}")

    def _start_loops(self, metrics: asyncio.Server | None) -> None:
        """Every background task, each under the supervisor (restarted if it dies)."""
        sup = self.supervisor
        self.endpoints.start(sup, self.wire.handle, self.stop_event.is_set)
        for source in self.sources:
            sup.spawn(source.name, functools.partial(source.run, sup.beater(source.name)),
                      source.quiet)
        sup.every("flush", FLUSH_INTERVAL, self.intake.flush)
        self.alerts.beat = sup.beater("alerts")
        sup.spawn("alerts", self.alerts.run, ALERTS_MAX_SLEEP)
        sup.every("cluster", CLUSTER_TICK, self.cluster.tick)
        sup.every("forget", FORGET_EVERY, self.intake.keys.forget_deleted)
        if self.peers is not None:
            self.peers.spawn(sup)
        if metrics is not None:
            sup.spawn("metrics", metrics.serve_forever)
        sup.every("watchdog", min(1.0, sdnotify.watchdog_interval() or 1.0), sup.watchdog)

    def fail(self, reason: str) -> None:
        """Stop the router because it cannot go on as it is; ``knotify run`` exits 1."""
        if self.fatal is None:
            self.fatal = reason
        self.stop()

    def stop(self) -> None:
        if not self.stop_event.is_set():
            self.log.info("router.stopping", drain_timeout=self.config.drain_timeout)
            with contextlib.suppress(OSError):
                sdnotify.notify("STOPPING=1")
        self.stop_event.set()
        if hasattr(self, "executor"):
            # Nothing new starts from the signal on (not only once the shutdown reaches
            # drain(): an action ending meanwhile would let the next one of its key start).
            self.executor.stopping = True

    async def close(self) -> None:
        """Stop every loop, let running actions finish (up to drain_timeout), close."""
        await self.supervisor.stop()
        self.endpoints.close()
        self.publisher.close()
        running = len(self.executor.active)
        await self.executor.drain(self.config.drain_timeout)
        self.log.info("router.drained", were_running=running, left_pending=self.executor.queued)
        await self.alerts.stop(self.config.drain_timeout)
        self.database.close()
        self.runtime.release()
        self.log.info("router.stopped")
