"""Prometheus metrics on an optional HTTP port (``[metrics] listen = "127.0.0.1:9650"``).

When Prometheus scrapes, the router's state is copied inside its event loop (a
:class:`Snapshot`: one consistent moment, a few milliseconds even at ``max_keys``),
and the text is rendered from the copy in a worker thread, so a scrape of 10,000 keys
(seconds of encoding) never holds the loop; the hot path pays nothing. One rendering
at a time, reused for :data:`CACHE_S`: a scrape storm costs one. Transitions are the
tracker's per-key epoch, which the journal keeps: the counter survives restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from knotify import __version__
from knotify.metrics_settings import MetricsSettings
from knotify.vocab import (
    BACKUP,
    CLUSTER,
    CLUSTER_OK,
    FAULT,
    GROUP,
    INSTANCE,
    LVS_STATES,
    MASTER,
    MASTER_BACK,
    NO_MASTER,
    PEER,
    PEER_BACK,
    PEER_SILENT,
    RS,
    SPLIT_BRAIN,
    SPLIT_BRAIN_RESOLVED,
    STOP,
    VS,
)

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from knotify.supervisor import Faults

#: The states shown (0 or 1) for each kind; the current one is always shown.
STATES = {
    INSTANCE: (MASTER, BACKUP, FAULT, STOP),
    GROUP: (MASTER, BACKUP, FAULT, STOP),
    VS: LVS_STATES,
    RS: LVS_STATES,
    CLUSTER: (CLUSTER_OK, SPLIT_BRAIN, SPLIT_BRAIN_RESOLVED, NO_MASTER, MASTER_BACK),
    PEER: (PEER_SILENT, PEER_BACK),
}
READ_TIMEOUT = 5.0
WRITE_TIMEOUT = 30.0
#: A rendering is served again to scrapes within this many seconds of it.
CACHE_S = 2.0
#: Connections served at once; more are closed at once (a scrape storm, a hostile peer).
MAX_CONNECTIONS = 16






@dataclass(slots=True)
class Snapshot:
    """What a scrape shows, copied from the router inside its event loop."""

    states: list[tuple[tuple[str, str, str, str], str, int, int | None, int]]
    stats: dict[str, int]
    faults: dict[str, int]
    loops: dict[str, dict[str, Any]]
    actions: dict[str, int]
    queued: int
    running: int
    spool_depth: int
    alerts: dict[str, Any]
    cluster: dict[str, Any] | None
    heartbeats: int
    #: Router peering (``Peers.info``), or None without [peers].
    peers: dict[str, Any] | None = None


class RouterCollector:
    """A prometheus-client collector that reads the :class:`Snapshot` it is given."""

    def __init__(self) -> None:
        self.snap: Snapshot | None = None

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily as Counter
        from prometheus_client.core import GaugeMetricFamily as Gauge

        r = self.snap
        if r is None:
            return
        info = Gauge("knotify_build_info", "knotify version", labels=["version"])
        info.add_metric([__version__], 1)
        yield info

        keys = ["host", "kind", "name", "vs"]
        state = Gauge("knotify_state", "1 for the state each subject is in, 0 for the "
                      "others of its kind", labels=[*keys, "state"])
        since = Gauge("knotify_state_since_timestamp_seconds", "when the subject entered "
                      "its current state (the reporting host's clock)", labels=keys)
        prio = Gauge("knotify_priority", "last reported VRRP priority", labels=keys)
        transitions = Counter("knotify_transitions", "state changes seen per subject",
                              labels=keys)
        for (host, kind, name, vs), current, since_ns, priority, epoch in sorted(r.states):
            labels = [host, kind, name, vs]
            for word in dict.fromkeys((*STATES.get(kind, ()), current)):
                state.add_metric([*labels, word], 1.0 if word == current else 0.0)
            since.add_metric(labels, since_ns / 1e9)
            if priority is not None:
                prio.add_metric(labels, priority)
            transitions.add_metric(labels, epoch)
        yield from (state, since, prio, transitions)

        stats = r.stats
        for key, name, text in (
            ("received", "knotify_messages_received", "messages read from the sockets"),
            ("rejected", "knotify_messages_rejected", "messages refused (bad or unknown)"),
            ("journaled", "knotify_events_journaled", "new events journaled"),
            ("duplicates", "knotify_events_duplicate", "events already journaled (same id)"),
            ("spool_replayed", "knotify_spool_replayed", "events replayed from the spool"),
            ("journal_errors", "knotify_journal_errors", "failed journal commits"),
            ("batches", "knotify_journal_batches", "intake batches committed (events/batches "
             "is the mean batch size)"),
            ("unauthorised", "knotify_messages_unauthorised", "messages refused for their "
             "sender (a removed key, another host's name, a control op without admin)"),
            ("clock_ahead", "knotify_events_clock_ahead", "events dated past max_clock_skew "
             "ahead of the router's clock (ordered as received)"),
            ("keys_refused", "knotify_keys_refused", "events of new keys past max_keys "
             "(journaled as refused, not tracked)"),
            ("keys_forgotten", "knotify_keys_forgotten", "DELETED keys forgotten"),
            ("curve_refused", "knotify_curve_refused", "TCP connections refused for an "
             "unknown CURVE key"),
            ("spool_bad", "knotify_spool_bad", "spool files set aside in spool/bad (not a "
             "regular file, not an event, too big or too deep)"),
            ("spool_recovered", "knotify_spool_recovered", "complete events recovered from "
             "spool/tmp (left there by a killed hook)"),
            ("spool_scan_errors", "knotify_spool_scan_errors", "spool scans that failed"),
            ("hook_config_problems", "knotify_hook_config_problems", "replayed events whose "
             "hook could not read its config (it used the defaults)"),
        ):
            counter = Counter(name, text)
            counter.add_metric([], stats.get(key, 0))
            yield counter

        faults = Counter("knotify_faults", "unexpected errors caught at a boundary (message, "
                         "batch, command, task, a loop's turn, ...) by where", labels=["where"])
        for where, count in sorted(r.faults.items()):
            faults.add_metric([where], count)
        yield faults
        turn = Gauge("knotify_loop_last_turn_seconds", "seconds since each background loop "
                     "last turned", labels=["loop"])
        restarts = Counter("knotify_loop_restarts", "times each background loop died and was "
                           "started again", labels=["loop"])
        for name, loop in sorted(r.loops.items()):
            if loop["last_turn_s"] is not None:
                turn.add_metric([name], loop["last_turn_s"])
            restarts.add_metric([name], loop["restarts"])
        yield from (turn, restarts)

        actions = Counter("knotify_actions", "finished action runs by outcome",
                          labels=["outcome"])
        for outcome, count in sorted(r.actions.items()):
            actions.add_metric([outcome], count)
        yield actions
        yield _gauge("knotify_actions_queued", "action runs waiting for their turn", r.queued)
        yield _gauge("knotify_actions_running", "action runs under way", r.running)
        yield _gauge("knotify_spool_depth", "events waiting in this router's spool",
                     r.spool_depth)

        alert_info = r.alerts
        alerts = Counter("knotify_alerts", "alert outcomes (sent, failed, silenced, ...)",
                         labels=["outcome"])
        for outcome, count in sorted(alert_info.get("outcomes", {}).items()):
            alerts.add_metric([outcome], count)
        yield alerts
        queue = Gauge("knotify_alert_queue", "alert items and messages by status",
                      labels=["what"])
        for what, count in sorted(alert_info.items()):
            if what.startswith(("items_", "messages_")) and isinstance(count, int):
                queue.add_metric([what], count)
        yield queue
        yield _gauge("knotify_alert_attempts_running", "alert deliveries under way",
                     alert_info.get("attempts_running", 0))
        yield _gauge("knotify_alert_workers", "sender worker processes alive",
                     alert_info.get("workers", {}).get("workers", 0))

        if r.cluster is not None:
            yield from _cluster(r.cluster, r.heartbeats)
        if r.peers is not None:
            yield from _peers(r.peers)


def _peers(info: dict[str, Any]) -> Iterator[Metric]:
    """Router peering: each peer router's reachability and exchanges, and the messages
    skipped because a peer sent them. (``knotify_peer_up`` is a watched host's.)"""
    from prometheus_client.core import CounterMetricFamily as Counter
    from prometheus_client.core import GaugeMetricFamily as Gauge

    up = Gauge("knotify_router_peer_up", "1 if the peer router answered the last "
               "exchange of notification log and silences", labels=["peer"])
    last = Gauge("knotify_router_peer_last_sync_seconds", "seconds since the last exchange "
                 "with the peer router that worked", labels=["peer"])
    sync = Counter("knotify_router_peer_sync", "exchanges with each peer router by result "
                   "(ok, timeout, refused, error)", labels=["peer", "result"])
    for peer in info["routers"]:
        up.add_metric([peer["name"]], 1.0 if peer["up"] else 0.0)
        if peer["last_sync_s"] is not None:
            last.add_metric([peer["name"]], peer["last_sync_s"])
        for result in sorted({"ok", "timeout", "refused", "error", *peer["sync"]}):
            sync.add_metric([peer["name"], result], peer["sync"].get(result, 0))
    deduped = Counter("knotify_alerts_deduped", "messages not sent because a peer router's "
                      "notification log showed it sent them", labels=["receiver"])
    for receiver, count in sorted(info["deduped"].items()):
        deduped.add_metric([receiver], count)
    yield from (up, last, sync, deduped)


def _gauge(name: str, text: str, value: float) -> Metric:
    from prometheus_client.core import GaugeMetricFamily

    return GaugeMetricFamily(name, text, value=value)


def _cluster(view: dict[str, Any], heartbeats: int) -> Iterator[Metric]:
    from prometheus_client.core import CounterMetricFamily as Counter
    from prometheus_client.core import GaugeMetricFamily as Gauge

    beats = Counter("knotify_heartbeats", "heartbeats received")
    beats.add_metric([], heartbeats)
    yield beats
    condition = Gauge("knotify_cluster_condition", "1 while the cluster is in this "
                      "condition (OK, SPLIT_BRAIN, NO_MASTER)", labels=["cluster", "condition"])
    masters = Gauge("knotify_cluster_masters", "hosts MASTER (and still heard from)",
                    labels=["cluster"])
    members = Gauge("knotify_cluster_members", "hosts reporting the cluster's instance",
                    labels=["cluster"])
    for group in view["groups"]:
        label = group["label"]
        for word in (CLUSTER_OK, SPLIT_BRAIN, NO_MASTER):
            condition.add_metric([label, word], 1.0 if group["condition"] == word else 0.0)
        masters.add_metric([label], len(group["masters"]))
        members.add_metric([label], len({m["host"] for m in group["members"]}))
    yield from (condition, masters, members)
    up = Gauge("knotify_peer_up", "1 if a watched host was heard from within silent_after",
               labels=["host"])
    heard = Gauge("knotify_peer_last_heard_timestamp_seconds", "when the router last heard "
                  "from the host (router clock)", labels=["host"])
    depth = Gauge("knotify_peer_spool_depth", "events waiting in the host's spool, as its "
                  "last heartbeat said", labels=["host"])
    for peer in view["peers"]:
        if peer["watched"]:
            up.add_metric([peer["host"]], 0.0 if peer["silent"] else 1.0)
        if peer["heard_ns"] is not None:
            heard.add_metric([peer["host"]], peer["heard_ns"] / 1e9)
        if peer["spool"] is not None:
            depth.add_metric([peer["host"]], peer["spool"])
    yield from (up, heard, depth)


class Exposition:
    """Renders the metrics text off the event loop, one rendering at a time, cached."""

    def __init__(self, snapshot: Callable[[], Snapshot]) -> None:
        from prometheus_client import CollectorRegistry
        from prometheus_client.process_collector import ProcessCollector

        self.snapshot = snapshot
        self.collector = RouterCollector()
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self.collector)
        ProcessCollector(registry=self.registry)
        self._lock = asyncio.Lock()
        self._cache: dict[str, tuple[float, bytes]] = {}

    async def render(self, accept: str) -> tuple[bytes, str]:
        from prometheus_client.exposition import choose_encoder

        encoder, ctype = choose_encoder(accept)
        async with self._lock:
            loop = asyncio.get_running_loop()
            cached = self._cache.get(ctype)
            if cached is not None and loop.time() - cached[0] < CACHE_S:
                return cached[1], ctype
            self.collector.snap = self.snapshot()
            try:
                body = await loop.run_in_executor(None, encoder, self.registry)
            finally:
                self.collector.snap = None
            self._cache = {ctype: (loop.time(), body)}
            return body, ctype


