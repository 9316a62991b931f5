"""Peering inside the router: the send gate, the notification log, and replication.

:class:`Peers` is what the router and the alert engine call: :meth:`Peers.gate` before
each attempt (wait this router's turn, or skip what peers' logs cover:
:mod:`knotify.peers.gate`), :meth:`Peers.skip` (journaled ``sent_by_peer``),
:meth:`Peers.sent` (a delivery's log entry, pushed to peers), :meth:`Peers.changed` (a
silence added or expired here) and :meth:`Peers.command` (a peer's ``peer_sync``).
Replication runs on every write and every :data:`~knotify.peers.settings.SYNC_INTERVAL`
(anti-entropy): each side sends what the other has not had yet (change numbers per peer,
in memory: after a restart everything live is sent again; merging it does nothing).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import sqlite3
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import zmq.asyncio

from knotify.alerts import incident
from knotify.alerts.silence import SilenceStore
from knotify.errors import JournalError
from knotify.event import encode
from knotify.peers import gate, serve, wire
from knotify.peers.gate import Verdict
from knotify.peers.link import Link, request
from knotify.peers.settings import REQUEST_TIMEOUT, SYNC_INTERVAL, PeerSettings
from knotify.store.nflog import Entry, NotificationLog
from knotify.transport import ClientCurve, load_secret
from knotify.vocab import CLUSTER, MASTER, SENT_BY_PEER, VRRP_KINDS
from knotify.wire import WIRE_VERSION

if TYPE_CHECKING:
    from knotify.alerts.engine import AlertEngine
    from knotify.cluster.settings import ClusterSettings
    from knotify.config import Config
    from knotify.store.db import Database
    from knotify.store.outbox import MessageRow, Outbox
    from knotify.supervisor import Supervisor
    from knotify.tracker import Tracker

#: How long a notification log entry is kept (and replicated) after it was sent.
RETENTION_S = 86_400.0
#: The cluster view the gate reads is rebuilt at most this often (seconds).
VIEW_TTL = 0.2
#: After a start, sending waits at most this long for the first exchange with each peer
#: (it ends within REQUEST_TIMEOUT, answered or not); the gate looks again this often.
SETTLE_S = 2 * REQUEST_TIMEOUT + 1.0
SETTLE_POLL_NS = 200_000_000
#: Expired log entries are forgotten this often.
PRUNE_EVERY_S = 600.0


class Peers:
    def __init__(self, settings: PeerSettings, database: Database, outbox: Outbox,
                 silences: SilenceStore, tracker: Callable[[], Tracker],
                 cluster: Callable[[], ClusterSettings], log: Any,
                 ctx: zmq.asyncio.Context, curve: ClientCurve | None,
                 clock: Callable[[], int] = time.time_ns, max_message: int = 256 * 1024
                 ) -> None:
        self.settings = settings
        self.database = database
        self.nflog = NotificationLog(database)
        self.outbox = outbox
        self.silences = silences
        self._tracker = tracker
        self._cluster = cluster
        self.log = log
        self.ctx = ctx
        self.curve = curve
        self.clock = clock
        #: The largest request a peer takes ([router] max_message, as on this router).
        self.max_message = max_message
        self.links = {r.name: Link(r) for r in settings.routers}
        #: Until the first exchange with each peer has ended (or SETTLE_S passed), nothing
        #: is sent: a router started while a group waits must first hear what was sent.
        self.settle_until_ns = clock() + int(SETTLE_S * 1e9)
        #: Messages skipped because a peer sent them, by receiver.
        self.deduped: dict[str, int] = {}
        #: Exchanges that crashed (a bug), and peer_sync requests served.
        self.crashed = 0
        self.served = 0
        self._facts: dict[int, tuple[str, ...]] = {}
        self._labels: dict[int, set[str]] = {}
        self._view_cache: tuple[float, incident.ClusterIndex, dict[str, set[str]]] | None \
            = None
        self._pruned = 0.0
        #: Called at each turn of a link's loop (the router's supervisor watches it).
        self.beat: Callable[[str], None] = lambda name: None

    @classmethod
    def start(cls, config: Config, engine: AlertEngine, tracker: Callable[[], Tracker],
              cluster: Callable[[], ClusterSettings], log: Any,
              ctx: zmq.asyncio.Context) -> Peers:
        """The router's peering, attached to its alert engine. A router with
        ``[router.curve]`` reaches its peers with the site's shared router key pair
        (their public key is its own)."""
        assert config.peers is not None
        curve = None
        if config.curve is not None:
            public, secret = load_secret(config.curve.secret_key)
            curve = ClientCurve(public, public, secret)
        peers = cls(config.peers, engine.journal.database, engine.outbox, engine.silences,
                    tracker, cluster, log, ctx, curve,
                    max_message=config.max_message)
        engine.peers = peers
        return peers

    def spawn(self, sup: Supervisor) -> None:
        """One background task per peer, under the router's supervisor."""
        self.beat = lambda name: sup.beat(f"peer {name}")
        for name in self.links:
            sup.spawn(f"peer {name}", functools.partial(self.run_link, name),
                      SYNC_INTERVAL + REQUEST_TIMEOUT + 1.0)

    @property
    def me(self) -> str:
        return self.settings.name

    # -- the send gate ----------------------------------------------------------------------

    def _message_facts(self, message: MessageRow) -> tuple[str, ...]:
        have = self._facts.get(message.rowid)
        if have is None:
            items = self.outbox.message_items(message.origin)
            have = gate.facts((i.alert, i.fields) for i in items)
            if len(self._facts) > 10_000:
                self._facts.clear()
            self._facts[message.rowid] = have
        return have

    def _view(self) -> tuple[incident.ClusterIndex, dict[str, set[str]]]:
        """The cluster labels and each label's MASTER hosts, from the tracker's states;
        built at most every :data:`VIEW_TTL` seconds (every attempt of every message
        looks at it)."""
        now = time.monotonic()
        if self._view_cache is None or now - self._view_cache[0] > VIEW_TTL:
            states = self._tracker().states
            index = incident.ClusterIndex(states, self._cluster())
            masters: dict[str, set[str]] = {}
            for (host, kind, name, _vs), ks in states.items():
                if kind in VRRP_KINDS:
                    label = index.label(host, name)
                    if label is not None:
                        found = masters.setdefault(label, set())
                        if ks.state == MASTER:
                            found.add(host)
            self._view_cache = (now, index, masters)
        return self._view_cache[1], self._view_cache[2]

    def masters(self, message: MessageRow) -> set[str]:
        """Hosts that are VRRP MASTER (the tracker's latest state) for the clusters the
        message's alerts are about."""
        index, masters = self._view()
        labels = self._labels.get(message.rowid)
        if labels is None:
            labels = set()
            for item in self.outbox.message_items(message.origin):
                kind, name = item.fields.get("kind", ""), item.fields.get("name", "")
                if kind == CLUSTER:
                    labels.add(name)
                elif kind in VRRP_KINDS:
                    label = index.label(item.fields.get("host", ""), name)
                    if label is not None:
                        labels.add(label)
            if len(self._labels) > 10_000:
                self._labels.clear()
            self._labels[message.rowid] = labels
        return set().union(*(masters.get(label, set()) for label in labels))

    def reachable(self) -> dict[str, bool]:
        return {name: link.reachable() for name, link in self.links.items()}

    def hosts(self) -> dict[str, str]:
        return {name: self.settings.host_of(name) for name in self.settings.order}

    def gate(self, message: MessageRow, now_ns: int) -> Verdict:
        """Send ``message`` now, wait, or skip it (a peer sent it). A failure here sends
        it (fail-open: a page is never held back by peering)."""
        try:
            return self._decide(message, now_ns)
        except Exception:
            self.crashed += 1
            self.log.exception("peer.gate_crashed", message=message.rowid)
            return Verdict(detail="the peering gate failed: sent without waiting")

    def _decide(self, message: MessageRow, now_ns: int) -> Verdict:
        s = self.settings
        unsettled = [link.name for link in self.links.values() if link.up is None]
        if unsettled and now_ns < self.settle_until_ns:
            return Verdict(until_ns=min(now_ns + SETTLE_POLL_NS, self.settle_until_ns),
                           detail=f"waits for the first exchange with {', '.join(unsettled)}")
        return gate.decide(
            me=s.name, entries=self.nflog.group(message.group_key or "", message.receiver,
                                                now_ns),
            wanted=self._message_facts(message), made_ns=message.created_ns, now_ns=now_ns,
            window_ns=int(s.window_s * 1e9), peer_timeout_s=s.peer_timeout, order=s.order,
            hosts=self.hosts(), masters=self.masters(message), reachable=self.reachable())

    def skip(self, message: MessageRow, verdict: Verdict, now_ns: int) -> None:
        """Journal that a peer sent ``message`` (its own transaction)."""
        with self.database.transaction():
            self.outbox.update_message(message.rowid, status=SENT_BY_PEER, ended_ns=now_ns,
                                       detail=verdict.detail)
        self._facts.pop(message.rowid, None)
        self._labels.pop(message.rowid, None)
        self.deduped[message.receiver] = self.deduped.get(message.receiver, 0) + 1
        self.log.info("alert.sent_by_peer", event_ids=message.event_ids,
                      message=message.rowid, receiver=message.receiver, peer=verdict.peer)

    def sent(self, message: MessageRow, now_ns: int) -> None:
        """``message`` was delivered: its log entry (in the caller's transaction); every
        peer hears of it as soon as the transaction is over."""
        try:
            facts = self._message_facts(message)
        except sqlite3.Error:
            raise  # the outcome's transaction is tried again
        except Exception:  # a bug: the delivery is journaled all the same
            self.crashed += 1
            self.log.exception("peer.log_crashed", message=message.rowid)
            return
        self.nflog.put(Entry(f"{self.me}/{message.rowid}", message.group_key or "",
                             message.receiver, tuple((f, message.created_ns) for f in facts),
                             now_ns, self.me, now_ns + int(RETENTION_S * 1e9)))
        self._facts.pop(message.rowid, None)
        self._labels.pop(message.rowid, None)
        self.changed()

    def changed(self) -> None:
        """Something to replicate: every peer gets it now."""
        for link in self.links.values():
            link.wake.set()

    # -- replication: the client side --------------------------------------------------------

    async def run_link(self, name: str) -> None:
        """One peer's exchanges: at every change here, and every SYNC_INTERVAL."""
        link = self.links[name]
        while True:
            self.beat(name)
            link.wake.clear()
            try:
                more = await self.exchange(link)
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug: counted, logged, the next exchange comes
                self.crashed += 1
                link.note("error", self.clock(), "internal error")
                self.log.exception("peer.sync_crashed", peer=name)
                more = False
            if more:
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(link.wake.wait(), SYNC_INTERVAL)

    def rows_after(self, after: Mapping[str, int], now_ns: int
                   ) -> tuple[dict[str, Any], dict[str, int], bool]:
        """What a peer that has had changes up to ``after`` gets next (within the
        budget), the changes that reaches, and whether there is more."""
        entries, nflog_upto = self.nflog.since(after["nflog"], now_ns)
        silences, silences_upto = self.silences.rows.since(after["silences"])
        budget = max(1024, self.max_message // 3)
        nflog, nflog_upto = wire.fit(entries, Entry.to_wire, nflog_upto, budget)
        sent, silences_upto = wire.fit(silences, wire.silence_wire, silences_upto, budget)
        more = (nflog_upto < self.nflog.last_change()
                or silences_upto < self.silences.rows.last_change())
        return ({"nflog": nflog, "silences": sent},
                {"nflog": nflog_upto, "silences": silences_upto}, more)

    async def exchange(self, link: Link) -> bool:
        """One exchange with ``link``'s router; whether there is more to send or get."""
        now = self.clock()
        self._prune(now)
        body, upto, more = self.rows_after(link.sent, now)
        payload = encode({"v": WIRE_VERSION, "op": "peer_sync", "from": self.me, **body,
                          "want": dict(link.got)})
        try:
            answer = wire.decode_message_reply(await request(
                self.ctx, link.router.endpoint, payload, REQUEST_TIMEOUT, self.curve))
        except TimeoutError as exc:
            self._note(link, "timeout", str(exc))
            return False
        except zmq.ZMQError as exc:
            self._note(link, "error", f"{type(exc).__name__}: {exc}")
            return False
        except ValueError as exc:
            self._note(link, "refused", f"an answer that is not a peer_sync reply: {exc}")
            return False
        if not answer.get("ok"):
            self._note(link, "refused", str(answer.get("error", "refused"))[:300])
            return False
        if answer.get("name") != link.name:
            self._note(link, "refused", f"it calls itself {str(answer.get('name'))[:64]!r}, "
                       f"not {link.name!r} (check both routers' [peers])")
            return False
        got = answer.get("upto")
        try:
            merged = self.merge(link, answer)
            if (not isinstance(got, dict) or type(got.get("nflog")) is not int
                    or type(got.get("silences")) is not int):
                raise ValueError("'upto' must hold the nflog and silences change numbers")
        except ValueError as exc:
            self._note(link, "refused", str(exc))
            return False
        except JournalError as exc:
            self._note(link, "error", str(exc))
            return False
        link.sent = upto
        more = more or bool(answer.get("more"))
        link.got = {"nflog": int(got["nflog"]), "silences": int(got["silences"])}
        self._note(link, "ok")
        if merged:
            self.relay(link.name)
        return more

    def _note(self, link: Link, result: str, error: str = "") -> None:
        if link.note(result, self.clock(), error):
            if link.up:
                self.log.info("peer.up", peer=link.name, endpoint=link.router.endpoint)
            else:
                self.log.warning("peer.down", peer=link.name, endpoint=link.router.endpoint,
                                 error=error, detail="this router no longer waits for it: "
                                 "both may send (never a miss)")

    def relay(self, source: str) -> None:
        """What one peer sent goes on to the others (three routers or more)."""
        for name, link in self.links.items():
            if name != source:
                link.wake.set()

    def merge(self, link: Link, data: Mapping[str, Any]) -> int:
        """Merge a peer's entries and silences (one transaction); how many were new.
        ValueError names what is malformed (nothing of it is merged)."""
        entries, silences = data.get("nflog", []), data.get("silences", [])
        if not isinstance(entries, list) or not isinstance(silences, list):
            raise ValueError("'nflog' and 'silences' must be lists")
        parsed = [Entry.from_wire(e) for e in entries]
        rows = [wire.silence_row(s) for s in silences]
        now = self.clock()
        new_entries = new_silences = 0
        with self.database.transaction():
            for entry in parsed:
                if entry.expires_ns > now and self.nflog.put(entry):
                    new_entries += 1
            for row in rows:
                if self.silences.rows.merge(row):
                    new_silences += 1
        if new_silences:
            self.silences.refresh()
            self.log.info("peer.silences_merged", peer=link.name, silences=new_silences)
        link.merged["nflog"] += new_entries
        link.merged["silences"] += new_silences
        return new_entries + new_silences

    def _prune(self, now_ns: int) -> None:
        if time.monotonic() - self._pruned < PRUNE_EVERY_S:
            return
        self._pruned = time.monotonic()
        with contextlib.suppress(JournalError), self.database.transaction():
            self.nflog.prune(now_ns)

    def command(self, op: str, msg: dict[str, Any]) -> dict[str, Any]:
        """Answer a peer's ``peer_sync`` (:func:`knotify.peers.serve.peer_sync`)."""
        return serve.peer_sync(self, op, msg)

    # -- faces ----------------------------------------------------------------------------------

    def positions(self) -> dict[str, int]:
        """This router's position now for each cluster (by its label)."""
        _, masters = self._view()
        s, reachable, hosts = self.settings, self.reachable(), self.hosts()
        return {label: gate.position(s.name, s.order, hosts, found, reachable)[0]
                for label, found in sorted(masters.items())[:1000]}

    def info(self) -> dict[str, Any]:
        """For ``knotify status`` and the metrics."""
        now = self.clock()
        try:
            entries = self.nflog.count()
            last = {"nflog": self.nflog.last_change(),
                    "silences": self.silences.rows.last_change()}
        except Exception:  # the status must answer even with the journal failing
            entries, last = -1, {}
        routers = []
        for link in self.links.values():
            row = link.info(now)
            # What the peer has not confirmed yet: this router's changes since its last
            # exchange that worked (entries and silences).
            row["lag"] = {k: max(0, v - link.sent[k]) for k, v in last.items()}
            routers.append(row)
        return {"name": self.me, "host": self.settings.host,
                "peer_timeout_s": self.settings.peer_timeout, "order": list(self.settings.order),
                "routers": routers, "positions": self.positions(),
                "nflog_entries": entries, "deduped": dict(self.deduped),
                "served": self.served, "crashed": self.crashed}
