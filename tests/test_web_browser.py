"""The web pages in a real headless Chromium, after a real keepalived failover.

Two keepalived nodes in network namespaces (the ``cluster`` fixture) report VRRP
instance VI_1 to one router through the generic ``notify`` hook, whose wrappers
``knotify install-hooks`` wrote (so keepalived's script security accepts them). node1 (priority 100)
becomes MASTER; its keepalived is stopped and node2 takes over. The router runs an
exec action per state (MASTER ok, STOP failing) and alerts on every change to MASTER
(one receiver that works, one that answers HTTP 500, so node2's message waits behind
node1's) and on STOP (silenced). Then
``knotify web`` runs beside it, and Chromium (Selenium + Debian's chromedriver) checks:

- the timeline draws each host's bands in the journal's order and at the place its
  times give (read from the SVG's elements, not pixels), with the action and alert
  marks, and a mark's detail when the pointer is on it;
- an event sent while the page is open shows on it within 2 s, without a reload;
- the incident view tells the failover: its events, each action's outcome, each alert;
- ``knotify report --html`` draws the same timeline from a file, with no server;
- no receiver secret is in any page or in the report.

With ``KNOTIFY_SCREENSHOTS=DIR`` the test also saves what it looked at (scripts/screenshots
puts them in docs/screenshots).
"""

from __future__ import annotations

import json
import signal
import time
from typing import Any

import browser
import netns
import pytest
from alert_servers import PASSWORD, TOKEN, HttpSink
from conftest import KEnv, RouterProcess, need, wait_for
from webtools import WebProcess

pytestmark = [pytest.mark.keepalived, pytest.mark.slow, pytest.mark.timeout(300)]

#: An event must show on the open page without a reload (the figure printed is what
#: bench-like evidence says; the bound is only generous enough for a loaded machine).
LIVE_WITHIN_S = 20.0


def _click(driver: Any, selector: str) -> None:
    """Click what ``selector`` finds, again if a live update re-rendered it meanwhile
    (the open page redraws itself after every event: a found element can go stale)."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By

    def clicked() -> bool:
        try:
            driver.find_element(By.CSS_SELECTOR, selector).click()
        except StaleElementReferenceException:
            return False
        return True

    wait_for(clicked, 10, interval=0.1, what=f"a click on {selector}")


def _attrs(driver: Any, selector: str, attribute: str) -> list[str]:
    """One attribute of every element ``selector`` finds, read again from the start if
    the page was (re)drawn meanwhile (the page loading, or a live update)."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By

    got: list[list[str]] = []

    def read() -> bool:
        try:
            got.append([e.get_attribute(attribute) or "" for e in
                        driver.find_elements(By.CSS_SELECTOR, selector)])
        except StaleElementReferenceException:
            return False
        return True

    wait_for(read, 10, interval=0.1, what=f"a stable read of {selector}")
    return got[-1]


def node_files(kenv: KEnv, node: netns.Node) -> None:
    """The node's config (its host name) and hook wrappers from ``knotify install-hooks``
    with that config built in: keepalived's hook strings need no ``-c FILE``."""
    cfg = node.workdir / f"{node.name}.toml"
    cfg.write_text(f"[paths]\nruntime_dir = {json.dumps(str(kenv.runtime))}\n"
                   f"state_dir = {json.dumps(str(kenv.state))}\n\n"
                   f"[hook]\nhost = {json.dumps(node.name)}\n")
    cfg.chmod(0o644)
    bindir = netns.secure_dir(node.workdir / f"{node.name}-sbin")
    kenv.cli("install-hooks", str(bindir), "-c", str(cfg))
    hook = bindir / "knotify-notify"
    node.keepalived_conf.write_text("\n".join([
        "global_defs {", f"    router_id {node.name}", "    script_user root",
        "    enable_script_security", "}", "", "vrrp_instance VI_1 {", "    state BACKUP",
        f"    interface {node.ifname}", "    virtual_router_id 61", f"    priority {node.prio}",
        "    advert_int 1", f"    unicast_src_ip {node.addr}", "    unicast_peer {",
        f"        {node.peer}", "    }", "    virtual_ipaddress {", "        10.216.0.100/24",
        "    }", f'    notify "{hook}"', "}", ""]))


