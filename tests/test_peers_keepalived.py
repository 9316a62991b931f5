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

import json
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


def quiet(site: PeerSite, routers: tuple[str, ...] = tuple(PRIOS), timeout: float = 60,
          spool: bool = True) -> None:
    """Nothing spooled on the nodes (unless ``spool`` is off: a router is dead or cut
    off), and on every running router nothing waiting or open."""
    def done() -> bool:
        return (not spool or not spooled(site)) and all(settled(site.history(r)) for r in routers
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


def waiting_items(site: PeerSite, router: str, host: str, state: str) -> list[dict[str, Any]]:
    return [i for i in alert_items(site.history(router)) if i["status"] == "waiting"
            and (i["event"]["host"], i["event"]["state"]) == (host, state)]


def test_master_nodes_router_killed_while_a_group_waits_the_other_sends_it_once(
    site: PeerSite
) -> None:
    """lb2 takes over, so lb2's router goes first; it is killed while the failover's
    group waits: lb1's router sends the page, once. lb2's router, started again with
    the group still in its outbox, does not send it again."""
    try:
        site.create()
        # a group_wait long enough to kill the router inside it on a loaded machine
        site.configure(ALERTS.replace(f'"{GROUP_WAIT}s"', '"6s"') + receivers(site)
                       + FAILOVER_RULE)
        site.start()
        quiet(site)
        chats0, mails0 = len(chats(site)), len(mails(site))
        site.fail_over("lb2")
        wait_for(lambda: waiting_items(site, "lb2", "lb2", "MASTER"), 30, interval=0.1,
                 what="lb2's router to hold the failover's group")
        site.routers["lb2"].kill()
        site.wait_failover("lb2", routers=("lb1",))
        wait_for(lambda: len(chats(site)) > chats0 and len(mails(site)) > mails0, 60,
                 what="lb1's router to send the page")
        quiet(site, routers=("lb1",), spool=False)
        new = chats(site)[chats0:]
        assert len(new) == 1 and len(mails(site)) - mails0 == 1, [r.json for r in new]
        name_both_hosts(new, mails(site)[mails0:])
        assert {m["receiver"] for m in sent_messages(site, "lb1")} >= {"chat", "mail"}
        # lb2's router comes back with the group in its outbox: it learns that lb1 sent
        # it and does not send it again
        site.routers["lb2"].start()
        quiet(site)
        assert len(chats(site)) - chats0 == 1 and len(mails(site)) - mails0 == 1, \
            [r.json["title"] for r in chats(site)[chats0:]]
        lb2_items = [i for i in alert_items(site.history("lb2"))
                     if i["event"]["host"] == "lb2" and i["event"]["state"] == "MASTER"]
        assert lb2_items and all(i["status"] != "waiting" for i in lb2_items), lb2_items
        # and the pair pages once again on the next failover (a positive marker)
        name_both_hosts(*run_failovers(site, 1, per_failover=1, start="lb1"))
    except BaseException:
        print(site.logs())
        raise


def silences(site: PeerSite, router: str) -> list[dict[str, Any]]:
    return list(json.loads(site.kenvs[router].cli("silence", "list", "--all", "--json").stdout))


def peer_view(site: PeerSite, router: str) -> dict[str, Any]:
    """``knotify status --json``'s view of the other router, from ``router``."""
    info = json.loads(site.kenvs[router].cli("status", "--json").stdout)["router"]["peers"]
    [other] = info["routers"]
    return dict(other)


def test_cut_between_the_routers_pages_at_most_twice_and_nothing_again_after(
    site: PeerSite
) -> None:
    """nftables on lb1 drops the router port between the nodes (VRRP goes on): each
    router hears only its own node. A failover gives one or two messages; when the link
    returns, the late events reach both routers and nothing is sent again. A silence
    added on lb1's router during a cut holds on both routers after it, and expiring it
    on lb2's router ends it on both."""
    try:
        site.create()
        site.configure(ALERTS + receivers(site) + FAILOVER_RULE)
        site.start()
        quiet(site)
        chats0, mails0 = len(chats(site)), len(mails(site))

        site.cut_routers()
        # each router's status says the other does not answer (so it does not wait for it)
        wait_for(lambda: all(peer_view(site, n)["up"] is False for n in PRIOS), 60,
                 interval=0.5, what="both routers to see the other down")
        assert "DOWN" in site.kenvs["lb1"].cli("status").stdout
        site.fail_over("lb2")
        # each router hears its own node only; the other node spools for it
        site.wait_vrrp({"lb1": "BACKUP"}, "lb1's router to hear lb1 leave", ("lb1",))
        site.wait_vrrp({"lb2": "MASTER"}, "lb2's router to hear lb2 take over", ("lb2",))
        quiet(site, spool=False)
        during = (len(chats(site)) - chats0, len(mails(site)) - mails0)
        print(f"during the cut: {during[0]} webhook messages, {during[1]} e-mails")
        assert 1 <= during[0] <= 2 and 1 <= during[1] <= 2, during

        site.mend_routers()
        site.wait_failover("lb2")  # the late events reached both routers
        quiet(site)
        for name in PRIOS:  # back up, and nothing of either log left to send
            def in_sync(name: str = name) -> bool:
                view = peer_view(site, name)
                return view["up"] is True and not any(view["lag"].values())

            wait_for(in_sync, 60, interval=0.5,
                     what=f"{name}'s router to be in sync with its peer")
        after = (len(chats(site)) - chats0, len(mails(site)) - mails0)
        assert after == during, \
            f"sent again after the link returned: {[r.json['title'] for r in chats(site)]}"

        # a silence added on lb1's router while the routers cannot talk
        site.cut_routers()
        added = json.loads(site.kenvs["lb1"].cli(
            "silence", "add", "name=VI_1", "--for", "1h", "--reason", "during the cut",
            "--json").stdout)["silence"]
        assert [s["id"] for s in silences(site, "lb2")
                if s["reason"] == "during the cut"] == []
        site.mend_routers()
        wait_for(lambda: [s for s in silences(site, "lb2") if s["reason"] == "during the cut"],
                 60, interval=0.5, what="the silence to reach lb2's router")
        [copy] = [s for s in silences(site, "lb2") if s["reason"] == "during the cut"]
        # the same silence (replicated with its uid; each journal numbers its own rows)
        assert (copy["matchers"], copy["ends_ns"]) == (added["matchers"], added["ends_ns"]), \
            (copy, added)
        # it holds on both: lb1 takes back, neither router sends, both journal why
        before, since_ns = (len(chats(site)), len(mails(site))), time.time_ns()
        site.fail_over("lb1")
        site.wait_failover("lb1")
        quiet(site)
        assert (len(chats(site)), len(mails(site))) == before
        for name in PRIOS:
            muted = [i for i in alert_items(site.history(name))
                     if int(i["created_ns"]) > since_ns]
            # lb1's BACKUP -> MASTER and lb2's MASTER -> BACKUP, for chat and mail
            assert len(muted) == 4 and all(i["status"] == "silenced" for i in muted), \
                (name, muted)

        # expired on lb2's router: ended on lb1's too, and the next failover pages once
        site.kenvs["lb2"].cli("silence", "expire", str(copy["id"]))
        wait_for(lambda: all(s["status"] != "active" for s in silences(site, "lb1")
                             if s["id"] == added["id"]), 60, interval=0.5,
                 what="the expiry to reach lb1's router")
        name_both_hosts(*run_failovers(site, 1, per_failover=1, start="lb2"))
    except BaseException:
        print(site.logs())
        raise


INHIBIT = """
[cluster]
silent_after = "3s"
split_brain_grace = "2s"
no_master_grace = "30s"

[[alerts.inhibit]]
source_matchers = ["kind=PEER", "state=PEER_SILENT"]
target_matchers = ["kind=INSTANCE,GROUP"]
equal = ["host"]

[[rule]]
id = "fault"
kind = "INSTANCE"
state = "FAULT"
[[rule.action]]
type = "alert"
receivers = ["chat", "mail"]
repeat_interval = "2s"

[[rule]]
id = "cluster-trouble"
kind = ["CLUSTER", "PEER"]
state = ["SPLIT_BRAIN", "NO_MASTER", "PEER_SILENT"]
[[rule.action]]
type = "alert"
receivers = ["chat", "mail"]
"""


def titled(site: PeerSite, word: str) -> list[str]:
    return [r.json["title"] for r in chats(site) if word in r.json["title"]]


def test_a_silent_hosts_peer_silent_pages_once_and_mutes_its_instance_alerts(
    site: PeerSite
) -> None:
    """lb2 is in FAULT (reminders every 2 s), then its agent stops: both routers raise
    PEER_SILENT lb2, which pages once for the pair and inhibits lb2's reminders on both
    routers (journaled inhibited, naming the PEER_SILENT event). Its agent starts again:
    PEER_BACK pages once, and the reminders flow again."""
    try:
        site.create()
        site.configure(ALERTS + receivers(site) + INHIBIT)
        site.start()
        quiet(site)
        site.set_check("lb2", "fault", False)
        site.wait_vrrp({"lb2": "FAULT"}, "lb2 in FAULT")
        wait_for(lambda: titled(site, "FAULT"), 30, what="the FAULT page")

        site.stop_agent("lb2")
        raised: dict[str, dict[str, Any]] = {}

        def silent_on_both() -> bool:
            for name in PRIOS:
                found = [e for e in site.history(name, kind="PEER")
                         if e["reported"] == "PEER_SILENT" and e["name"] == "lb2"]
                if found:
                    raised[name] = found[0]
            return len(raised) == 2

        wait_for(silent_on_both, 60, interval=0.5, what="both routers to call lb2 silent")

        def inhibited(name: str) -> list[dict[str, Any]]:
            return [i for i in alert_items(site.history(name)) if i["status"] == "inhibited"]

        wait_for(lambda: all(len(inhibited(n)) >= 2 for n in PRIOS), 60, interval=0.5,
                 what="lb2's reminders to be inhibited on both routers")
        for name in PRIOS:
            for item in inhibited(name):
                assert item["event"]["host"] == "lb2" and item["alert"] == "repeat", item
                assert "inhibited by PEER lb2 PEER_SILENT" in str(item["detail"]), item
                assert f"event {raised[name]['id']}" in str(item["detail"]), item
            # no reminder of lb2 went out on this router while it was silent
            silent_since = int(raised[name]["recv_ns"])
            late = [i for i in alert_items(site.history(name)) if i["alert"] == "repeat"
                    and int(i["created_ns"]) > silent_since and i["status"] != "inhibited"]
            assert late == [], (name, late)

        site.start_agent("lb2")
        wait_for(lambda: titled(site, "PEER_BACK"), 60, what="the PEER_BACK page")
        quiet(site)
        silent_pages = [t for t in titled(site, "PEER_SILENT") if "PEER_BACK" not in t]
        assert len(silent_pages) == 1, titled(site, "PEER")
        assert len(titled(site, "PEER_BACK")) == 1, titled(site, "PEER")
        assert len([m for m in mails(site) if "PEER_SILENT" in m.subject
                    and "PEER_BACK" not in m.subject]) == 1
        assert "lb2" in silent_pages[0]
    except BaseException:
        print(site.logs())
        raise


def test_a_split_brain_pages_once_for_the_pair_naming_both_hosts(site: PeerSite) -> None:
    """VRRP adverts dropped between the nodes (the routers still talk): both MASTER.
    Both routers raise SPLIT_BRAIN; the pair pages once naming both hosts, and once
    when it is resolved."""
    try:
        site.create()
        site.configure(ALERTS + receivers(site) + INHIBIT)
        site.start()
        quiet(site)
        site.cut_vrrp()
        site.wait_vrrp({"lb1": "MASTER", "lb2": "MASTER"}, "both nodes MASTER")
        wait_for(lambda: titled(site, "SPLIT_BRAIN"), 60, what="the SPLIT_BRAIN page")
        site.mend_vrrp()
        wait_for(lambda: titled(site, "SPLIT_BRAIN_RESOLVED"), 60,
                 what="the SPLIT_BRAIN_RESOLVED page")
        quiet(site)
        raised = [r for r in chats(site) if "SPLIT_BRAIN" in r.json["title"]
                  and "RESOLVED" not in r.json["title"]]
        assert len(raised) == 1, titled(site, "SPLIT")
        assert len(titled(site, "SPLIT_BRAIN_RESOLVED")) == 1, titled(site, "SPLIT")
        text = raised[0].json["message"]
        assert "lb1" in text and "lb2" in text, text
        for name in PRIOS:
            events = [e for e in site.history(name, kind="CLUSTER")
                      if e["reported"] == "SPLIT_BRAIN"]
            assert len(events) == 1, (name, events)
    except BaseException:
        print(site.logs())
        raise
