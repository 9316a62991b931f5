"""knotifyd: intake → journal → ack → state tracker → rules → actions.

One asyncio loop. Intake reads everything that is waiting on a socket, journals
the whole batch in one transaction (group commit), then acks: nothing is acked
before it is on disk. Actions run in :class:`~knotify.executor.Executor`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import functools
import gc
import grp
import json
import os
import signal
import time
from typing import Any

import zmq
import zmq.asyncio
from zmq.auth.asyncio import AsyncioAuthenticator

from knotify import __version__, hook, resync, spool, transport
from knotify import config as configmod
from knotify import log as logmod
from knotify import metrics as metricsmod
from knotify.actions.base import Outcome
from knotify.alerts.engine import OPS as ALERT_OPS
from knotify.alerts.engine import AlertEngine
from knotify.cluster.monitor import ClusterMonitor
from knotify.event import (
    Event,
    WireError,
    acked,
    decode_event,
    decode_message,
    encode,
    reply,
)
from knotify.executor import Executor, Run
from knotify.fifo import RESYNC_DELAY, AsyncFifoReader, event_from_line
from knotify.journal import Journal, JournalError
from knotify.rules import fired
from knotify.schema import ConfigError
from knotify.tracker import INVALID_CLASS, STALE, TRANSITION, Tracker, Transition

MAX_BATCH = 2000
FLUSH_INTERVAL = 0.2
PRUNE_EVERY = 10_000
GC_THRESHOLD = 20_000
NOBLOCK = int(zmq.NOBLOCK)
RCVMORE = int(zmq.RCVMORE)
SNDMORE_NOBLOCK = int(zmq.SNDMORE | zmq.NOBLOCK)
#: glibc mallopt parameters (malloc.h) and the free memory kept at the top of the heap.
M_TRIM_THRESHOLD, M_TOP_PAD = -1, -2
MALLOC_PAD = 8 * 1024 * 1024
ZAP_DOMAIN = "knotify"
SHED_INTERVAL = 0.05
SUBSCRIPTIONS_EVERY = 0.1
#: Config values a reload applies at once, and those that need a restart (and are reported).
LIVE = ("rules", "defaults", "alerts", "receivers", "spool_interval", "drain_timeout",
        "max_backlog",
        "keep_events", "cluster", "agent")
RESTART_ONLY = ("runtime_dir", "state_dir", "listen", "curve", "insecure", "group", "journal",
                "fifos", "synchronous", "max_message", "max_parallel", "metrics")


def _fields(ev: Event, tr: Transition, fields: dict[str, Any] | None = None
            ) -> dict[str, Any]:
    """What describes an event in the log and to watchers (added to ``fields``)."""
    own = {"event_id": ev.id, "host": ev.host, "kind": ev.kind, "name": ev.name,
           "state": ev.state, "prio": ev.prio, "class": tr.cls, "seq": ev.seq,
           "source": ev.source}
    if fields is None:
        fields = own
    else:
        fields.update(own)
    if ev.vs:
        fields["vs"] = ev.vs
    if ev.extra.get("detail"):
        fields["detail"] = str(ev.extra["detail"])  # what a CLUSTER or PEER event means
    return fields


def tune_runtime() -> None:
    """Settings for a process that handles thousands of small events a second.

    Fewer cyclic garbage collections: each event allocates a few dozen short-lived
    containers, and at the default threshold (700) collections took ~12% of the router's
    time at full intake; what start-up loaded (modules, config) is frozen out of them.
    And glibc's malloc keeps some free memory at the top of its heap instead of giving
    it back after every batch and asking for it again (~5% of the time at full intake).
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, 20, 20)
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(M_TOP_PAD, MALLOC_PAD)
        libc.mallopt(M_TRIM_THRESHOLD, 2 * MALLOC_PAD)
    except (OSError, AttributeError):
        pass  # not glibc: its defaults stay


class RouterError(RuntimeError):
    """The router cannot start; the message says why and what to do."""