def router_config(chat: HttpSink) -> str:
    return f"""
[alerts]
group_wait = "300ms"
retry_initial = "300ms"
retry_max = "1s"
flap_threshold = 0

[receivers.chat]
urls = ["{chat.mattermost_url(TOKEN)}"]

[receivers.pager]
urls = ["{chat.url('/fail', auth='pager:' + PASSWORD)}"]

[[rule]]
id = "takeover"
kind = "INSTANCE"
state = "MASTER"
[[rule.action]]
type = "exec"
argv = ["/bin/true"]
[[rule.action]]
type = "alert"
receivers = ["chat", "pager"]

[[rule]]
id = "stopped"
kind = "INSTANCE"
state = "STOP"
[[rule.action]]
type = "exec"
argv = ["/bin/false"]
[[rule.action]]
type = "alert"
receivers = ["chat"]
"""


def states(kenv: KEnv) -> dict[str, str]:
    return {s["host"]: s["state"] for s in kenv.status() if s["name"] == "VI_1"}


def wait_states(kenv: KEnv, cl: netns.Cluster, want: dict[str, str], what: str) -> None:
    def reached() -> bool:
        cl.check_scripts()
        cl.check_running()
        now = states(kenv)
        return all(now.get(h) == s for h, s in want.items())
    wait_for(reached, 40, interval=0.2, what=what)


def transitions(kenv: KEnv) -> list[dict[str, Any]]:
    """VI_1's transitions, in the order the router journaled them."""
    return [e for e in reversed(kenv.history()) if e["name"] == "VI_1"
            and e["class"] == "transition"]


def outcomes_settled(kenv: KEnv) -> bool:
    """Every action over; chat reached, the pager failed once, STOP's alert silenced."""
    events = kenv.history()
    runs = [a for e in events for a in e["actions"]]
    if not runs or any(a["status"] in ("pending", "running") for a in runs):
        return False
    items = [(e, i) for e in events for i in e["alerts"]]
    chat_sent = any(i["receiver"] == "chat" and i["message"] and i["message"]["status"] == "sent"
                    for _, i in items)
    pager_failed = any(i["receiver"] == "pager" and i["message"] and any(
        a["status"] == "failed" for a in i["message"]["attempts"]) for _, i in items)
    stop_silenced = any(e["state"] == "STOP" and i["status"] == "silenced" for e, i in items)
    return chat_sent and pager_failed and stop_silenced


def svg_bands(driver: Any, host: str) -> list[dict[str, Any]]:
    """The bands of one host's lane (times in ns are strings in JS: too big for a Number)."""
    bands: list[dict[str, Any]] = driver.execute_script("""
        const svg = document.querySelector('svg.timeline');
        return Array.from(svg.querySelectorAll(
            'g.lane[data-host="' + arguments[0] + '"] rect.band')).map(r => ({
            state: r.dataset.state, id: r.dataset.eventId, start: r.dataset.startNs,
            x: parseFloat(r.getAttribute('x')), w: parseFloat(r.getAttribute('width'))}));
    """, host)
    for band in bands:
        band["start"] = int(band["start"])
    return bands


def svg_frame(driver: Any) -> dict[str, float]:
    frame: dict[str, Any] = driver.execute_script("""
        const s = document.querySelector('svg.timeline');
        return {since: s.dataset.sinceNs, until: s.dataset.untilNs,
                x0: parseFloat(s.dataset.x0), x1: parseFloat(s.dataset.x1)};
    """)
    return {**frame, "since": int(frame["since"]), "until": int(frame["until"])}


def svg_marks(driver: Any) -> list[dict[str, str]]:
    marks: list[dict[str, str]] = driver.execute_script("""
        const svg = document.querySelector('svg.timeline');
        return Array.from(svg.querySelectorAll('g.mark')).map(g => ({
            what: g.dataset.what, outcome: g.dataset.outcome, id: g.dataset.eventId,
            host: g.closest('g.lane').dataset.host, tip: g.dataset.tip}));
    """)
    return marks


