"""Peering inside the router: the send gate, the notification log, and replication.

:class:`Peers` is what the router and the alert engine call:

- :meth:`Peers.gate` before each attempt of a message: wait this router's turn
  (position x ``peer_timeout`` from when the message was composed), or skip it when
  peers' notification logs cover it (:mod:`knotify.peers.gate`); :meth:`Peers.skip`
  journals the skip (message status ``sent_by_peer``, with the peer's name);
- :meth:`Peers.sent` when a message was delivered: its notification log entry, in
  the same transaction as the outcome, then pushed to every peer;
- :meth:`Peers.changed` when a silence was added or expired here: pushed likewise;
- :meth:`Peers.command` answers a peer's ``peer_sync``.

Replication is one exchange per peer (:meth:`Peers.exchange`), run on every write and
at least every :data:`~knotify.peers.settings.SYNC_INTERVAL` (anti-entropy): each side
sends the log entries and silences the other has not had yet (change numbers, kept per
peer in memory: after a restart everything live is sent again, and merging what is
held already does nothing), so after a cut the logs converge and nothing is sent twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import orjson
import zmq.asyncio

from knotify.alerts import incident
from knotify.alerts.silence import SilenceStore, parse_matchers
from knotify.errors import JournalError, SilenceError, WireError
from knotify.event import WIRE_VERSION, encode
from knotify.peers import gate
from knotify.peers.gate import Verdict
from knotify.peers.link import Link, request
from knotify.peers.settings import REQUEST_TIMEOUT, SYNC_INTERVAL, PeerSettings
from knotify.store.nflog import Entry, NotificationLog
from knotify.store.silences import SilenceRow
from knotify.transport import ClientCurve, load_secret
from knotify.vocab import CLUSTER, MASTER, SENT_BY_PEER, VRRP_KINDS

if TYPE_CHECKING:
    from knotify.alerts.engine import AlertEngine
    from knotify.cluster.settings import ClusterSettings
    from knotify.config import Config
    from knotify.store.db import Database
    from knotify.store.outbox import MessageRow, Outbox
    from knotify.supervisor import Supervisor
    from knotify.tracker import Tracker

T = TypeVar("T")
#: Router ops peering answers.
PEER_OPS = frozenset({"peer_sync"})
#: How long a notification log entry is kept (and replicated) after it was sent.
RETENTION_S = 86_400.0
#: The cluster view the gate reads is rebuilt at most this often (seconds).
VIEW_TTL = 0.2
#: Expired log entries are forgotten this often.
PRUNE_EVERY_S = 600.0


def _fit(rows: list[tuple[int, T]], wire: Callable[[T], dict[str, Any]], upto: int,
         budget: int) -> tuple[list[dict[str, Any]], int]:
    """As many of ``rows`` (in change order) as fit in ``budget`` bytes of JSON (one at
    least, so one large row cannot stall replication), and the last change sent."""
    out: list[dict[str, Any]] = []
    used = 0
    for changed, row in rows:
        data = wire(row)
        size = len(encode(data))
        if out and used + size > budget:
            return out, changed - 1
        out.append(data)
        used += size
    return out, upto


def _silence_wire(row: SilenceRow) -> dict[str, Any]:
    return {"uid": row.uid, "matchers": row.matchers, "starts_ns": row.starts_ns,
            "ends_ns": row.ends_ns, "created_ns": row.created_ns, "by": row.by,
            "reason": row.reason, "expired_ns": row.expired_ns}


def _silence_row(data: Any) -> SilenceRow:
    """A silence a peer sent; ValueError says what is wrong with it."""
    if not isinstance(data, dict):
        raise ValueError("a silence must be an object")
    uid, matchers = data.get("uid"), data.get("matchers")
    if not isinstance(uid, str) or not 0 < len(uid) <= 64:
        raise ValueError("silence 'uid' must be a string")
    if not isinstance(matchers, list) or not all(isinstance(m, str) for m in matchers):
        raise ValueError("silence 'matchers' must be a list of strings")
    try:
        texts = [m.text for m in parse_matchers(matchers)]
    except SilenceError as exc:
        raise ValueError(str(exc)) from None
    times = {k: data.get(k) for k in ("starts_ns", "ends_ns", "created_ns")}
    for key, value in times.items():
        if type(value) is not int or not 0 <= value < 2**63:
            raise ValueError(f"silence {key!r} must be a time in ns")
    expired = data.get("expired_ns")
    if expired is not None and (type(expired) is not int or not 0 <= expired < 2**63):
        raise ValueError("silence 'expired_ns' must be a time in ns or null")
    by, reason = data.get("by", ""), data.get("reason", "")
    if not isinstance(by, str) or not isinstance(reason, str):
        raise ValueError("silence 'by' and 'reason' must be strings")
    return SilenceRow(0, texts, int(data["starts_ns"]), int(data["ends_ns"]),
                      int(data["created_ns"]), by[:200], reason[:1000], expired, uid)


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
        """Send ``message`` now, wait, or skip it (a peer sent it)."""
        s = self.settings
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
        facts = self._message_facts(message)
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

    def _rows(self, after: Mapping[str, int], now_ns: int
              ) -> tuple[dict[str, Any], dict[str, int], bool]:
        """What a peer that has had changes up to ``after`` gets next (within the
        budget), the changes that reaches, and whether there is more."""
        entries, nflog_upto = self.nflog.since(after["nflog"], now_ns)
        silences, silences_upto = self.silences.rows.since(after["silences"])
        budget = max(1024, self.max_message // 3)
        nflog, nflog_upto = _fit(entries, Entry.to_wire, nflog_upto, budget)
        wire, silences_upto = _fit(silences, _silence_wire, silences_upto, budget)
        more = (nflog_upto < self.nflog.last_change()
                or silences_upto < self.silences.rows.last_change())
        return ({"nflog": nflog, "silences": wire},
                {"nflog": nflog_upto, "silences": silences_upto}, more)

    def _outgoing(self, link: Link, now_ns: int) -> tuple[dict[str, Any], dict[str, int], bool]:
        return self._rows(link.sent, now_ns)

    async def exchange(self, link: Link) -> bool:
        """One exchange with ``link``'s router; whether there is more to send or get."""
        now = self.clock()
        self._prune(now)
        body, upto, more = self._outgoing(link, now)
        payload = encode({"v": WIRE_VERSION, "op": "peer_sync", "from": self.me, **body,
                          "want": dict(link.got)})
        try:
            answer = decode_message_reply(await request(
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
            self._relay(link.name)
        return more

    def _note(self, link: Link, result: str, error: str = "") -> None:
        if link.note(result, self.clock(), error):
            if link.up:
                self.log.info("peer.up", peer=link.name, endpoint=link.router.endpoint)
            else:
                self.log.warning("peer.down", peer=link.name, endpoint=link.router.endpoint,
                                 error=error, detail="this router no longer waits for it: "
                                 "both may send (never a miss)")

    def _relay(self, source: str) -> None:
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
        rows = [_silence_row(s) for s in silences]
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

    # -- replication: the server side ----------------------------------------------------------

    def command(self, op: str, msg: dict[str, Any]) -> dict[str, Any]:
        """Answer a peer's ``peer_sync``: merge what it sent, send what it has not had."""
        if op != "peer_sync":
            raise WireError(f"unknown op {op[:40]!r}")
        who = msg.get("from")
        link = self.links.get(who) if isinstance(who, str) else None
        if link is None:
            raise WireError(f"peer_sync from {str(who)[:64]!r}, which is not in this "
                            f"router's [peers.routers] ({', '.join(self.links)})")
        want = msg.get("want")
        if (not isinstance(want, dict) or type(want.get("nflog")) is not int
                or type(want.get("silences")) is not int
                or not (0 <= want["nflog"] < 2**63 and 0 <= want["silences"] < 2**63)):
            raise WireError("peer_sync 'want' must hold the nflog and silences change numbers")
        try:
            merged = self.merge(link, msg)
        except ValueError as exc:
            raise WireError(f"peer_sync from {link.name}: {exc}") from None
        self.served += 1
        if merged:
            self._relay(link.name)
        now = self.clock()
        # A peer that had more than this journal holds heard from another journal (this
        # one was made anew): it gets everything.
        after = {"nflog": int(want["nflog"]), "silences": int(want["silences"])}
        if after["nflog"] > self.nflog.last_change():
            after["nflog"] = 0
        if after["silences"] > self.silences.rows.last_change():
            after["silences"] = 0
        body, upto, more = self._rows(after, now)
        return {"name": self.me, **body, "upto": upto, "more": more}

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


def decode_message_reply(payload: bytes) -> dict[str, Any]:
    """A peer's answer: a versioned JSON object (ValueError otherwise)."""
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(data, dict) or data.get("v") != WIRE_VERSION:
        raise ValueError("not a version 1 answer")
    return data
