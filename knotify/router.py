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
import os
import resource
import signal
import sqlite3
import stat
import time
from dataclasses import replace
from typing import Any

import zmq
import zmq.asyncio

from knotify import __version__, hook, resync, sdnotify, spool, transport
from knotify import config as configmod
from knotify import log as logmod
from knotify import metrics as metricsmod
from knotify.alerts.engine import MAX_SLEEP as ALERTS_MAX_SLEEP
from knotify.alerts.engine import OPS as ALERT_OPS
from knotify.alerts.engine import AlertEngine
from knotify.cluster.monitor import TICK as CLUSTER_TICK
from knotify.cluster.monitor import ClusterMonitor
from knotify.errors import ConfigError, JournalError, ResyncError, RouterError, WireError
from knotify.event import (
    ID_CHARS,
    Event,
    acked,
    check_text,
    decode_event,
    decode_message,
    encode,
    reply,
)
from knotify.executor import Executor, Run
from knotify.fifo import RESYNC_DELAY, AsyncFifoReader, event_from_line
from knotify.fifo import TURN as FIFO_TURN
from knotify.outcome import Outcome
from knotify.peers.service import PEER_OPS, Peers
from knotify.replay import SpoolReplay
from knotify.rules import fired
from knotify.store.db import Database, corrupt
from knotify.store.events import EventStore
from knotify.store.outbox import Outbox
from knotify.supervisor import Faults, Supervisor
from knotify.tracker import Tracker, Transition
from knotify.trust import LOCAL, PLAIN_TCP, KeyRing, Peer, ZapHandler
from knotify.vocab import (
    DELETED,
    INVALID,
    INVALID_CLASS,
    KINDS,
    REFUSED,
    SKIPPED,
    STALE,
    TRANSITION,
)

#: What one event-loop turn reads from a socket at most: messages, events (estimated from
#: the payload, exact for hooks) and bytes, whichever comes first. The work of a turn
#: is bounded by these, whatever the senders do.
MAX_BATCH = 2000
MAX_BATCH_EVENTS = 2000
MAX_BATCH_BYTES = 1024 * 1024
#: Kinds whose keys count against max_keys (the router's own CLUSTER/PEER events do not).
KEYED_KINDS = frozenset(KINDS)
KEYS_FULL_LOG_EVERY = 60.0
#: How often keys DELETED for longer than [router] forget_deleted are looked for.
FORGET_EVERY = 60.0
#: States and events in one status or history reply at most (the CLI pages on).
STATUS_PAGE = 1000
HISTORY_PAGE = 1000
#: How often the clients folder is looked at, and re-read even if it looks the same.
CLIENTS_CHECK = 1.0
CLIENTS_REREAD = 10.0
#: Messages libzmq queues per connection (see _bind).
RCVHWM = 1000
#: Events one ``events`` message may carry (the agent sends at most [agent] batch).
MAX_EVENTS_PER_MESSAGE = 1000
#: A socket loop is overdue when messages wait and it has not turned for this long.
SERVE_TURN = 1.0
#: The soft limit on open files is raised to the hard one; to this when that is unlimited.
NOFILE_CAP = 1 << 20
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


def _nothing_waiting(sock: zmq.asyncio.Socket) -> bool:
    """Whether nothing waits to be read: a socket loop with nothing to do is not stuck."""
    try:
        return not int(sock.get(zmq.EVENTS)) & zmq.POLLIN
    except zmq.ZMQError:
        return False


