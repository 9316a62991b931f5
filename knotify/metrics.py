"""Prometheus metrics on an optional HTTP port (``[metrics] listen = "127.0.0.1:9650"``).

Everything is read from the router's own state when Prometheus scrapes, inside the
router's event loop (the HTTP server is an asyncio server there, not a thread), so
a scrape sees one consistent moment and the hot path pays nothing. Transitions are
the tracker's per-key epoch, which the journal keeps: the counter survives restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from knotify import __version__, spool
from knotify.schema import Table

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric
    from prometheus_client.registry import CollectorRegistry

    from knotify.router import Router

#: The states shown (0 or 1) for each kind; the current one is always shown.
STATES = {
    "INSTANCE": ("MASTER", "BACKUP", "FAULT", "STOP"),
    "GROUP": ("MASTER", "BACKUP", "FAULT", "STOP"),
    "VS": ("UP", "DOWN"),
    "RS": ("UP", "DOWN"),
    "CLUSTER": ("OK", "SPLIT_BRAIN", "SPLIT_BRAIN_RESOLVED", "NO_MASTER", "MASTER_BACK"),
    "PEER": ("PEER_SILENT", "PEER_BACK"),
}
READ_TIMEOUT = 5.0


@dataclass(slots=True, frozen=True)
class MetricsSettings:
    #: ``HOST:PORT`` (``[::1]:9650`` for IPv6); empty: no metrics server.
    listen: str = ""

    @property
    def address(self) -> tuple[str, int]:
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]"), int(port)


def parse_settings(top: Table) -> MetricsSettings:
    m = top.table("metrics")
    listen = m.text("listen", "")
    if listen:
        host, sep, port = listen.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise m.error("listen", f"expected HOST:PORT such as \"127.0.0.1:9650\", found "
                          f"{listen!r}")
    m.done()
    return MetricsSettings(listen)


class RouterCollector:
    """A prometheus-client collector that reads a running :class:`~knotify.router.Router`."""

    def __init__(self, router: Router) -> None:
        self.router = router

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily as Counter
        from prometheus_client.core import GaugeMetricFamily as Gauge

        r = self.router
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
        for (host, kind, name, vs), ks in sorted(r.tracker.states.items()):
            labels = [host, kind, name, vs]
            for word in dict.fromkeys((*STATES.get(kind, ()), ks.state)):
                state.add_metric([*labels, word], 1.0 if word == ks.state else 0.0)
            since.add_metric(labels, ks.since_ns / 1e9)
            if ks.prio is not None:
                prio.add_metric(labels, ks.prio)
            transitions.add_metric(labels, ks.epoch)
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
        ):
            counter = Counter(name, text)
            counter.add_metric([], stats.get(key, 0))
            yield counter

        ex = r.executor
        actions = Counter("knotify_actions", "finished action runs by outcome",
                          labels=["outcome"])
        for outcome, count in sorted((ex.counts if ex else {}).items()):
            actions.add_metric([outcome], count)
        yield actions
        yield _gauge("knotify_actions_queued", "action runs waiting for their turn",
                     ex.queued if ex else 0)
        yield _gauge("knotify_actions_running", "action runs under way",
                     len(ex.active) if ex else 0)
        yield _gauge("knotify_spool_depth", "events waiting in this router's spool",
                     spool.depth(r.config.hook.spool_dir))

        alert_info: dict[str, Any] = r.alerts.info() if r.alerts is not None else {}
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
            yield from _cluster(r.cluster.view(), r.cluster.heartbeats)


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
        for word in ("OK", "SPLIT_BRAIN", "NO_MASTER"):
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


def registry(router: Router) -> CollectorRegistry:
    from prometheus_client import CollectorRegistry
    from prometheus_client.process_collector import ProcessCollector

    reg = CollectorRegistry(auto_describe=False)
    reg.register(RouterCollector(router))
    ProcessCollector(registry=reg)
    return reg


async def listen(router: Router, settings: MetricsSettings) -> asyncio.Server:
    """Bind the metrics port (OSError if it cannot be bound); serve with ``serve_forever``."""
    reg = registry(router)
    host, port = settings.address

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await asyncio.wait_for(_answer(reg, reader, writer), READ_TIMEOUT)
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError,
                asyncio.LimitOverrunError, ValueError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    return await asyncio.start_server(handle, host, port)


async def _answer(reg: CollectorRegistry, reader: asyncio.StreamReader,
                  writer: asyncio.StreamWriter) -> None:
    from prometheus_client.exposition import choose_encoder

    request = (await reader.readline()).decode("latin-1").split()
    accept = ""
    while True:
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
        encoder, ctype = choose_encoder(accept)
        status, body = "200 OK", encoder(reg)
    elif path == "/":
        status, ctype = "200 OK", "text/html"
        body = b'<html><body><a href="/metrics">knotify metrics</a></body></html>\n'
    else:
        status, ctype, body = "404 Not Found", "text/plain", b"not found: try /metrics\n"
    head = (f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n").encode()
    writer.write(head if method == "HEAD" else head + body)
    await writer.drain()
