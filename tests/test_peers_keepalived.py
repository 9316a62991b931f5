"""Issue 11 with real keepalived: two load-balancer nodes, a router on each, one page.

The site of tests/peer_cluster.py: lb1 and lb2 run keepalived in network namespaces,
each node's namespace runs a knotify router (CURVE over TCP on the node's address,
the routers sharing one key pair), every hook and agent sends to both routers, and
the pages go to a real webhook server and a real SMTP server (aiosmtpd) that both
routers reach. A failover is lb1's ``prio`` check failing (lb2 takes over) or passing
again (lb1 takes back): nothing is restarted, VRRP decides.

Every count here is read once both routers' journals say nothing is waiting or on its
way (each router journaled the failover's events and every alert item and message is
final), never after a sleep.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import netns_cluster
import peer_cluster
import pytest
from alert_servers import Mail, Request, alert_items, settled
from conftest import KEnv, need, wait_for
from peer_cluster import PRIOS, PeerSite

pytestmark = [pytest.mark.keepalived, pytest.mark.slow, pytest.mark.timeout(600)]

GROUP_WAIT = 2.0

ALERTS = f"""
[alerts]
group_wait = "{GROUP_WAIT}s"
retry_initial = "200ms"
retry_max = "1s"
flap_threshold = 0
"""


def receivers(site: PeerSite) -> str:
    assert site.chat is not None and site.mail is not None
    return f"""
[receivers.chat]
urls = ["{site.chat.url()}"]

[receivers.mail]
urls = ["{site.mail.url(to='oncall@example.com')}"]
"""


#: A failover pages: the old MASTER's MASTER -> BACKUP and the new one's BACKUP -> MASTER
#: (start-up's INIT -> BACKUP does not).
FAILOVER_RULE = """
[[rule]]
id = "failover"
kind = "INSTANCE"
state = ["MASTER", "BACKUP"]
from = ["MASTER", "BACKUP"]
[[rule.action]]
type = "alert"
receivers = ["chat", "mail"]
"""


@pytest.fixture
def site(kenv: KEnv) -> Iterator[PeerSite]:
    ok, reason = peer_cluster.usable()
    need(ok, reason)
    cluster = netns_cluster.BridgedCluster(kenv.root / "ka")
    made = PeerSite(kenv.root, cluster)
    try:
        yield made
    except BaseException:
        raise
    finally:
        made.close()
        forced = cluster.destroy()
        assert not cluster.namespaces, \
            f"network namespaces left behind: {cluster.namespaces} ({forced})"


def spooled(site: PeerSite) -> list[str]:
    """Events a node's hooks spooled for a router (the agent delivers them)."""
    return [str(p) for name in PRIOS
            for p in (site.work / f"{name}-node-state" / "spool").glob("**/new/*.json")]


def quiet(site: PeerSite, routers: tuple[str, ...] = tuple(PRIOS), timeout: float = 60) -> None:
    """Nothing spooled on the nodes, and on every running router nothing waiting or open."""
    def done() -> bool:
        return not spooled(site) and all(settled(site.history(r)) for r in routers
                                          if site.routers[r].alive)

    wait_for(done, timeout, interval=0.3, what="every alert on both routers to be final")


def chats(site: PeerSite) -> list[Request]:
    assert site.chat is not None
    return site.chat.got("/hook")


def mails(site: PeerSite) -> list[Mail]:
    assert site.mail is not None
    return list(site.mail.mails)


def sent_messages(site: PeerSite, router: str) -> list[dict[str, Any]]:
    """The messages ``router`` journaled as sent (one per receiver and group)."""
    seen: dict[int, dict[str, Any]] = {}
    for item in alert_items(site.history(router)):
        msg = item.get("message")
        if msg and msg["status"] == "sent":
            seen[msg["id"]] = {**msg, "receiver": item["receiver"]}
    return list(seen.values())


def run_failovers(site: PeerSite, count: int, per_failover: int,
                  start: str = "lb2") -> tuple[list[Request], list[Mail]]:
    """``count`` failovers (lb1 -> lb2 -> lb1 ...), each settled before the next; after
    each, exactly ``per_failover`` more messages on each receiver. Returns the new ones."""
    chats0, mails0 = len(chats(site)), len(mails(site))
    to = start
    for i in range(1, count + 1):
        site.fail_over(to)
        site.wait_failover(to)
        quiet(site)
        got = (len(chats(site)) - chats0, len(mails(site)) - mails0)
        assert got == (i * per_failover, i * per_failover), \
            f"after failover {i} (to {to}): {got[0]} webhook messages and {got[1]} e-mails, " \
            f"expected {i * per_failover} of each: {[r.json['title'] for r in chats(site)]}"
        to = "lb1" if to == "lb2" else "lb2"
    return chats(site)[chats0:], mails(site)[mails0:]


def name_both_hosts(new_chats: list[Request], new_mails: list[Mail]) -> None:
    """Each failover message is titled with both hosts and lists both hosts' changes."""
    for title, body in ([(r.json["title"], r.json["message"]) for r in new_chats]
                        + [(m.subject, m.body) for m in new_mails]):
        assert title.startswith("[lb1, lb2] VI_1: "), title
        for host in PRIOS:
            assert any(f" {host} INSTANCE VI_1: " in line
                       for line in body.splitlines()), (host, body)
    assert all(m.rcpt_tos == ["oncall@example.com"] for m in new_mails)


def test_without_peers_each_router_pages_for_every_failover(site: PeerSite) -> None:
    """The harness, and why [peers] exists: two routers fed the same events, without
    [peers], each page every failover (two webhook messages and two e-mails each)."""
    try:
        site.create()
        site.configure(ALERTS + receivers(site) + FAILOVER_RULE, peers=False)
        site.start()
        quiet(site)
        # lb1's start-up BACKUP -> MASTER paged too, once per router
        assert len(chats(site)) == 2 and len(mails(site)) == 2
        name_both_hosts(*run_failovers(site, 2, per_failover=2))
        for name in PRIOS:
            by_receiver = sorted(m["receiver"] for m in sent_messages(site, name))
            assert by_receiver == ["chat"] * 3 + ["mail"] * 3, (name, by_receiver)
        # every router journaled both nodes' transitions: each heard every hook
        for name in PRIOS:
            hosts = {e["host"] for e in site.history(name) if e["class"] == "transition"}
            assert hosts == {"lb1", "lb2"}, (name, hosts)
    except BaseException:
        print(site.logs())
        raise


def test_ten_failovers_are_ten_emails_and_ten_webhook_messages(site: PeerSite) -> None:
    started = time.monotonic()
    try:
        site.create()
        site.configure(ALERTS + receivers(site) + FAILOVER_RULE)
        site.start()
        quiet(site)
        assert len(chats(site)) == 1 and len(mails(site)) == 1  # lb1's start-up
        name_both_hosts(*run_failovers(site, 10, per_failover=1))
        # Each page was sent by one router and skipped by the other, which journaled
        # that its peer had sent it.
        sent = {name: sent_messages(site, name) for name in PRIOS}
        assert sum(len(v) for v in sent.values()) == 22, sent
        print(f"10 failovers in {time.monotonic() - started:.1f}s; sent by "
              + ", ".join(f"{n}: {len(v)}" for n, v in sent.items()))
    except BaseException:
        print(site.logs())
        raise
