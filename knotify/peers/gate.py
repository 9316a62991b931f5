"""The send gate: wait this router's turn, skip what a peer has already sent (pure).

A message covers *facts*: for each of its alerts, the alert kind (firing, repeat,
flapping, ...) and the event. Routers fed by the same hooks journal the same event
under the same id, so an event's fact is its id. CLUSTER and PEER events are made by
each router's own cluster view (with its own id and its own name as host), so their
fact is what they say (kind, name, previous and new state): two routers' splits of
the same cluster are the same news. Since the same news can come again later (another
failover to the same state), a peer's fact covers ours only when their messages were
made within :attr:`~knotify.peers.settings.PeerSettings.window_s` of each other.

A message is skipped when every one of its facts is in the live log entries of peers
for the same group and receiver (the union: a peer may have grouped the alerts into
two messages where this router has one).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from knotify.store.nflog import Entry
from knotify.vocab import SYNTHETIC_KINDS


def fact(alert: str, fields: Mapping[str, str]) -> str:
    """What one alert of a message says, the same on every router that journals it."""
    kind = fields.get("kind", "")
    if kind in SYNTHETIC_KINDS:
        return "|".join((alert, kind, fields.get("name", ""), fields.get("vs", ""),
                         fields.get("from", "") + ">" + fields.get("state", "")))
    return f"{alert}|{fields.get('id', '')}"


def facts(alerts: Iterable[tuple[str, Mapping[str, str]]]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(fact(alert, fields) for alert, fields in alerts))


def covering(entries: Sequence[Entry], wanted: Sequence[str], made_ns: int, window_ns: int,
             me: str) -> Entry | None:
    """The latest peer entry of those that together cover every fact in ``wanted``
    (said in messages made within ``window_ns`` of ``made_ns``), or None."""
    if not wanted:
        return None
    left = set(wanted)
    last: Entry | None = None
    for entry in entries:
        if entry.sent_by == me:
            continue
        hits = {f for f, at in entry.facts if f in left and abs(at - made_ns) <= window_ns}
        if hits:
            left -= hits
            if last is None or entry.sent_ns >= last.sent_ns:
                last = entry
        if not left:
            return last
    return None


@dataclass(slots=True, frozen=True)
class Verdict:
    """What to do with a message now: send, wait until ``until_ns``, or skip it
    because ``peer`` sent it."""

    until_ns: int = 0
    peer: str | None = None
    detail: str = ""
    #: This router's position for the message, and the routers it waits for.
    position: int = 0
    ahead: tuple[str, ...] = ()

    def sends(self, now_ns: int) -> bool:
        return self.peer is None and self.until_ns <= now_ns


def position(me: str, order: Sequence[str], hosts: Mapping[str, str], masters: Iterable[str],
             reachable: Mapping[str, bool]) -> tuple[int, tuple[str, ...]]:
    """This router's position for a group, and the routers ahead of it.

    The router beside a host that is VRRP MASTER for the group goes first (the first
    of ``order`` when several are: a split brain); the others follow ``order``. A
    router that is not reachable is not waited for (fail-open: both send, never a miss).
    """
    masters = set(masters)
    first = [name for name in order if hosts.get(name, name) in masters][:1]
    ranking = first + [name for name in order if name not in first]
    ahead: list[str] = []
    for name in ranking:
        if name == me:
            break
        if reachable.get(name, True):
            ahead.append(name)
    return len(ahead), tuple(ahead)


def decide(*, me: str, entries: Sequence[Entry], wanted: Sequence[str], made_ns: int,
           now_ns: int, window_ns: int, peer_timeout_s: float, order: Sequence[str],
           hosts: Mapping[str, str], masters: Iterable[str],
           reachable: Mapping[str, bool]) -> Verdict:
    """The gate for one message that became ready (was composed) at ``made_ns``."""
    sent = covering(entries, wanted, made_ns, window_ns, me)
    if sent is not None:
        return Verdict(peer=sent.sent_by, detail=(
            f"sent by peer {sent.sent_by} (its notification log covers this message)"))
    pos, ahead = position(me, order, hosts, masters, reachable)
    until = made_ns + int(pos * peer_timeout_s * 1e9)
    detail = (f"position {pos}: waits for {', '.join(ahead)} until {until}" if pos
              else "position 0")
    return Verdict(until_ns=until if until > now_ns else 0, detail=detail, position=pos,
                   ahead=ahead)