def raise_nofile() -> int:
    """Raise the soft limit on open files to the hard one; the limit now in force.

    systemd starts services with a soft limit of 1024: every TCP connection, spool scan
    and action pipe takes a descriptor, and idle connections could use them all up.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else max(soft, NOFILE_CAP)
    if soft != resource.RLIM_INFINITY and soft < want:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
    return soft



class Router:
    def __init__(self, config: configmod.Config, log: Any = None) -> None:
        self.config = config
        self.log = log or logmod.get()
        self.tracker = Tracker(skew_ns=self._skew_ns())
        self.database: Database | None = None
        self.journal: EventStore | None = None
        self.outbox: Outbox | None = None
        self.executor: Executor | None = None
        self.alerts: AlertEngine | None = None
        self.cluster: ClusterMonitor | None = None
        self.peers: Peers | None = None
        self.ctx = zmq.asyncio.Context()
        self.sockets: list[zmq.asyncio.Socket] = []
        self.pub: zmq.Socket[bytes] | None = None
        self._sync_ctx: zmq.Context[zmq.Socket[bytes]] | None = None
        self.stop_event = asyncio.Event()
        self.started = time.time()
        self.stats = {"received": 0, "batches": 0, "journaled": 0, "duplicates": 0, "rejected": 0,
                      "journal_errors": 0, "spool_replayed": 0, "shed": 0, "shed_periods": 0,
                      "unauthorised": 0, "clock_ahead": 0, "largest_batch": 0,
                      "keys_refused": 0, "keys_forgotten": 0}
        self.fifo_readers: list[AsyncFifoReader] = []
        self._lock_fd: int | None = None
        self._journal_lock_fd: int | None = None
        self.spool_replay = SpoolReplay(config.hook.spool_dir, config.max_message, self.ingest,
                                        self.log, self.stats, self._forget_batch)
        self.keyring: KeyRing | None = None
        self.zap: ZapHandler | None = None
        #: Per socket (as in ``sockets``): who its senders are: "local", "curve", "plain".
        self._trust: list[str] = []
        self._clients_mark: tuple[int, int] | None = None
        self._clients_read = 0.0
        self._resync_lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[Any]] = []
        self._since_prune = 0
        self._journal_failing = False
        self._shedding = False
        self._subscriptions: set[bytes] = set()
        self._subs_checked = 0.0
        self.faults = Faults(self.log)
        self.supervisor = Supervisor(self.log, self.faults, self.fail)
        #: Why the router stopped on its own (it then exits 1), or None.
        self.fatal: str | None = None
        self._watchdog_withheld = False
        self._keys_full_logged = -KEYS_FULL_LOG_EVERY
        #: Whether a key may be DELETED (looked for again only once one is reported).
        self._maybe_deleted = True

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
        try:
            os.makedirs(rundir, mode=0o750, exist_ok=True)
            self._own(rundir, 0o750)
            self._lock_fd = self._lock(os.path.join(rundir, "router.lock"), 0o640, (
                "another knotify router (pid {pid}) is running on " + rundir + "; refusing "
                "to take over its socket (stop it first, or give this one another "
                "runtime_dir)"))
            # The hook may run as another user (keepalived_script): with a group set, the
            # spool is writable by that group and the socket connectable by it. Whatever
            # that group left in the spool is never followed (spool.repair, O_NOFOLLOW).
            os.makedirs(self.config.state_dir, mode=0o750, exist_ok=True)
            spool_dir = self.config.hook.spool_dir
            os.makedirs(spool_dir, mode=0o750, exist_ok=True)
            replay = self.spool_replay
            if self.config.group:
                self._own(self.config.state_dir, 0o750)
                self._own(spool_dir, 0o2770)
                replay.folder_mode, replay.gid = 0o2770, self._gid()
                self._own_seq(spool_dir)
            for sub in ("tmp", "new", "bad"):
                replay.repair(sub)
        except OSError as exc:
            where = f" {exc.filename}" if exc.filename else ""
            raise RouterError(f"cannot prepare the runtime and state folders:{where}: "
                              f"{exc.strerror or exc}") from None

    def _lock(self, path: str, mode: int, refusal: str, gid: int = -1) -> int:
        """Hold an exclusive lock on ``path`` for the router's life, or RouterError with
        ``refusal`` (``{pid}``, ``{holder}``: what the holder wrote in it)."""
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            words = os.pread(fd, 4096, 0).decode(errors="replace").split("\n")
            os.close(fd)
            raise RouterError(refusal.format(pid=words[0].strip() or "?",
                                             holder=words[1].strip() if len(words) > 1
                                             else "?")) from None
        st = os.fstat(fd)
        if gid >= 0 and st.st_gid != gid:
            os.fchown(fd, -1, gid)
        if st.st_mode & 0o7777 != mode:
            os.fchmod(fd, mode)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n{self.config.runtime_dir}\n".encode())
        return fd

    def _own_seq(self, spool_dir: str) -> None:
        """The sequence counter, shared with the hook's group; a link or another kind of
        file in its place is moved aside, never followed."""
        seq = os.path.join(spool_dir, spool.SEQ_FILE)
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        try:
            fd = os.open(seq, flags, 0o660)
        except OSError:
            fd = -1
        if fd >= 0:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
                os.close(fd)
                fd = -1
        if fd < 0:
            found = spool.what_is(os.lstat(seq).st_mode)
            aside = f"{seq}.not-a-file.{time.time_ns()}"
            os.rename(seq, aside)
            self.log.error("spool.seq_replaced", path=seq, found=found, moved_to=aside,
                           detail="a new counter is started; nothing in a link is written")
            fd = os.open(seq, flags | os.O_EXCL, 0o660)
        try:
            if os.fstat(fd).st_uid == os.geteuid():
                os.fchown(fd, -1, self._gid())
                os.fchmod(fd, 0o660)
        finally:
            os.close(fd)

    def _bind(self) -> None:
        control = self.config.control_endpoint
        path = control[len("ipc://"):]
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # stale: we hold the lock, so no live router owns it
        curve = self.config.curve
        if curve is not None and any(e.startswith("tcp://") for e in self.config.listen):
            public, secret = transport.load_secret(curve.secret_key)
            self.keyring = KeyRing(curve.clients, curve.admins, curve.hosts)
            self.keyring.load()
            self.zap = ZapHandler(self.ctx, self.keyring, ZAP_DOMAIN, self.log)
            self._watch_clients()
            self.log.info("curve.enabled", clients=self.keyring.names(), keys=curve.clients,
                          admins=sorted(curve.admins) or None)
        for endpoint in [control, *self.config.listen]:
            sock = self.ctx.socket(zmq.ROUTER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.MAXMSGSIZE, self.config.max_message)
            # Messages queued per connection before libzmq stops reading it (TCP pushes
            # back): a hook sends one, the agent one at a time, a fast sender a window.
            sock.setsockopt(zmq.RCVHWM, RCVHWM)
            sock.setsockopt(zmq.SNDHWM, 100_000)
            # A connection that has not finished its handshake (CURVE included) in time
            # is closed: idle connections cannot pile up before authentication (a hook
            # finishes it at once; the control socket is guarded by its folder, still).
            sock.setsockopt(zmq.HANDSHAKE_IVL, int(self.config.handshake_timeout * 1000))
            if endpoint.startswith("tcp://"):
                # Keepalive probes close connections whose peer vanished.
                sock.setsockopt(zmq.TCP_KEEPALIVE, 1)
                sock.setsockopt(zmq.TCP_KEEPALIVE_IDLE, 60)
                sock.setsockopt(zmq.TCP_KEEPALIVE_INTVL, 10)
                sock.setsockopt(zmq.TCP_KEEPALIVE_CNT, 3)
                if curve is not None:
                    sock.curve_server = True
                    sock.curve_publickey = public
                    sock.curve_secretkey = secret
                    sock.zap_domain = ZAP_DOMAIN.encode()
                    # No ZAP handler (it died): refuse, never let everyone in.
                    sock.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)
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
            self._trust.append("local" if endpoint.startswith("ipc://")
                               else "curve" if curve is not None else "plain")
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
        ahead_ns = now_ns + int(self.config.max_clock_skew * 1e9)
        states = self.tracker.states
        max_keys = self.config.max_keys
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
                    if ev.ts_ns > ahead_ns:
                        self._clock_ahead(ev, now_ns)
                    if (len(states) >= max_keys and ev.key not in states
                            and ev.kind in KEYED_KINDS and not self._make_room()):
                        tr = self._refuse_key(ev)
                        self.journal.add_event(ev, tr)
                        accepted.append((ev, tr))
                        results.append(True)
                        continue
                    tr = self.tracker.observe(ev)
                    if tr.state == DELETED:
                        self._maybe_deleted = True
                    self.journal.add_event(ev, tr)
                    accepted.append((ev, tr))
                    results.append(True)
                    if tr.cls in (STALE, INVALID_CLASS):
                        continue
                    current = self.tracker.states.get(ev.key)
                    if current is not None:
                        self.journal.put_state(ev.key, current)
                    for rule in fired(rules, ev, tr):
                        ending = rule.send_resolved and rule.ends_only(ev, tr)
                        for idx, action in enumerate(rule.actions):
                            if ending and not action.pages:
                                continue  # the end of an incident is news for alerts only
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
        except Exception as exc:
            # Nothing of the batch is committed: the state table goes back to the journal's.
            self.tracker = Tracker(self._reload_states(), self._skew_ns())
            self._maybe_deleted = True
            if not isinstance(exc, JournalError):
                raise
            self.stats["journal_errors"] += 1
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
        if len(events) > self.stats["largest_batch"]:
            self.stats["largest_batch"] = len(events)
        self.stats["duplicates"] += len(events) - len(accepted)
        for ev, tr in accepted:
            if watched:
                self.publish("event", {**_fields(ev, tr), "prev_state": tr.prev_state,
                                       "effective": tr.state, "ts_ns": ev.ts_ns})
            if self.cluster is not None:
                self.cluster.observe(ev, tr)
            if ev.extra and "config_problem" in ev.extra and ev.extra.get("via") != "spool":
                self.spool_replay.config_problem(ev, str(ev.extra["config_problem"]), live=True)
        self.executor.ran_inline(inline_counts, inline)
        for run in runs:
            self.executor.submit(run)
        self._since_prune += len(accepted)
        if self._since_prune >= PRUNE_EVERY:
            self._since_prune = 0
            self._prune()
        return results

    def _clock_ahead(self, ev: Event, now_ns: int) -> None:
        """An event dated further ahead of the router's clock than ``max_clock_skew``
        (another boot's clock, a bad NTP step, a hostile sender): it is ordered as if it
        happened when it arrived, so it cannot make the key's later real events stale.
        What it said is kept in ``extra.clock`` and shows in history."""
        ahead_s = round((ev.ts_ns - now_ns) / 1e9, 3)
        ev.extra = {**ev.extra, "clock": {"reported_ts_ns": ev.ts_ns, "ahead_s": ahead_s,
                                          "ordered": "as received"}}
        self.log.warning("event.clock_ahead", event_id=ev.id, host=ev.host, kind=ev.kind,
                         name=ev.name, ahead_s=ahead_s,
                         max_clock_skew_s=self.config.max_clock_skew,
                         detail="ordered as received (the router's clock)")
        ev.ts_ns = min(ev.recv_ns, now_ns) if ev.recv_ns else now_ns
        self.stats["clock_ahead"] += 1

    def _make_room(self) -> bool:
        """At max_keys: forget the keys reported DELETED longest ago (a few at once), in
        the current transaction. Whether there is room now."""
        assert self.journal is not None
        if not self._maybe_deleted:
            return False  # (none since the last look: a flood of new names costs nothing)
        deleted = sorted((ks.updated_ns, key) for key, ks in self.tracker.states.items()
                         if ks.state == DELETED)
        if not deleted:
            self._maybe_deleted = False
            return False
        keys = [key for _, key in deleted[:max(1, self.config.max_keys // 100)]]
        self._forget(keys, "to make room under max_keys")
        return True

    def _forget(self, keys: list[Any], why: str) -> None:
        assert self.journal is not None
        self.tracker.forget(keys)
        self.journal.forget_states(keys)
        self.stats["keys_forgotten"] += len(keys)
        self.log.info("keys.forgotten", keys=len(keys), reason=why,
                      first=dict(zip(("host", "kind", "name", "vs"), keys[0], strict=True)))

    def _forget_deleted(self) -> None:
        """Forget keys that have been DELETED for longer than [router] forget_deleted."""
        assert self.journal is not None
        cutoff = time.time_ns() - int(self.config.forget_deleted * 1e9)
        old = [key for key, ks in self.tracker.states.items()
               if ks.state == DELETED and ks.updated_ns < cutoff]
        if old:
            with self.journal.transaction():
                self._forget(old, f"DELETED for longer than {self.config.forget_deleted:g}s")

    def _refuse_key(self, ev: Event) -> Transition:
        """A new key past max_keys: the event is journaled (not lost, not retried) as
        ``refused``, with the reason; it is not tracked and fires nothing."""
        limit = self.config.max_keys
        ev.error = (f"not tracked: the router already tracks [router] max_keys = {limit} "
                    "keys and none is DELETED; raise max_keys, or report the keys that are "
                    "gone as DELETED")
        self.stats["keys_refused"] += 1
        now = time.monotonic()
        if now - self._keys_full_logged > KEYS_FULL_LOG_EVERY:
            self._keys_full_logged = now
            self.log.warning("keys.full", max_keys=limit, refused=self.stats["keys_refused"],
                             event_id=ev.id, host=ev.host, kind=ev.kind, name=ev.name,
                             detail="events of new keys are journaled as 'refused' and fire "
                             "nothing until there is room")
        return Transition(REFUSED, ev.state, "", None, 0)

    def _unpin_states(self) -> None:
        """States a journal holds with a start far ahead of the router's clock (written
        before max_clock_skew, or with a larger one): brought back to now, so that their
        keys' real events are no longer stale."""
        assert self.journal is not None
        now = time.time_ns()
        limit = now + int(self.config.max_clock_skew * 1e9)
        pinned = [(key, ks) for key, ks in self.tracker.states.items() if ks.since_ns > limit]
        if not pinned:
            return
        with self.journal.transaction():
            for key, ks in pinned:
                ks.since_ns = now
                ks.boot, ks.mono_ns, ks.pid = "", 0, 0
                self.journal.put_state(key, ks)
        self.log.warning("state.clock_ahead", keys=len(pinned),
                         first=dict(zip(("host", "kind", "name", "vs"), pinned[0][0],
                                        strict=True)),
                         detail="these states began after the router's clock plus "
                         "max_clock_skew; they now count from the router's start")

    def _skew_ns(self) -> int:
        return int(self.config.max_clock_skew * 1e9)

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
        assert self.database is not None and self.outbox is not None
        try:
            with self.database.transaction():
                dropped = self.journal.prune(self.config.keep_events)
                oldest = self.journal.oldest_recv_ns() if dropped is not None else None
                if oldest is not None:
                    self.outbox.prune(oldest)
        except JournalError as exc:
            self.log.warning("journal.prune_failed", error=str(exc))
            return
        if dropped:
            self.log.info("journal.pruned", events=dropped, keep=self.config.keep_events)

    async def _serve(self, sock: zmq.asyncio.Socket, name: str, trust: str = "local") -> None:
        # The same socket without asyncio's futures, to drain and answer a batch cheaply.
        raw: zmq.Socket[bytes] = zmq.Socket.shadow(sock.underlying)
        beat = self.supervisor.beater(name)
        recv, more = raw.recv, raw.get
        keyed = trust == "curve"  # each message says which client key sent it
        while True:
            beat()
            try:
                first: list[Any] = await sock.recv_multipart(copy=not keyed)
            except zmq.ZMQError as exc:
                if exc.errno == zmq.ETERM or self.stop_event.is_set():
                    return
                self.log.warning("socket.recv_failed", error=str(exc))
                await asyncio.sleep(0.1)
                continue
            peers: list[Peer | None] | None = None if trust == "local" else []
            batch: list[list[bytes]] = []
            frames: list[Any] = first
            events = size = 0
            # (recv_multipart, but with int flags: cheaper)
            while True:
                if peers is not None:
                    if keyed:
                        peers.append(self._peer(frames[-1]))
                        frames = [f.bytes for f in frames]
                    else:
                        peers.append(PLAIN_TCP)
                batch.append(frames)
                payload = frames[-1]
                size += len(payload)
                events += payload.count(b'"id"') or 1
                if (len(batch) >= MAX_BATCH or events >= MAX_BATCH_EVENTS
                        or size >= MAX_BATCH_BYTES):
                    break
                try:
                    frames = [recv(NOBLOCK, copy=not keyed)]
                    while more(RCVMORE):
                        frames.append(recv(NOBLOCK, copy=not keyed))
                except zmq.Again:
                    break
                except zmq.ZMQError as exc:
                    self.log.warning("socket.recv_failed", error=str(exc))
                    break
            try:
                self._handle(raw, batch, peers)
            except Exception as exc:
                # A bug in the handling of one batch: its peers get an answer (so a hook
                # spools at once), the next batch is handled as usual.
                reason = self.faults.record("batch", exc, endpoint=name, messages=len(batch))
                self._answer_all(raw, batch, f"internal error: {reason}")
            await asyncio.sleep(0)  # let actions and other sockets have a turn

    def _peer(self, frame: zmq.Frame) -> Peer | None:
        """Who sent a message on a CURVE socket: its key, checked against the key ring
        now (None: the key was removed since the connection was made)."""
        if self.keyring is None:
            return None
        try:
            user = frame.get("User-Id")
        except zmq.ZMQError:
            return None
        return self.keyring.peer(user) if isinstance(user, str) else None

    def _answer_all(self, sock: zmq.Socket[bytes], batch: list[list[bytes]],
                    error: str) -> None:
        answer = reply(False, error=error)
        for frames in batch:
            with contextlib.suppress(zmq.ZMQError):
                for frame in frames[:-1]:
                    sock.send(frame, SNDMORE_NOBLOCK)
                sock.send(answer, NOBLOCK)

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

    def _handle(self, sock: zmq.Socket[bytes], batch: list[list[bytes]],
                peers: list[Peer | None] | None = None) -> None:
        """Decode, journal and answer one batch; ``peers``: who sent each message (None:
        all came in on a local socket, where anything goes)."""
        replies: list[list[bytes]] = []
        # (envelope, the event, None) for "event", (envelope, events, rejected) for "events"
        pending: list[tuple[list[bytes], Any, list[dict[str, Any]] | None]] = []
        events: list[Event] = []
        commands: list[tuple[list[bytes], dict[str, Any]]] = []
        now = time.time_ns()
        limit = self.config.max_message
        self.stats["received"] += len(batch)
        for i, frames in enumerate(batch):
            envelope, payload = frames[:-1], frames[-1]
            try:
                peer = LOCAL if peers is None else peers[i]
                if peer is None:
                    self.stats["unauthorised"] += 1
                    raise WireError("this client key is not authorised (any more): its "
                                    "file is not in the router's clients folder")
                msg = decode_message(payload, limit)
                op = msg["op"]
                refusal = peer.refuse_op(op, msg)
                if refusal is not None:
                    self.stats["unauthorised"] += 1
                    raise WireError(refusal)
                if op == "event":
                    ev = decode_event(msg.get("event"), now)
                    refusal = peer.refuse_host(ev.host)
                    if refusal is not None:
                        self.stats["unauthorised"] += 1
                        raise WireError(refusal)
                    pending.append((envelope, ev, None))
                    events.append(ev)
                elif op == "events":
                    items = msg.get("events")
                    if not isinstance(items, list):
                        raise WireError("'events' must be a list")
                    if len(items) > MAX_EVENTS_PER_MESSAGE:
                        raise WireError(f"'events' holds {len(items)} events; at most "
                                        f"{MAX_EVENTS_PER_MESSAGE} per message")
                    good: list[Event] = []
                    bad: list[dict[str, Any]] = []
                    for index, item in enumerate(items):
                        try:
                            ev = decode_event(item, now)
                        except WireError as exc:
                            bad.append({"index": index, "error": str(exc)})
                            self._rejected(str(exc), envelope)
                            continue
                        refusal = peer.refuse_host(ev.host)
                        if refusal is not None:
                            # The whole message: a sender sets aside events refused one
                            # by one, but these are good events from a misconfigured
                            # sender, to keep until its key or name is fixed.
                            self.stats["unauthorised"] += 1
                            raise WireError(f"event {index}: {refusal}")
                        good.append(ev)
                    pending.append((envelope, good, bad))
                    events.extend(good)
                else:
                    check_text(msg)
                    if op == "heartbeat" and isinstance(msg.get("host"), str):
                        refusal = peer.refuse_host(msg["host"])
                        if refusal is not None:
                            self.stats["unauthorised"] += 1
                            raise WireError(refusal)
                    commands.append((envelope, msg))
            except WireError as exc:
                self._rejected(str(exc), envelope)
                replies.append([*envelope, reply(False, error=str(exc))])
            except Exception as exc:  # a bug: this message is refused, the others go on
                reason = self.faults.record("message", exc)
                replies.append([*envelope, reply(False, error=f"internal error: {reason}")])
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
            except Exception as exc:
                # One event the journal or the rules choke on must not cost the others
                # their ack: the batch again, one message (and one event) at a time.
                self.faults.record("batch", exc, events=len(events))
                pending = self._ingest_apart(pending, replies)
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

    def _ingest_apart(self, pending: list[tuple[list[bytes], Any, list[dict[str, Any]] | None]],
                      replies: list[list[bytes]]
                      ) -> list[tuple[list[bytes], Any, list[dict[str, Any]] | None]]:
        """After a batch failed for an unexpected reason: each event on its own, so that
        only the one at fault is refused (named in the answer); the rest are acked."""
        kept: list[tuple[list[bytes], Any, list[dict[str, Any]] | None]] = []
        for envelope, item, rejected in pending:
            single = rejected is None
            good: list[Event] = []
            bad = [] if rejected is None else list(rejected)
            failed: str | None = None
            # Where each event stood in the message (the refused ones are not in ``item``).
            refused = {b["index"] for b in bad}
            places = [i for i in range(len(bad) + (1 if single else len(item)))
                      if i not in refused]
            for index, ev in zip(places, [item] if single else item, strict=True):
                try:
                    self.ingest([ev])
                except JournalError as exc:
                    failed = f"journal unavailable: {exc}"
                    break
                except Exception as exc:
                    reason = self.faults.record("message", exc, event_id=ev.id)
                    failed = f"internal error: {reason}"
                    bad.append({"index": index, "error": failed})
                    continue
                good.append(ev)
            if single:
                if failed is not None:
                    replies.append([*envelope, reply(False, error=failed)])
                else:
                    kept.append((envelope, item, None))
            elif failed is not None and failed.startswith("journal"):
                replies.append([*envelope, reply(False, error=failed)])
            else:
                kept.append((envelope, good, sorted(bad, key=lambda b: b["index"])))
        return kept

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
                offset = msg.get("offset", 0)
                if type(offset) is not int or not 0 <= offset < 2**62:
                    raise WireError("status 'offset' must be an integer of 0 or more")
                total = len(self.tracker.states)
                nxt = offset + STATUS_PAGE if offset + STATUS_PAGE < total else None
                return reply(True, states=self.journal.status(offset, STATUS_PAGE),
                             states_total=total, next=nxt, router=self.info(),
                             cluster=self.cluster.view() if self.cluster and not offset
                             else {})
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
                    if v is not None and (not isinstance(v, str) or len(v) > 255):
                        raise WireError(f"history {k!r} must be a string (a pattern)")
                event_id = msg.get("id")
                if event_id is not None and (not isinstance(event_id, str) or not
                                             1 <= len(event_id) <= 64 or any(
                                                 c not in ID_CHARS for c in event_id)):
                    raise WireError("history 'id' must be an event id (letters, digits, _ "
                                    "and -) or its first characters")
                transitions = msg.get("transitions", False)
                if type(transitions) is not bool:
                    raise WireError("history 'transitions' must be true or false")
                before = msg.get("before")
                if before is not None and (type(before) is not int or not 0 < before < 2**62):
                    raise WireError("history 'before' must be an event number (rowid)")
                # One reply holds a page at most; "next_before" asks for the rest.
                page = self.journal.history(min(limit, HISTORY_PAGE), before=before,
                                            event_id=event_id, transitions=transitions,
                                            **filters)
                assert self.outbox is not None
                self.outbox.attach_history({event["id"]: event for event in page})
                more = limit > HISTORY_PAGE and len(page) == HISTORY_PAGE
                return reply(True, events=page,
                             next_before=page[-1]["rowid"] if more else None)
            if op == "stats":
                return reply(True, router=self.info())
            if op == "reload":
                ok, detail = self.reload()
                return reply(ok, detail=detail) if ok else reply(False, error=detail)
            if op in PEER_OPS and self.peers is not None:
                return reply(True, **self.peers.command(op, msg))
            if op in ALERT_OPS and self.alerts is not None:
                return reply(True, **self.alerts.command(op, msg))
            raise WireError(f"unknown op {op[:40]!r}")
        except WireError as exc:
            self._rejected(str(exc), [])
            return reply(False, error=str(exc))
        except Exception as exc:  # a bug: this request fails, the router serves on
            reason = self.faults.record("command", exc, op=op[:40])
            return reply(False, error=f"internal error: {reason}")

    def metrics_snapshot(self) -> metricsmod.Snapshot:
        """What a metrics scrape shows, copied in the event loop."""
        ex = self.executor
        return metricsmod.Snapshot(
            states=[(key, ks.state, ks.since_ns, ks.prio, ks.epoch)
                    for key, ks in self.tracker.states.items()],
            stats={**self.stats, "curve_refused": self.zap.refused if self.zap is not None
                   else 0},
            faults=dict(self.faults.counts), loops=self.supervisor.view(),
            actions=dict(ex.counts) if ex else {}, queued=ex.queued if ex else 0,
            running=len(ex.active) if ex else 0,
            spool_depth=spool.depth(self.config.hook.spool_dir),
            alerts=self.alerts.info() if self.alerts is not None else {},
            cluster=self.cluster.view() if self.cluster is not None else None,
            heartbeats=self.cluster.heartbeats if self.cluster is not None else 0,
            peers=self.peers.info() if self.peers is not None else None)

    def info(self) -> dict[str, Any]:
        ex = self.executor
        return {
            "version": __version__, "pid": os.getpid(), "config": self.config.path,
            "uptime_s": round(time.time() - self.started, 3), "journal": self.config.journal,
            "endpoints": [self.config.control_endpoint, *self.config.listen],
            "fifos": [f.path for f in self.config.fifos], "rules": len(self.config.rules),
            "keys": len(self.tracker.states),
            "spool_depth": spool.depth(self.config.hook.spool_dir),
            "spool": self.spool_replay.report(),
            "actions_queued": ex.queued if ex else 0,
            "actions_running": len(ex.active) if ex else 0,
            "action_outcomes": dict(ex.counts) if ex else {},
            "alerts": self.alerts.info() if self.alerts else {},
            "faults": dict(self.faults.counts),
            "loops": self.supervisor.view(),
            "open_files_limit": getattr(self, "_nofile", None),
            "curve_refused": self.zap.refused if self.zap is not None else 0,
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
        old, self.config = self.config, configmod.reloaded(self.config, new)
        # Each part gets its new settings, through its own method.
        self.tracker.skew_ns = self._skew_ns()
        if self.alerts is not None:
            self.alerts.apply(self.config.alert_engine)
        if self.cluster is not None:
            self.cluster.apply(self.config.cluster)
        curve = self.config.curve
        if self.keyring is not None and curve is not None and curve is not old.curve:
            # Roles (admins, hosts) apply at once; new keys in the folder too.
            self.keyring.configure(curve.admins, curve.hosts)
            self._watch_clients(force=True)
        detail = f"config reloaded: {len(new.rules)} rules"
        if fixed:
            detail += f"; changes to {', '.join(fixed)} need a restart"
        self.log.info("config.reloaded", rules=len(new.rules), restart_needed=fixed or None)
        return True, detail

    # -- spool and FIFO sources -----------------------------------------------------------

    def replay_spool(self) -> int:
        """Journal what the hooks spooled; files are removed only after the commit.

        Every file is hostile input (:mod:`knotify.replay`): a bad one is set aside with
        one log line and never blocks, stops or holds back the rest; this never raises.
        """
        def busy() -> bool:
            if self.executor is not None and self.executor.queued > self.config.max_backlog:
                self._overloaded()  # the rest waits where it is, in order
                return True
            return False

        return self.spool_replay.run(busy)

    def _forget_batch(self) -> None:
        """After a batch failed unexpectedly: the tracker forgets what was rolled back."""
        self.tracker = Tracker(self._reload_states(), self._skew_ns())

    def _watch_clients(self, force: bool = False) -> None:
        """Re-read the authorised client keys when their folder changes (and every
        CLIENTS_REREAD seconds, for a key file rewritten in place)."""
        curve = self.config.curve
        if self.keyring is None or curve is None:
            return
        try:
            st = os.stat(curve.clients)
            mark = (st.st_mtime_ns, st.st_ino)
        except OSError:
            mark = (0, 0)
        now = time.monotonic()
        if force or mark != self._clients_mark or now - self._clients_read > CLIENTS_REREAD:
            self._clients_mark, self._clients_read = mark, now
            if self.keyring.load():
                self.log.info("curve.clients_changed", clients=self.keyring.names(),
                              detail="messages of removed keys are refused from now on, "
                              "on open connections too")

    async def _spool_loop(self) -> None:
        while True:
            await asyncio.sleep(SHED_INTERVAL if self._shedding else self.config.spool_interval)
            self.supervisor.beat("spool")
            try:
                self._spool_turn()
            except Exception as exc:  # one bad turn; the next one tries again
                self.faults.record("spool", exc)

    def _spool_turn(self) -> None:
        queued = self.executor.queued if self.executor is not None else 0
        if self._shedding and queued > self.config.max_backlog // 5:
            return  # replaying now would only grow the backlog again
        try:
            count = self.replay_spool()
        except OSError as exc:
            self.log.warning("spool.scan_failed", error=str(exc))
            return
        if count:
            self.log.info("spool.replayed", events=count)
        if self._shedding and not spool.pending(self.config.hook.spool_dir, limit=1):
            self._shedding = False
            self.log.info("intake.resumed", actions_queued=queued)

    def _fifo_lines(self, lines: list[tuple[str, int, int]], host: str) -> None:
        spool_dir = self.config.hook.spool_dir
        wire: list[dict[str, Any]] = []
        try:
            wire = [event_from_line(line, host, spool.next_seq(spool_dir), ts, mono)
                    for line, ts, mono in lines]
            events = []
            for w in wire:
                try:
                    events.append(decode_event(w))
                except WireError as exc:  # (a NUL in a name): kept, as an INVALID event
                    events.append(decode_event(
                        {**w, "kind": INVALID, "state": INVALID, "name": "", "vs": "",
                         "prio": None, "error": str(exc), "raw": w.get("raw")}))
            self.ingest(events)
        except Exception as exc:
            if not isinstance(exc, JournalError):
                self.faults.record("fifo", exc, lines=len(lines))
            # Never drop a FIFO line: it waits in the spool until the journal is back.
            if not wire:
                wire = [{"v": 1, "id": hook.new_id(), "host": host, "source": "fifo",
                         "kind": INVALID, "state": INVALID, "name": "", "ts_ns": ts,
                         "raw": line[:4096]} for line, ts, _ in lines]
            for w in wire:
                try:
                    spool.write(spool_dir, w)
                except OSError as err:
                    self.log.critical("fifo.line_lost", line=w.get("raw"), error=str(err))

    def _schedule_resync(self, source: configmod.FifoSource, host: str) -> None:
        self._tasks = [t for t in self._tasks if not t.done()]
        self._tasks.append(asyncio.get_running_loop().create_task(self._resync(source, host)))

    async def _resync(self, source: configmod.FifoSource, host: str) -> None:
        try:
            await self._resync_once(source, host)
        except Exception as exc:  # one resync failing is logged; the FIFO reads on
            self.faults.record("resync", exc, fifo=source.path)

    async def _resync_once(self, source: configmod.FifoSource, host: str) -> None:
        """After a FIFO (re)opens: read what waited in it, then ask keepalived for its states."""
        await asyncio.sleep(RESYNC_DELAY)
        log = self.log.bind(fifo=source.path)
        async with self._resync_lock:  # one JSON dump file per host: one request at a time
            try:
                pid = resync.read_pidfile(source.pidfile)
                instances = await asyncio.get_running_loop().run_in_executor(
                    None, resync.snapshot, pid, source.json_file)
            except ResyncError as exc:
                log.warning("resync.failed", error=str(exc))
                return
        # Lines keepalived wrote before its dump are older than the snapshot: hand
        # them on first, or a late read would be ordered after (and undo) it.
        for reader in self.fifo_readers:
            if reader.path == source.path:
                reader.drain()
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

    def _flush(self) -> None:
        assert self.executor is not None
        try:
            self.executor.flush()
        except JournalError as exc:
            self.log.warning("journal.flush_failed", error=str(exc))

    def _watchdog(self) -> None:
        """Pet systemd's watchdog while every loop turns; say once when one does not."""
        stale = self.supervisor.stale()
        if stale:
            if not self._watchdog_withheld:
                self.log.critical("watchdog.withheld", loops={n: round(s, 1) for n, s in stale},
                                  detail="a loop has not turned for too long; systemd's "
                                  "watchdog (if any) will restart the router")
            self._watchdog_withheld = True
            return
        if self._watchdog_withheld:
            self.log.warning("watchdog.resumed", detail="every loop turns again")
            self._watchdog_withheld = False
        sdnotify.notify("WATCHDOG=1")

    def fail(self, reason: str) -> None:
        """Stop the router because it cannot go on as it is; ``knotify run`` exits 1."""
        if self.fatal is None:
            self.fatal = reason
        self.stop()

    def _loop_exception(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """What asyncio would print (a callback or a forgotten task that raised): logged as a
        fault of its own, in the router's log format."""
        exc = context.get("exception")
        if isinstance(exc, BaseException):
            self.faults.record("loop", exc, message=str(context.get("message", ""))[:200])
        else:
            self.faults.counts["loop"] += 1
            self.log.error("router.fault", where="loop",
                           reason=str(context.get("message", ""))[:300])

    # -- main -------------------------------------------------------------------------------

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(self._loop_exception)
        self._nofile = raise_nofile()
        self._take_runtime_dir()
        self._open_journal()
        assert self.journal is not None
        self.executor = Executor(self.journal, lambda: self.tracker, self.log, self.publish,
                                 self.config.max_parallel)
        self.alerts = AlertEngine(self.config.alert_engine, self.journal, lambda: self.tracker,
                                  self.log,
                                  self.publish)
        self.executor.services = replace(self.executor.services, alerts=self.alerts,
                                         silences=self.alerts)
        if self.config.peers is not None:  # peering: the send gate, log and replication
            self.peers = Peers.start(self.config, self.alerts, lambda: self.tracker,
                                     lambda: self.config.cluster, self.log, self.ctx)
        self.executor.watched = self.watched
        assert self.database is not None
        self.cluster = ClusterMonitor(self.config.cluster,
                                      self.config.hook.host or os.uname().nodename,
                                      self.database, lambda: self.tracker,
                                      self.ingest, self.log)
        self._bind_signals(loop)
        try:
            try:
                self._unpin_states()
                self._recover()
            except (sqlite3.DatabaseError, JournalError) as exc:
                raise self._journal_refusal(exc) from None
            replayed = self.replay_spool()
            self._bind()
            metrics = await self._metrics() if self.config.metrics.listen else None
            self.log.info(
                "router.started", version=__version__, pid=os.getpid(), config=self.config.path,
                endpoints=[self.config.control_endpoint, *self.config.listen],
                journal=self.config.journal, rules=len(self.config.rules),
                keys=len(self.tracker.states), spool_replayed=replayed,
                fifos=[f.path for f in self.config.fifos], open_files_limit=self._nofile,
            )
            tune_runtime()
            self._start_loops(metrics)
            sdnotify.notify(f"READY=1\nMAINPID={os.getpid()}\nSTATUS=serving")
            await self.stop_event.wait()
        finally:
            await self._shutdown()
        if self.fatal is not None:
            raise RouterError(f"the router stopped: {self.fatal}")

    def _start_loops(self, metrics: asyncio.Server | None) -> None:
        """Every background task, each under the supervisor (restarted if it dies)."""
        assert self.alerts is not None and self.cluster is not None
        sup = self.supervisor
        for endpoint, sock, trust in zip([self.config.control_endpoint, *self.config.listen],
                                         self.sockets, self._trust, strict=True):
            name = f"serve {endpoint}"
            sup.spawn(name, functools.partial(self._serve, sock, name, trust), SERVE_TURN,
                      idle=functools.partial(_nothing_waiting, sock))
        sup.spawn("spool", self._spool_loop, lambda: self.config.spool_interval)
        if self.zap is not None:
            self.zap.beat = sup.beater("zap")
            sup.spawn("zap", self.zap.run, 1.0)
            sup.every("keys", CLIENTS_CHECK, self._watch_clients)
        sup.every("flush", FLUSH_INTERVAL, self._flush)
        self.alerts.beat = sup.beater("alerts")
        sup.spawn("alerts", self.alerts.run, ALERTS_MAX_SLEEP)
        sup.every("cluster", CLUSTER_TICK, self.cluster.tick)
        sup.every("forget", FORGET_EVERY, self._forget_deleted)
        if self.peers is not None:
            self.peers.spawn(sup)
        if metrics is not None:
            sup.spawn("metrics", metrics.serve_forever)
        for source in self.config.fifos:
            host = source.host or self.config.hook.host or os.uname().nodename
            on_open = (functools.partial(self._schedule_resync, source, host)
                       if source.resync else None)
            name = f"fifo {source.path}"
            reader = AsyncFifoReader(source.path, self.config.hook.spool_dir,
                                     functools.partial(self._fifo_lines, host=host),
                                     self.log, on_open, sup.beater(name))
            self.fifo_readers.append(reader)
            sup.spawn(name, reader.run, FIFO_TURN)
        sup.every("watchdog", min(1.0, sdnotify.watchdog_interval() or 1.0), self._watchdog)

    def _open_journal(self) -> None:
        """Lock, open and load the journal, or RouterError in one line saying what to do.

        The lock (``JOURNAL.lock``) is held for the router's life: a second router on the
        same journal, from another runtime_dir, is refused, naming the first. The journal
        and its -wal/-shm files are 0600 (0640 with ``[paths] group``) whatever the umask,
        and in the router's own group: never readable by the hooks' group.
        """
        path = self.config.journal
        gid = os.getegid()
        mode = 0o640 if self.config.group else 0o600
        try:
            os.makedirs(os.path.dirname(path) or ".", mode=0o750, exist_ok=True)
            self._journal_lock_fd = self._lock(path + ".lock", mode, (
                "another knotify router (pid {pid}, runtime_dir {holder}) holds the journal "
                + path + "; refusing to start a second router on it (stop that one first, "
                "or give this one its own state_dir or [router] journal)"), gid)
        except OSError as exc:
            raise RouterError(f"cannot lock the journal {path}: {exc.strerror or exc}; "
                              "check the folder and its permissions") from None
        try:
            self.database = Database(path, self.config.synchronous, mode, gid)
            self.journal = EventStore(self.database)
            self.outbox = Outbox(self.database)
            self.tracker = Tracker(self.journal.load_states(), self._skew_ns())
        except Exception as exc:  # whatever the file holds: one line, never a traceback
            raise self._journal_refusal(exc) from None

    def _journal_refusal(self, exc: BaseException) -> RouterError:
        path = self.config.journal
        if corrupt(exc):
            return RouterError(
                f"the journal {path} is corrupt ({exc}): stop anything using it, move it "
                f"aside with its -wal and -shm files (mv {path} {path}.corrupt) and start "
                f"again for a new, empty journal; `sqlite3 {path}.corrupt .recover` may "
                "save its events")
        return RouterError(f"cannot open the journal {path}: {exc}")

    async def _metrics(self) -> asyncio.Server:
        """Bind the Prometheus port (a bind error stops the start)."""
        listen = self.config.metrics.listen
        try:
            server = await metricsmod.listen(self.metrics_snapshot, self.faults,
                                             self.config.metrics)
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
            with contextlib.suppress(OSError):
                sdnotify.notify("STOPPING=1")
        self.stop_event.set()
        if self.executor is not None:
            # Nothing new starts from the signal on (not only once the shutdown reaches
            # drain(): an action ending meanwhile would let the next one of its key start).
            self.executor.stopping = True

    async def _shutdown(self) -> None:
        await self.supervisor.stop()
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
        if self.database is not None:
            self.database.close()
        if self.zap is not None:
            self.zap.close()
        self.ctx.term()
        if self._sync_ctx is not None:
            self._sync_ctx.term()
        for endpoint in (self.config.control_endpoint, self.config.pub_endpoint):
            with contextlib.suppress(OSError):
                os.unlink(endpoint[len("ipc://"):])
        if self._lock_fd is not None:
            os.close(self._lock_fd)
        self.log.info("router.stopped")
