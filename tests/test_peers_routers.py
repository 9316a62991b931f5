"""Router peering with two real router processes and a real webhook receiver (issue 11).

Two routers fed the same events page once; the router beside the VRRP MASTER sends
and the other journals ``sent_by_peer``; with the first one killed while its group
waits the other sends, once; with the link between them cut both send (duplicates,
never a miss), and after it is mended nothing is sent again and a silence added
during the cut holds on both. Outcomes are read from each router's journal.
"""

from __future__ import annotations

import json
from typing import Any

from alert_servers import FAST_ALERTS, HttpSink
from conftest import wait_for
from peer_routers import Pair, pair

PAGE_ON_MASTER = """
[receivers.chat]
urls = ["{url}"]

[[rule]]
id = "page"
kind = "INSTANCE"
state = "MASTER"
[[rule.action]]
type = "alert"
receivers = ["chat"]
"""


def configure(p: Pair, http: HttpSink, alerts: str = FAST_ALERTS, timeout: str = "3s") -> None:
    p.configure(alerts + PAGE_ON_MASTER.format(url=http.url()), peer_timeout=timeout)


def settled(p: Pair, name: str) -> list[dict[str, Any]]:
    """Router ``name``'s messages once none is open any more (else [])."""
    msgs = p.messages(name)
    return msgs if msgs and all(m["status"] not in ("pending", "sending") for m in msgs) \
        else []


def both_up(p: Pair) -> bool:
    return all(r["up"] for name in ("lb1", "lb2") for r in p.peers(name)["routers"])


def test_two_routers_fed_the_same_failover_page_once(http: HttpSink) -> None:
    with pair() as p:
        configure(p, http)
        p.start()
        wait_for(lambda: both_up(p), 20, what="the routers to reach each other")
        p.send(("lb1", "INSTANCE", "VI_1", "BACKUP", 100),
               ("lb2", "INSTANCE", "VI_1", "MASTER", 150))
        # lb2 is beside the MASTER: position 0, it sends; lb1 waits 3s, finds lb2's
        # entry in its log and skips.
        [sent] = wait_for(lambda: settled(p, "lb2"), 30, what="lb2's message")
        [skipped] = wait_for(lambda: settled(p, "lb1"), 30, what="lb1's message")
        assert sent["status"] == "sent"
        assert skipped["status"] == "sent_by_peer" and "lb2" in skipped["detail"]
        assert len(http.got()) == 1
        info = p.peers("lb1")
        assert info["deduped"] == {"chat": 1}
        assert info["routers"][0]["merged"]["nflog"] >= 1
        assert info["positions"] == {"VI_1": 1}
        text = p.envs["lb1"].cli("status").stdout
        assert "this router: lb1 (beside lb1)" in text and "position per cluster: VI_1 1" \
            in text and "1 message(s) left to a peer" in text
        lines = text.splitlines()
        header = next(i for i, line in enumerate(lines) if line.startswith("PEER ROUTER"))
        assert lines[header + 1].split()[:3] == ["lb2", "lb2", "up"]
        # A peered router stops cleanly (its peer links are background tasks too).
        assert p.routers["lb1"].stop() == 0


def test_position_zero_killed_while_its_group_waits_the_other_sends_once(
        http: HttpSink) -> None:
    slow = FAST_ALERTS.replace('group_wait = "300ms"', 'group_wait = "3s"')
    with pair() as p:
        configure(p, http, alerts=slow)
        p.start()
        wait_for(lambda: both_up(p), 20, what="the routers to reach each other")
        p.send(("lb2", "INSTANCE", "VI_1", "BACKUP", 100),
               ("lb1", "INSTANCE", "VI_1", "MASTER", 150))
        # lb1 (beside the MASTER) would send after group_wait: it dies first.
        p.routers["lb1"].kill()
        [sent] = wait_for(lambda: settled(p, "lb2"), 40, what="lb2's message")
        assert sent["status"] == "sent"
        assert len(http.got()) == 1
        lines = [r for r in p.routers["lb2"].records() if r.get("event") == "peer.down"]
        assert lines and lines[0]["peer"] == "lb1"