async def listen(snapshot: Callable[[], Snapshot], faults: Faults,
                 settings: MetricsSettings) -> asyncio.Server:
    """Bind the metrics port (OSError if it cannot be bound); serve with ``serve_forever``.

    ``snapshot`` copies what a scrape shows (the router's, taken in its event loop)."""
    exposition = Exposition(snapshot)
    host, port = settings.address

    open_connections = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal open_connections
        open_connections += 1
        try:
            if open_connections > MAX_CONNECTIONS:  # a scrape storm or a hostile peer
                faults.counts["metrics_refused"] += 1
                return
            await _answer(exposition, reader, writer)
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError,
                asyncio.LimitOverrunError, ValueError):
            pass
        except Exception as exc:  # one connection's failure: counted, logged, the next served
            faults.record("metrics", exc)
        finally:
            open_connections -= 1
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    return await asyncio.start_server(handle, host, port)


async def _answer(exposition: Exposition, reader: asyncio.StreamReader,
                  writer: asyncio.StreamWriter) -> None:
    async with asyncio.timeout(READ_TIMEOUT):  # a slow sender holds a slot this long at most
        request = (await reader.readline()).decode("latin-1").split()
        accept = ""
        for _ in range(100):
            line = await reader.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            name, _, value = line.decode("latin-1").partition(":")
            if name.strip().lower() == "accept":
                accept = value.strip()
    method, path = (request[0], request[1]) if len(request) >= 2 else ("", "")
    if method not in ("GET", "HEAD"):
        status, ctype, body = "405 Method Not Allowed", "text/plain", b"GET only\n"
    elif path.split("?", 1)[0] in ("/metrics", "/metrics/"):
        body, ctype = await exposition.render(accept)
        status = "200 OK"
    elif path == "/":
        status, ctype = "200 OK", "text/html"
        body = b'<html><body><a href="/metrics">knotify metrics</a></body></html>\n'
    else:
        status, ctype, body = "404 Not Found", "text/plain", b"not found: try /metrics\n"
    head = (f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n").encode()
    writer.write(head if method == "HEAD" else head + body)
    async with asyncio.timeout(WRITE_TIMEOUT):
        await writer.drain()