def check_timeline(driver: Any, trs: list[dict[str, Any]]) -> None:
    """Each host's bands: the journal's transitions, in order, where their times put them."""
    frame = svg_frame(driver)
    scale = (frame["x1"] - frame["x0"]) / (frame["until"] - frame["since"])
    for host in ("node1", "node2"):
        mine = [t for t in trs if t["host"] == host]
        bands = [b for b in svg_bands(driver, host) if b["id"]]
        assert [(b["id"], b["state"]) for b in bands] == [(t["id"], t["state"]) for t in mine], \
            (host, bands, mine)
        xs = [b["x"] for b in bands]
        assert xs == sorted(xs), f"{host}'s bands are not left to right: {bands}"
        for band, tr in zip(bands, mine, strict=True):
            assert band["start"] >= tr["ts_ns"]  # (a late report never draws backwards)
            want = frame["x0"] + (band["start"] - frame["since"]) * scale
            assert abs(band["x"] - want) < 1.0, (band, want)
            assert abs(band["start"] - tr["ts_ns"]) < 5e9, (band, tr)
    one = {b["state"]: b for b in svg_bands(driver, "node1") if b["id"]}
    two = {b["state"]: b for b in svg_bands(driver, "node2") if b["id"]}
    assert list(one) == ["BACKUP", "MASTER", "STOP"] and list(two) == ["BACKUP", "MASTER"]
    # node1 was MASTER first; node2 took over after node1 became MASTER, and its MASTER
    # band is the last one, open to the end of the window.
    assert two["MASTER"]["x"] > one["MASTER"]["x"]
    assert one["MASTER"]["x"] + one["MASTER"]["w"] <= one["STOP"]["x"] + 0.5


def check_marks(driver: Any, trs: list[dict[str, Any]]) -> None:
    marks = svg_marks(driver)
    by_id = {t["id"]: t for t in trs}
    found = {(m["what"], m["outcome"], by_id[m["id"]]["host"], by_id[m["id"]]["state"])
             for m in marks if m["id"] in by_id}
    for want in [("action", "ok", "node1", "MASTER"), ("action", "ok", "node2", "MASTER"),
                 ("action", "failed", "node1", "STOP"), ("alert", "sent", "node1", "MASTER"),
                 ("alert", "sent", "node2", "MASTER"), ("alert", "failed", "node1", "MASTER"),
                 ("alert", "silenced", "node1", "STOP")]:
        assert want in found, (want, sorted(found))
    for m in marks:
        assert m["host"] == by_id.get(m["id"], {"host": m["host"]})["host"], m