def test_link_cut_both_send_then_nothing_again_and_a_silence_holds_on_both(
        http: HttpSink) -> None:
    with pair() as p:
        configure(p, http)
        p.start()
        wait_for(lambda: both_up(p), 20, what="the routers to reach each other")
        for relay in p.relays.values():
            relay.cut()
        wait_for(lambda: not any(r["up"] for n in ("lb1", "lb2")
                                 for r in p.peers(n)["routers"]), 20,
                 what="both routers to see the link down")
        p.send(("lb1", "INSTANCE", "VI_1", "BACKUP", 100),
               ("lb2", "INSTANCE", "VI_1", "MASTER", 150))
        wait_for(lambda: settled(p, "lb1") and settled(p, "lb2"), 30, what="both messages")
        assert [m["status"] for m in p.messages("lb1") + p.messages("lb2")] == ["sent", "sent"]
        assert len(http.got()) == 2  # duplicates, never a miss
        # A silence added on lb1 while cut off.
        p.envs["lb1"].cli("silence", "add", "name=VI_9", "--for", "1h",
                          "--reason", "maintenance during the cut")
        for relay in p.relays.values():
            relay.mend()
        wait_for(lambda: both_up(p), 20, what="the link to come back")

        def converged() -> bool:
            a, b = p.peers("lb1"), p.peers("lb2")
            return a["nflog_entries"] == b["nflog_entries"] == 2 and \
                "maintenance during the cut" in p.envs["lb2"].cli("silence", "list").stdout
        wait_for(converged, 20, what="the logs and silences to converge")
        # The marker: VI_9 fails over on both; both journal its alert silenced.
        p.send(("lb1", "INSTANCE", "VI_9", "BACKUP", 100),
               ("lb2", "INSTANCE", "VI_9", "MASTER", 150))
        for name in ("lb1", "lb2"):
            def silenced(name: str = name) -> bool:
                return any(item["status"] == "silenced" for ev in p.envs[name].history()
                           if ev["name"] == "VI_9" for item in ev.get("alerts", []))
            wait_for(silenced, 20, what=f"the VI_9 alert silenced on {name}")
        assert len(http.got()) == 2  # nothing sent again after the link came back
        assert len(p.messages("lb1")) == len(p.messages("lb2")) == 1
        # Expired on lb2 (its own number for the silence): ended on lb1 too.
        [on_lb2] = json.loads(p.envs["lb2"].cli("silence", "list", "--json").stdout)
        p.envs["lb2"].cli("silence", "expire", str(on_lb2["id"]))
        wait_for(lambda: json.loads(p.envs["lb1"].cli("silence", "list", "--json").stdout)
                 == [], 20, what="the expiry to reach lb1")


CLUSTER_PAGE = """
[cluster]
split_brain_grace = "1s"

[receivers.chat]
urls = ["{url}"]

[[rule]]
id = "page-cluster"
kind = "CLUSTER"
[[rule.action]]
type = "alert"
receivers = ["chat"]
"""


def test_both_routers_see_a_split_brain_it_pages_once(http: HttpSink) -> None:
    with pair() as p:
        p.configure(FAST_ALERTS + CLUSTER_PAGE.format(url=http.url()))
        p.start()
        wait_for(lambda: both_up(p), 20, what="the routers to reach each other")
        p.send(("lb1", "INSTANCE", "VI_1", "MASTER", 100),
               ("lb2", "INSTANCE", "VI_1", "MASTER", 100))
        # Each router's cluster view makes its own SPLIT_BRAIN event (its own id, its own
        # name as host); the page is the same news: lb1 (first master in order) sends.
        [sent] = wait_for(lambda: settled(p, "lb1"), 30, what="lb1's page")
        [skipped] = wait_for(lambda: settled(p, "lb2"), 30, what="lb2's message")
        assert sent["status"] == "sent" and "SPLIT_BRAIN" in sent["title"]
        assert skipped["status"] == "sent_by_peer"
        split = {ev["host"]: ev["id"] for name in ("lb1", "lb2")
                 for ev in p.envs[name].history(kind="CLUSTER")}
        assert set(split) == {"lb1", "lb2"} and split["lb1"] != split["lb2"]
        assert len(http.got()) == 1


def test_peer_sync_refusals_over_the_wire_and_the_router_serves_on(http: HttpSink) -> None:
    from knotify import transport, zmtp

    with pair() as p:
        configure(p, http)
        p.start("lb1")
        env = p.envs["lb1"]
        sock = f"ipc://{env.runtime}/knotify.sock"

        def ask(msg: dict[str, Any]) -> dict[str, Any]:
            return dict(json.loads(zmtp.request(sock, json.dumps({"v": 1, **msg}).encode(),
                                                10)))
        for msg, reason in (
            ({"op": "peer_sync", "from": "lb7", "want": {"nflog": 0, "silences": 0}},
             "not in this router's [peers.routers]"),
            ({"op": "peer_sync", "from": "lb2", "want": "all"}, "'want'"),
            ({"op": "peer_sync", "from": "lb2", "want": {"nflog": 0, "silences": 0},
              "silences": [{"uid": "u1", "matchers": ["host=$(reboot)", "name;rm"]}]},
             "FIELD=VALUE"),
        ):
            answer = ask(msg)
            assert answer["ok"] is False and reason in answer["error"], answer
        # A CURVE key that is not an admin may not use it.
        env.cli("keygen", "intruder", "--dir", str(p.keys))
        curve = transport.load_client(str(p.keys / "router.key"),
                                      str(p.keys / "intruder.key_secret"))

        def intruder() -> dict[str, Any]:
            payload = json.dumps({"v": 1, "op": "peer_sync", "from": "lb2",
                                  "want": {"nflog": 0, "silences": 0}}).encode()
            return dict(json.loads(transport.curve_request(
                f"tcp://127.0.0.1:{p.ports['lb1']}", payload, 5, curve)))
        answer = wait_for(lambda: (a := intruder()) and "not authorised" not in
                          a.get("error", "") and a, 20, what="the new key to be read")
        assert answer["ok"] is False and "may not use 'peer_sync'" in answer["error"]
        ok = ask({"op": "peer_sync", "from": "lb2", "want": {"nflog": 0, "silences": 0}})
        assert ok["ok"] and ok["name"] == "lb1"  # and it serves on


def test_a_router_without_peers_does_not_know_peer_sync(kenv: Any, router: Any) -> None:
    from knotify import zmtp

    router.start()
    answer = json.loads(zmtp.request(f"ipc://{kenv.runtime}/knotify.sock", json.dumps(
        {"v": 1, "op": "peer_sync", "from": "lb2"}).encode(), 10))
    assert answer["ok"] is False and "unknown op 'peer_sync'" in answer["error"]