class Router:
    def __init__(self, config: configmod.Config, log: Any = None) -> None:
        self.config = config
        self.log = log or logmod.get()
        self.tracker = Tracker()
        self.journal: Journal | None = None
        self.executor: Executor | None = None
        self.alerts: AlertEngine | None = None
        self.cluster: ClusterMonitor | None = None
        self.ctx = zmq.asyncio.Context()
        self.sockets: list[zmq.asyncio.Socket] = []
        self.pub: zmq.Socket[bytes] | None = None
        self._sync_ctx: zmq.Context[zmq.Socket[bytes]] | None = None
        self.stop_event = asyncio.Event()
        self.started = time.time()
        self.stats = {"received": 0, "batches": 0, "journaled": 0, "duplicates": 0, "rejected": 0,
                      "journal_errors": 0, "spool_replayed": 0, "shed": 0, "shed_periods": 0}
        self.fifo_readers: list[AsyncFifoReader] = []
        self._lock_fd: int | None = None
        self.auth: AsyncioAuthenticator | None = None
        self._clients_mark: tuple[int, int] | None = None
        self._resync_lock = asyncio.Lock()
        self._log_settings = (config.log_format, config.log_level)
        self._tasks: list[asyncio.Task[Any]] = []
        self._since_prune = 0
        self._journal_failing = False
        self._shedding = False
        self._subscriptions: set[bytes] = set()
        self._subs_checked = 0.0

    # -- start-up -----------------------------------------------------------------------

    def _gid(self) -> int:
        return grp.getgrnam(self.config.group).gr_gid if self.config.group else -1

    def _own(self, path: str, mode: int) -> None:
        """Set mode (and the configured group) on a path this process owns."""
        st = os.stat(path)
        if st.st_uid != os.geteuid():
            return
        gid = self._gid()
        if gid >= 0 and st.st_gid != gid:
            os.chown(path, -1, gid)
        os.chmod(path, mode)

    def _take_runtime_dir(self) -> None:
        rundir = self.config.runtime_dir
        os.makedirs(rundir, mode=0o750, exist_ok=True)
        self._own(rundir, 0o750)
        # The hook may run as another user (keepalived_script): with a group set, the
        # spool is writable by that group and the socket connectable by it.
        os.makedirs(self.config.state_dir, mode=0o750, exist_ok=True)
        spool_dir = self.config.hook.spool_dir
        os.makedirs(spool_dir, mode=0o750, exist_ok=True)
        if self.config.group:
            self._own(self.config.state_dir, 0o750)
            self._own(spool_dir, 0o2770)
            for sub in ("tmp", "new"):
                os.makedirs(os.path.join(spool_dir, sub), exist_ok=True)
                self._own(os.path.join(spool_dir, sub), 0o2770)
            seq = os.path.join(spool_dir, spool.SEQ_FILE)
            os.close(os.open(seq, os.O_RDWR | os.O_CREAT, 0o660))
            self._own(seq, 0o660)
        fd = os.open(os.path.join(rundir, "router.lock"), os.O_RDWR | os.O_CREAT, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise RouterError(
                f"another knotify router (pid {holder}) is running on {rundir}; refusing to "
                "take over its socket (stop it first, or give this one another runtime_dir)"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def _bind(self) -> None:
        control = self.config.control_endpoint
        path = control[len("ipc://"):]
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # stale: we hold the lock, so no live router owns it
        curve = self.config.curve
        if curve is not None and any(e.startswith("tcp://") for e in self.config.listen):
            public, secret = transport.load_secret(curve.secret_key)
            self.auth = AsyncioAuthenticator(self.ctx)
            self.auth.start()
            self.auth.configure_curve(domain=ZAP_DOMAIN, location=curve.clients)
            self._watch_clients()
            self.log.info("curve.enabled", clients=transport.clients_in(curve.clients),
                          keys=curve.clients)
        for endpoint in [control, *self.config.listen]:
            sock = self.ctx.socket(zmq.ROUTER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.MAXMSGSIZE, self.config.max_message)
            sock.setsockopt(zmq.RCVHWM, 100_000)
            sock.setsockopt(zmq.SNDHWM, 100_000)
            if endpoint.startswith("tcp://"):
                if curve is not None:
                    sock.curve_server = True
                    sock.curve_publickey = public
                    sock.curve_secretkey = secret
                    sock.zap_domain = ZAP_DOMAIN.encode()
                else:
                    self.log.warning("tcp.insecure", endpoint=endpoint,
                                     reason="insecure = true: anyone who reaches it can send")
            try:
                sock.bind(endpoint)
            except zmq.ZMQError as exc:
                sock.close()
                raise RouterError(f"cannot bind {endpoint}: {exc}") from None
            if endpoint.startswith("ipc://") and not endpoint.startswith("ipc://@"):
                self._own(endpoint[len("ipc://"):], 0o660 if self.config.group else 0o600)
            self.sockets.append(sock)
        self._sync_ctx = zmq.Context()
        # XPUB: a PUB that tells who subscribed, so nothing is encoded for nobody.
        self.pub = self._sync_ctx.socket(zmq.XPUB)
        self.pub.setsockopt(zmq.LINGER, 0)
        self.pub.setsockopt(zmq.SNDHWM, 10_000)
        pub_path = self.config.pub_endpoint[len("ipc://"):]
        with contextlib.suppress(FileNotFoundError):
            os.unlink(pub_path)
        self.pub.bind(self.config.pub_endpoint)
        self._own(pub_path, 0o660 if self.config.group else 0o600)

    def _recover(self) -> None:
        assert self.journal is not None and self.executor is not None
        interrupted = self.journal.interrupt_running()
        if interrupted:
            self.log.warning("runs.interrupted", count=interrupted,
                             reason="router stopped while they ran; not repeated")
        rules = {rule.id: rule for rule in self.config.rules}
        resumed = 0
        for rowid, event_id, rule_id, idx, kind in self.journal.pending_runs():
            loaded = self.journal.load_event(event_id)
            rule = rules.get(rule_id)
            if loaded is None or rule is None or idx >= len(rule.actions) \
                    or rule.actions[idx].kind != kind:
                from knotify.actions.base import SKIPPED, Outcome

                with self.journal.transaction():
                    self.journal.finish_run(rowid, Outcome(
                        SKIPPED, detail="its rule or action is no longer in the config"),
                        None, time.time_ns())
                continue
            ev, tr = loaded
            self.executor.submit(Run(rowid, ev, tr, rule, idx, rule.actions[idx],
                                     time.monotonic()))
            resumed += 1
        if resumed:
            self.log.info("runs.resumed", count=resumed)

    # -- intake -------------------------------------------------------------------------

    def ingest(self, events: list[Event]) -> list[bool]:
        """Journal, classify and route a batch in one transaction; True per new event.

        Raises JournalError (and forgets the batch's effect on state) if the commit fails.
        """
        assert self.journal is not None and self.executor is not None
        results: list[bool] = []
        accepted: list[tuple[Event, Transition]] = []
        runs: list[Run] = []
        # Instant actions' outcomes, counted; kept whole only for watchers (each object
        # kept alive to the end of a batch costs garbage-collection time).
        watched = self.watched()
        instant: list[Run] = []
        inline: list[tuple[Run, Outcome]] = []
        inline_counts: dict[str, int] = {}
        queued_keys: set[Any] = set()
        rules = self.config.rules
        now_mono = time.monotonic()
        now_ns = time.time_ns()
        try:
            # What is logged about the batch (and log actions' lines) is written only once
            # the batch is committed, and dropped with it if the commit fails.
            with logmod.held(self.log), self.journal.transaction():
                self.executor.flush()
                known = self.journal.seen_many([ev.id for ev in events])
                batch_ids: set[str] = set()
                for ev in events:
                    if ev.id in known or ev.id in batch_ids:
                        results.append(False)
                        continue
                    batch_ids.add(ev.id)
                    tr = self.tracker.observe(ev)
                    self.journal.add_event(ev, tr)
                    accepted.append((ev, tr))
                    results.append(True)
                    if tr.cls in (STALE, INVALID_CLASS):
                        continue
                    current = self.tracker.states.get(ev.key)
                    if current is not None:
                        self.journal.put_state(ev.key, current)
                    for rule in fired(rules, ev, tr):
                        for idx, action in enumerate(rule.actions):
                            # An instant action with nothing of its key ahead of it runs
                            # below, before the commit; its run is journaled with its
                            # outcome, in one row.
                            if (action.inline and rule.plain and ev.key not in queued_keys
                                    and self.executor.idle(ev.key)):
                                instant.append(Run(self.journal.reserve_run(), ev, tr, rule,
                                                   idx, action, now_mono, now_ns))
                            else:
                                rowid = self.journal.add_run(ev.id, rule.id, idx, action.kind)
                                queued_keys.add(ev.key)
                                runs.append(Run(rowid, ev, tr, rule, idx, action, now_mono))
                # (Three passes over the batch rather than one: measurably faster.)
                for ev, tr in accepted:
                    self._announce(ev, tr)
                for run in instant:
                    outcome = self.executor.run_inline(run)
                    self.journal.add_finished_run(run.rowid, run.event.id, run.rule.id,
                                                  run.index, run.action.kind, outcome, now_ns,
                                                  time.time_ns())
                    inline_counts[outcome.status] = inline_counts.get(outcome.status, 0) + 1
                    if watched:
                        inline.append((run, outcome))
        except JournalError as exc:
            self.stats["journal_errors"] += 1
            self.tracker = Tracker(self._reload_states())
            if not self._journal_failing:
                self.log.error("journal.write_failed", error=str(exc), events=len(events),
                               hint="events are not acked; hooks spool them until it recovers")
            self._journal_failing = True
            raise
        if self._journal_failing:
            self.log.warning("journal.recovered")
            self._journal_failing = False
        self.stats["batches"] += 1
        self.stats["journaled"] += len(accepted)
        self.stats["duplicates"] += len(events) - len(accepted)
        for ev, tr in accepted:
            if watched:
                self.publish("event", {**_fields(ev, tr), "prev_state": tr.prev_state,
                                       "effective": tr.state, "ts_ns": ev.ts_ns})
            if self.cluster is not None:
                self.cluster.observe(ev, tr)
        self.executor.ran_inline(inline_counts, inline)
        for run in runs:
            self.executor.submit(run)
        self._since_prune += len(accepted)
        if self._since_prune >= PRUNE_EVERY:
            self._since_prune = 0
            self._prune()
        return results

    def _reload_states(self) -> dict[Any, Any]:
        assert self.journal is not None
        try:
            return self.journal.load_states()
        except Exception:
            return self.tracker.states

    def _announce(self, ev: Event, tr: Transition) -> None:
        """Log what ``ev`` is."""
        if tr.cls == TRANSITION:
            fields = _fields(ev, tr, {"prev": tr.prev_state})
            duration = tr.duration_s(ev.ts_ns)
            fields["after_s"] = round(duration, 3) if duration is not None else None
            logmod.emit(self.log, "info", "event.transition", fields)
        elif tr.cls == INVALID_CLASS:
            self.log.warning("event.invalid", error=ev.error, argv=ev.argv, raw=ev.raw,
                             **_fields(ev, tr))
        elif tr.cls == STALE:
            self.log.warning("event.stale", now=tr.state, **_fields(ev, tr),
                             reason="older than the state already known for this key")
        elif logmod.enabled(self.log, "debug"):
            logmod.emit(self.log, "debug", "event." + tr.cls, _fields(ev, tr))

    def watched(self) -> bool:
        """Whether anyone subscribes to the PUB socket (so that messages are worth making)."""
        if self.pub is None:
            return False
        now = time.monotonic()
        if now - self._subs_checked > SUBSCRIPTIONS_EVERY:
            self._subs_checked = now
            self._read_subscriptions()
        return bool(self._subscriptions)

    def publish(self, topic: str, data: dict[str, Any]) -> None:
        if not self.watched():
            return
        assert self.pub is not None
        with contextlib.suppress(zmq.ZMQError):
            self.pub.send_multipart([topic.encode(), encode(data)], flags=zmq.NOBLOCK)

    def _read_subscriptions(self) -> None:
        """XPUB passes on the first subscribe and last unsubscribe of each topic prefix."""
        assert self.pub is not None
        while True:
            try:
                msg = self.pub.recv(zmq.NOBLOCK)
            except zmq.ZMQError:
                return
            if msg[:1] == b"\x01":
                self._subscriptions.add(msg[1:])
            elif msg[:1] == b"\x00":
                self._subscriptions.discard(msg[1:])

    def _prune(self) -> None:
        assert self.journal is not None
        try:
            dropped = self.journal.prune(self.config.keep_events)
        except JournalError as exc:
            self.log.warning("journal.prune_failed", error=str(exc))
            return
        if dropped:
            self.log.info("journal.pruned", events=dropped, keep=self.config.keep_events)

    async def _serve(self, sock: zmq.asyncio.Socket) -> None:
        # The same socket without asyncio's futures, to drain and answer a batch cheaply.
        raw: zmq.Socket[bytes] = zmq.Socket.shadow(sock.underlying)
        while True:
            try:
                frames = await sock.recv_multipart()
            except zmq.ZMQError as exc:
                if exc.errno == zmq.ETERM or self.stop_event.is_set():
                    return
                self.log.warning("socket.recv_failed", error=str(exc))
                continue
            batch = [frames]
            recv, more = raw.recv, raw.get
            while len(batch) < MAX_BATCH:  # (recv_multipart, but with int flags: cheaper)
                try:
                    frames = [recv(NOBLOCK)]
                except zmq.Again:
                    break
                while more(RCVMORE):
                    frames.append(recv(NOBLOCK))
                batch.append(frames)
            self._handle(raw, batch)
            await asyncio.sleep(0)  # let actions and other sockets have a turn

    def _overloaded(self) -> bool:
        """Over ``max_backlog`` actions waiting: refuse new events (hooks spool them).

        Memory stays bounded under any storm; the spool on disk is the buffer. Once
        shedding, stay so until the backlog is down to a fifth *and* the spool is
        replayed, so that events are still journaled in the order they happened.
        """
        queued = self.executor.queued if self.executor is not None else 0
        if not self._shedding and queued > self.config.max_backlog:
            self._shedding = True
            self.stats["shed_periods"] += 1
            self.log.warning("intake.shedding", actions_queued=queued,
                             reason="actions fall behind; new events go to the spool")
        return self._shedding

    def _handle(self, sock: zmq.Socket[bytes], batch: list[list[bytes]]) -> None:
        replies: list[list[bytes]] = []
        # (envelope, the event, None) for "event", (envelope, events, rejected) for "events"
        pending: list[tuple[list[bytes], Any, list[dict[str, Any]] | None]] = []
        events: list[Event] = []
        commands: list[tuple[list[bytes], dict[str, Any]]] = []
        now = time.time_ns()
        limit = self.config.max_message
        self.stats["received"] += len(batch)
        for frames in batch:
            envelope, payload = frames[:-1], frames[-1]
            try:
                msg = decode_message(payload, limit)
                op = msg["op"]
                if op == "event":
                    ev = decode_event(msg.get("event"), now)
                    pending.append((envelope, ev, None))
                    events.append(ev)
                elif op == "events":
                    items = msg.get("events")
                    if not isinstance(items, list):
                        raise WireError("'events' must be a list")
                    good: list[Event] = []
                    bad: list[dict[str, Any]] = []
                    for i, item in enumerate(items):
                        try:
                            good.append(decode_event(item, now))
                        except WireError as exc:
                            bad.append({"index": i, "error": str(exc)})
                            self._rejected(str(exc), envelope)
                    pending.append((envelope, good, bad))
                    events.extend(good)
                else:
                    commands.append((envelope, msg))
            except WireError as exc:
                self._rejected(str(exc), envelope)
                replies.append([*envelope, reply(False, error=str(exc))])
        if events and self._overloaded():
            self.stats["shed"] += len(events)
            for envelope, _item, _bad in pending:
                replies.append([*envelope, reply(False, error="busy: spool it and retry later")])
            pending = []
        elif events:
            try:
                self.ingest(events)
            except JournalError as exc:
                for envelope, _item, _bad in pending:
                    replies.append([*envelope, reply(False, error=f"journal unavailable: {exc}")])
                pending = []
        for envelope, item, rejected in pending:
            if rejected is None:
                replies.append([*envelope, acked(item.id)])
            else:
                replies.append([*envelope, reply(True, ids=[e.id for e in item],
                                                 rejected=rejected)])
        if commands and self.executor is not None:
            with contextlib.suppress(JournalError):
                self.executor.flush()  # answers show every outcome known so far
        for envelope, msg in commands:
            replies.append([*envelope, self._command(msg)])
        # Frame by frame with plain int flags: send_multipart costs three times as much.
        send = sock.send
        for frames in replies:
            with contextlib.suppress(zmq.ZMQError):
                for frame in frames[:-1]:
                    send(frame, SNDMORE_NOBLOCK)
                send(frames[-1], NOBLOCK)

    def _rejected(self, reason: str, envelope: list[bytes]) -> None:
        self.stats["rejected"] += 1
        self.log.warning("wire.rejected", reason=reason)

    # -- commands (the CLI's surface) ----------------------------------------------------

    def _command(self, msg: dict[str, Any]) -> bytes:
        assert self.journal is not None
        op = msg["op"]
        try:
            if op == "ping":
                return reply(True, version=__version__, pid=os.getpid(),
                             uptime_s=round(time.time() - self.started, 3))
            if op == "status":
                return reply(True, states=self.journal.status(), router=self.info(),
                             cluster=self.cluster.view() if self.cluster else {})
            if op == "heartbeat" and self.cluster is not None:
                return self.cluster.heartbeat(msg)
            if op == "peer_forget" and self.cluster is not None:
                return self.cluster.forget(msg)
            if op == "history":
                limit = msg.get("limit", 50)
                if type(limit) is not int or not 1 <= limit <= 100_000:
                    raise WireError("history 'limit' must be an integer 1..100000")
                filters = {k: msg.get(k) for k in ("host", "kind", "name")}
                for k, v in filters.items():
                    if v is not None and not isinstance(v, str):
                        raise WireError(f"history {k!r} must be a string")
                return reply(True, events=self.journal.history(limit, **filters))
            if op == "stats":
                return reply(True, router=self.info())
            if op == "reload":
                ok, detail = self.reload()
                return reply(ok, detail=detail) if ok else reply(False, error=detail)
            if op in ALERT_OPS and self.alerts is not None:
                return reply(True, **self.alerts.command(op, msg))
            raise WireError(f"unknown op {op[:40]!r}")
        except WireError as exc:
            self._rejected(str(exc), [])
            return reply(False, error=str(exc))

    def info(self) -> dict[str, Any]:
        ex = self.executor
        return {
            "version": __version__, "pid": os.getpid(), "config": self.config.path,
            "uptime_s": round(time.time() - self.started, 3), "journal": self.config.journal,
            "endpoints": [self.config.control_endpoint, *self.config.listen],
            "fifos": [f.path for f in self.config.fifos], "rules": len(self.config.rules),
            "keys": len(self.tracker.states),
            "spool_depth": spool.depth(self.config.hook.spool_dir),
            "actions_queued": ex.queued if ex else 0,
            "actions_running": len(ex.active) if ex else 0,
            "action_outcomes": dict(ex.counts) if ex else {},
            "alerts": self.alerts.info() if self.alerts else {},
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
        fixed = [name for name in RESTART_ONLY if getattr(new, name) != getattr(self.config, name)]
        if new.hook.spool_dir != self.config.hook.spool_dir:
            fixed.append("hook.spool_dir")
        if (new.log_format, new.log_level) != self._log_settings:
            fixed.append("log")
        for name in LIVE:
            setattr(self.config, name, getattr(new, name))
        self.config.hook.ack_timeout = new.hook.ack_timeout
        self.config.hook.host = new.hook.host
        self.config.hook.endpoints = new.hook.endpoints
        if self.cluster is not None:
            self.cluster.reload(self.config.cluster)
        if self.auth is not None and self.config.curve is not None:
            # New client keys dropped into the folder take effect on reload.
            self.auth.configure_curve(domain=ZAP_DOMAIN, location=self.config.curve.clients)
        detail = f"config reloaded: {len(new.rules)} rules"
        if fixed:
            detail += f"; changes to {', '.join(fixed)} need a restart"
        self.log.info("config.reloaded", rules=len(new.rules), restart_needed=fixed or None)
        return True, detail

    # -- spool and FIFO sources -----------------------------------------------------------

    def replay_spool(self) -> int:
        """Journal what the hooks spooled; files are removed only after the commit."""
        total = 0
        spool_dir = self.config.hook.spool_dir
        while True:
            if self.executor is not None and self.executor.queued > self.config.max_backlog:
                self._overloaded()  # the rest waits where it is, in order
                return total
            paths = spool.pending(spool_dir, limit=MAX_BATCH)
            if not paths:
                return total
            events: list[Event] = []
            done: list[str] = []
            now = time.time_ns()
            for path, content in spool.read(paths):
                try:
                    data = json.loads(content)
                    ev = decode_event(data, now)
                except (ValueError, WireError) as exc:
                    self._quarantine(path, str(exc))
                    continue
                ev.extra = {**ev.extra, "via": "spool"}
                events.append(ev)
                done.append(path)
            if events:
                try:
                    self.ingest(events)
                except JournalError:
                    return total  # files stay; retried on the next scan
            spool.remove(done)
            self.stats["spool_replayed"] += len(events)
            total += len(events)
            if len(paths) < MAX_BATCH:
                return total

    def _quarantine(self, path: str, reason: str) -> None:
        bad = os.path.join(self.config.hook.spool_dir, "bad")
        os.makedirs(bad, mode=0o750, exist_ok=True)
        with contextlib.suppress(OSError):
            os.rename(path, os.path.join(bad, os.path.basename(path)))
        self.log.error("spool.bad_file", path=path, reason=reason,
                       moved_to=bad)

    def _watch_clients(self) -> None:
        """Re-read the authorised client keys when their folder changes."""
        curve = self.config.curve
        if self.auth is None or curve is None:
            return
        try:
            st = os.stat(curve.clients)
            mark = (st.st_mtime_ns, st.st_ino)
        except OSError:
            mark = (0, 0)
        if mark != self._clients_mark:
            if self._clients_mark is not None:
                self.auth.configure_curve(domain=ZAP_DOMAIN, location=curve.clients)
                self.log.info("curve.clients_changed",
                              clients=transport.clients_in(curve.clients))
            self._clients_mark = mark

    async def _spool_loop(self) -> None:
        while True:
            await asyncio.sleep(SHED_INTERVAL if self._shedding else self.config.spool_interval)
            self._watch_clients()
            queued = self.executor.queued if self.executor is not None else 0
            if self._shedding and queued > self.config.max_backlog // 5:
                continue  # replaying now would only grow the backlog again
            try:
                count = self.replay_spool()
            except OSError as exc:
                self.log.warning("spool.scan_failed", error=str(exc))
                continue
            if count:
                self.log.info("spool.replayed", events=count)
            if self._shedding and not spool.pending(self.config.hook.spool_dir, limit=1):
                self._shedding = False
                self.log.info("intake.resumed", actions_queued=queued)

    def _fifo_lines(self, lines: list[tuple[str, int, int]], host: str) -> None:
        spool_dir = self.config.hook.spool_dir
        wire = [event_from_line(line, host, spool.next_seq(spool_dir), ts, mono)
                for line, ts, mono in lines]
        events = [decode_event(w) for w in wire]
        try:
            self.ingest(events)
        except JournalError:
            # Never drop a FIFO line: it waits in the spool until the journal is back.
            for w in wire:
                try:
                    spool.write(spool_dir, w)
                except OSError as exc:
                    self.log.critical("fifo.line_lost", line=w.get("raw"), error=str(exc))

    def _schedule_resync(self, source: configmod.FifoSource, host: str) -> None:
        self._tasks.append(asyncio.get_running_loop().create_task(self._resync(source, host)))

    async def _resync(self, source: configmod.FifoSource, host: str) -> None:
        """After a FIFO (re)opens: read what waited in it, then ask keepalived for its states."""
        await asyncio.sleep(RESYNC_DELAY)
        log = self.log.bind(fifo=source.path)
        async with self._resync_lock:  # one JSON dump file per host: one request at a time
            try:
                pid = resync.read_pidfile(source.pidfile)
                instances = await asyncio.get_running_loop().run_in_executor(
                    None, resync.snapshot, pid, source.json_file)
            except resync.ResyncError as exc:
                log.warning("resync.failed", error=str(exc))
                return
        spool_dir = self.config.hook.spool_dir
        wire = resync.wire_events(instances, host, lambda: spool.next_seq(spool_dir),
                                  hook.new_id)
        try:
            self.ingest([decode_event(w) for w in wire])
        except JournalError:
            for w in wire:
                with contextlib.suppress(OSError):
                    spool.write(spool_dir, w)
        log.info("resync.done", instances=len(instances), host=host)

    async def _flush_loop(self) -> None:
        assert self.executor is not None
        while True:
            await asyncio.sleep(FLUSH_INTERVAL)
            try:
                self.executor.flush()
            except JournalError as exc:
                self.log.warning("journal.flush_failed", error=str(exc))

    # -- main -------------------------------------------------------------------------------

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self._take_runtime_dir()
        try:
            self.journal = Journal(self.config.journal, self.config.synchronous)
        except (OSError, Exception) as exc:
            raise RouterError(f"cannot open the journal {self.config.journal}: {exc}") from None
        self.tracker = Tracker(self.journal.load_states())
        self.executor = Executor(self.journal, lambda: self.tracker, self.log, self.publish,
                                 self.config.max_parallel)
        self.alerts = AlertEngine(self.config, self.journal, lambda: self.tracker, self.log,
                                  self.publish)
        self.executor.context["alerts"] = self.alerts
        self.executor.silenced = self.alerts.silence_reason
        self.executor.watched = self.watched
        self.cluster = ClusterMonitor(self.config, self.journal, lambda: self.tracker,
                                      self.ingest, self.log)
        self._bind_signals(loop)
        try:
            self._recover()
            replayed = self.replay_spool()
            self._bind()
            metrics = await self._metrics() if self.config.metrics.listen else None
            self.log.info(
                "router.started", version=__version__, pid=os.getpid(), config=self.config.path,
                endpoints=[self.config.control_endpoint, *self.config.listen],
                journal=self.config.journal, rules=len(self.config.rules),
                keys=len(self.tracker.states), spool_replayed=replayed,
                fifos=[f.path for f in self.config.fifos],
            )
            tune_runtime()
            for sock in self.sockets:
                self._tasks.append(loop.create_task(self._serve(sock)))
            self._tasks.append(loop.create_task(self._spool_loop()))
            self._tasks.append(loop.create_task(self._flush_loop()))
            self._tasks.append(loop.create_task(self.alerts.run()))
            self._tasks.append(loop.create_task(self.cluster.run()))
            if metrics is not None:
                self._tasks.append(loop.create_task(metrics.serve_forever()))
            for source in self.config.fifos:
                host = source.host or self.config.hook.host or os.uname().nodename
                on_open = (functools.partial(self._schedule_resync, source, host)
                           if source.resync else None)
                reader = AsyncFifoReader(source.path, self.config.hook.spool_dir,
                                         functools.partial(self._fifo_lines, host=host),
                                         self.log, on_open)
                self.fifo_readers.append(reader)
                self._tasks.append(loop.create_task(reader.run()))
            await self.stop_event.wait()
        finally:
            await self._shutdown()

    async def _metrics(self) -> asyncio.Server:
        """Bind the Prometheus port (a bind error stops the start)."""
        listen = self.config.metrics.listen
        try:
            server = await metricsmod.listen(self, self.config.metrics)
        except OSError as exc:
            raise RouterError(f"[metrics] listen: cannot bind {listen}: {exc.strerror}") from None
        self.log.info("metrics.listening", listen=listen)
        return server

    def _bind_signals(self, loop: asyncio.AbstractEventLoop) -> None:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGTERM, self.stop)
            loop.add_signal_handler(signal.SIGINT, self.stop)
            loop.add_signal_handler(signal.SIGHUP, self.reload)

    def stop(self) -> None:
        if not self.stop_event.is_set():
            self.log.info("router.stopping", drain_timeout=self.config.drain_timeout)
        self.stop_event.set()
        if self.executor is not None:
            # Nothing new starts from the signal on (not only once the shutdown reaches
            # drain(): an action ending meanwhile would let the next one of its key start).
            self.executor.stopping = True

    async def _shutdown(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for sock in self.sockets:
            sock.close(linger=0)
        if self.pub is not None:
            self.pub.close(linger=0)
        if self.executor is not None:
            running = len(self.executor.active)
            await self.executor.drain(self.config.drain_timeout)
            left = self.executor.queued
            self.log.info("router.drained", were_running=running, left_pending=left)
        if self.alerts is not None:
            await self.alerts.stop(self.config.drain_timeout)
        if self.journal is not None:
            self.journal.close()
        if self.auth is not None:
            self.auth.stop()
        self.ctx.term()
        if self._sync_ctx is not None:
            self._sync_ctx.term()
        for endpoint in (self.config.control_endpoint, self.config.pub_endpoint):
            with contextlib.suppress(OSError):
                os.unlink(endpoint[len("ipc://"):])
        if self._lock_fd is not None:
            os.close(self._lock_fd)
        self.log.info("router.stopped")