def hover_detail(driver: Any, selector: str = "g.mark.alert.failed") -> str:
    """Point at a mark (the failed alert); the detail box shows what it is about."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    mark = driver.find_element(By.CSS_SELECTOR, f"svg.timeline {selector}")
    ActionChains(driver).move_to_element(mark).perform()
    tip = driver.find_element(By.ID, "tip")
    wait_for(lambda: tip.is_displayed(), 5, what="the detail box")
    return str(tip.text)


def test_failover_in_the_browser(kenv: KEnv, router: RouterProcess,
                                 cluster: netns.Cluster) -> None:
    ok, reason = browser.usable()
    need(ok, reason)
    chat = HttpSink(behaviour={"/fail": "fail"}).start()
    web: WebProcess | None = None
    try:
        cluster.create({"node1": 100, "node2": 50}, subnet="10.216.0")
        node1, node2 = cluster.nodes["node1"], cluster.nodes["node2"]
        for node in (node1, node2):
            node_files(kenv, node)
        kenv.write_config(router_config(chat))
        router.start()
        kenv.cli("silence", "add", "state=STOP", "--for", "1h", "--reason", "planned stop")
        cluster.start(node1)
        wait_states(kenv, cluster, {"node1": "BACKUP"}, "node1 BACKUP")
        wait_states(kenv, cluster, {"node1": "MASTER"}, "node1 MASTER alone")
        cluster.start(node2)
        wait_states(kenv, cluster, {"node1": "MASTER", "node2": "BACKUP"}, "node2 BACKUP")
        assert cluster.stop(node1, signal.SIGTERM, timeout=20) == 0
        wait_states(kenv, cluster, {"node1": "STOP", "node2": "MASTER"}, "node2 to take over")
        wait_for(lambda: outcomes_settled(kenv), 60, interval=0.3,
                 what="actions done, chat sent, pager failed, STOP's alert silenced")
        cluster.check_scripts()
        trs = transitions(kenv)
        assert [(t["host"], t["state"]) for t in trs if t["host"] == "node1"] == [
            ("node1", "BACKUP"), ("node1", "MASTER"), ("node1", "STOP")], trs

        web = WebProcess(kenv).wait_ready()
        pages: dict[str, str] = {}
        with browser.chrome() as driver:
            from selenium.webdriver.common.by import By

            driver.get(f"{web.url}/timeline?cluster=VI_1&window=3m")
            check_timeline(driver, trs)
            check_marks(driver, trs)
            detail = hover_detail(driver)
            assert "alert to pager" in detail and "failed" in detail, detail
            assert "500" in detail or "HTTP" in detail.upper(), detail
            pages["timeline"] = driver.page_source
            # The same, zoomed to the failover (a custom window), for the docs' picture.
            first, last = trs[0]["ts_ns"] // 10**9 - 2, trs[-1]["ts_ns"] // 10**9 + 6
            driver.get(f"{web.url}/timeline?cluster=VI_1&since={first}&until={last}")
            check_timeline(driver, trs)
            assert "takeover#0 exec: ok" in hover_detail(
                driver, 'g.lane[data-host="node2"] g.mark.action.ok')
            browser.shoot(driver, "timeline", full_height=False)
            driver.get(f"{web.url}/timeline?cluster=VI_1&window=3m")

            # Live: an event journaled while the page is open shows without a reload.
            wait_for(lambda: driver.find_element(By.ID, "live-state").text == "live", 10,
                     what="the page's live stream")
            driver.execute_script("window.__kept = 'same page';")
            sent = kenv.cli("send", "INSTANCE", "VI_1", "BACKUP", "10", "--host", "node3")
            new_id = sent.stdout.split()[1]
            acked = time.monotonic()
            wait_for(lambda: driver.find_elements(
                By.CSS_SELECTOR, f'g.lane[data-host="node3"] rect.band[data-event-id="{new_id}"]'),
                LIVE_WITHIN_S, interval=0.05, what="the new event on the open page")
            took = time.monotonic() - acked
            assert driver.execute_script("return window.__kept") == "same page"
            print(f"new event on the open page {took * 1000:.0f} ms after its ack")

            # The incident view: node2's take-over as a story.
            takeover = next(t for t in trs if t["host"] == "node2" and t["state"] == "MASTER")
            _click(driver, f'a[href="/incident/{takeover["id"]}"]')
            wait_for(lambda: "/incident/" in driver.current_url, 10, what="the incident page")
            shown = _attrs(driver, "tr.event-row", "data-event-id")
            stop1 = next(t for t in trs if t["host"] == "node1" and t["state"] == "STOP")
            assert takeover["id"] in shown and stop1["id"] in shown, shown
            actions = set(_attrs(driver, "tr.sub.action", "data-status"))
            alerts = set(_attrs(driver, "tr.sub.alert", "data-outcome"))
            assert {"ok", "failed"} <= actions, actions
            assert {"sent", "failed", "silenced"} <= alerts, alerts
            text = "\n".join(_attrs(driver, "main", "innerText"))
            assert "node1 VI_1 MASTER -> STOP" in text and "node2 VI_1 BACKUP -> MASTER" in text
            browser.shoot(driver, "incident")
            pages["incident"] = driver.page_source

            driver.get(f"{web.url}/")
            cells = driver.find_elements(By.CSS_SELECTOR, 'tr[data-cluster="VI_1"] [data-host]')
            assert {(c.get_attribute("data-host"), c.get_attribute("data-state"))
                    for c in cells} >= {("node2", "MASTER"), ("node1", "STOP")}
            browser.shoot(driver, "overview")
            pages["overview"] = driver.page_source

            driver.get(f"{web.url}/history?name=VI_*&transitions=1")
            rows = driver.find_elements(By.CSS_SELECTOR, "tr.event-row")
            assert rows and all(r.get_attribute("data-class") == "transition" for r in rows)
            browser.shoot(driver, "history")
            pages["history"] = driver.page_source

            # The report: the same timeline, from a file, with the server gone.
            web.stop()
            report = kenv.root / "report.html"
            kenv.cli("report", "--html", str(report), "--since", "3m", "--cluster", "VI_1")
            driver.get(report.as_uri())
            check_timeline(driver, trs)
            check_marks(driver, trs)
            sections = driver.find_elements(By.CSS_SELECTOR, "section.incident")
            assert any(s.get_attribute("data-event-id") == takeover["id"] or takeover["id"] in
                       (s.get_attribute("innerHTML") or "") for s in sections)
            browser.shoot(driver, "report")
            pages["report"] = report.read_text()
        for name, html in pages.items():
            for secret in (PASSWORD, TOKEN):
                assert secret not in html, f"{name} shows a receiver secret"
    except BaseException:
        print(cluster.logs())
        print("===== router log (tail)\n" + router.log_text()[-20000:])
        if web is not None:
            print("===== web log\n" + web.log_text()[-5000:])
        raise
    finally:
        if web is not None:
            web.stop()
        chat.stop()
