"""What a page says and when it leaves, with a real router and real receivers (issue 11).

An alert never waits behind the other actions of its instance; a page names the hosts,
states and times involved; flap control counts only what happened while its rule
existed; what ends an incident reaches the rule that paged for it. Order is proven
from the journal, never from the wall clock.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from alert_servers import FAST_ALERTS, HttpSink, alert_items
from conftest import KEnv, RouterProcess, wait_for


@pytest.fixture
def http() -> Iterator[HttpSink]:
    sink = HttpSink().start()
    try:
        yield sink
    finally:
        sink.stop()


def write(kenv: KEnv, http: HttpSink, rules: str, alerts: str = FAST_ALERTS) -> None:
    kenv.write_config(alerts + f"""
[receivers.chat]
urls = ["{http.url()}"]
""" + rules)


def runs(history: list[dict[str, Any]], rule: str) -> list[dict[str, Any]]:
    return [a for ev in history for a in ev["actions"] if a["rule"] == rule]


def sent_attempts(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [a for item in alert_items(history) if item.get("message")
            for a in item["message"]["attempts"] if a["status"] == "ok"]


HANG_THEN_PAGE = """
[[rule]]
id = "restart"
state = "MASTER"
[[rule.action]]
type = "exec"
argv = ["sleep", "{sleep}"]
timeout = "{timeout}"

[[rule]]
id = "page"
state = "MASTER"
[[rule.action]]
type = "alert"
receivers = ["chat"]
"""


def test_alert_is_delivered_while_an_earlier_exec_of_its_instance_still_runs(
    kenv: KEnv, router: RouterProcess, http: HttpSink
) -> None:
    """The exec rule comes first and sleeps 30 s; the page is sent while it sleeps."""
    write(kenv, http, HANG_THEN_PAGE.format(sleep=30, timeout="60s"))
    router.start()
    kenv.cli("send", "--host", "lb1", "INSTANCE", "VI_1", "MASTER", "100")
    wait_for(lambda: http.got(), 20, what="the page")
    history = wait_for(lambda: (h := kenv.history()) and sent_attempts(h) and h, 20,
                       what="the delivery to be journaled")
    # Journal order: the delivery is recorded while the exec's run is still open.
    [restart] = runs(history, "restart")
    assert restart["status"] == "running" and restart["ended_ns"] is None, restart
    [page] = runs(history, "page")
    assert page["status"] == "ok"
    [attempt] = sent_attempts(history)
    # The router stops (and starts again to answer): the sleeping exec was cut
    # (interrupted) after the delivery had ended.
    router.stop()
    router.start()
    history = kenv.history()
    [restart] = runs(history, "restart")
    assert restart["status"] == "interrupted"
    assert attempt["ended_ns"] < restart["ended_ns"]
    [title] = [r.json["title"] for r in http.got()]
    assert "MASTER" in title


def test_actions_other_than_alerts_keep_their_order_within_the_instance(
    kenv: KEnv, router: RouterProcess, http: HttpSink
) -> None:
    """Two execs of one instance still run one after the other, in rule order."""
    write(kenv, http, """
[[rule]]
id = "first"
state = "MASTER"
[[rule.action]]
type = "exec"
argv = ["sleep", "1"]

[[rule]]
id = "second"
state = "MASTER"
[[rule.action]]
type = "exec"
argv = ["true"]
""")
    router.start()
    kenv.cli("send", "--host", "lb1", "INSTANCE", "VI_1", "MASTER", "100")
    history = wait_for(lambda: (h := kenv.history()) and all(
        a["status"] == "ok" for a in runs(h, "first") + runs(h, "second"))
        and runs(h, "second") and h, 30, what="both execs to end")
    [first] = runs(history, "first")
    [second] = runs(history, "second")
    assert first["ended_ns"] <= second["started_ns"]
