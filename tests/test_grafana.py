"""config/grafana-dashboard.json: every metric it queries is one a live router exposes.

A router with ``[metrics] listen`` sees a cluster (two hosts reporting VI_1), runs an
exec action, fails an alert, takes a heartbeat with a spool count; then every metric
name in every query of the dashboard (panels, variables, annotations) must be in its
``/metrics`` output with at least one sample.
"""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path
from typing import Any

from alert_servers import free_port
from conftest import KEnv, RouterProcess, wait_for

from knotify import zmtp

DASHBOARD = Path(__file__).resolve().parent.parent / "config" / "grafana-dashboard.json"
METRIC = re.compile(r"\b((?:knotify|process)_[a-z0-9_]+)\b")


def queries(node: Any) -> list[str]:
    """Every PromQL string in the dashboard (``expr``, and variable queries)."""
    found: list[str] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("expr", "query", "definition") and isinstance(value, str):
                found.append(value)
            else:
                found.extend(queries(value))
    elif isinstance(node, list):
        for item in node:
            found.extend(queries(item))
    return found


def test_every_dashboard_metric_is_exposed_by_a_live_router(
        kenv: KEnv, router: RouterProcess) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["panels"] and dashboard["title"] == "knotify"
    names = {m for q in queries(dashboard) for m in METRIC.findall(q)}
    assert len(names) >= 20, names

    port = free_port()
    kenv.write_config(f"""
[metrics]
listen = "127.0.0.1:{port}"

[cluster]
split_brain_grace = "0s"

[alerts]
group_wait = "0s"
retry_initial = "200ms"

[receivers.down]
urls = ["json://127.0.0.1:{free_port()}/nobody-listens"]

[[rule]]
id = "takeover"
kind = "INSTANCE"
state = "MASTER"
[[rule.action]]
type = "exec"
argv = ["/bin/true"]
[[rule.action]]
type = "alert"
receivers = ["down"]
""")
    router.start()
    for host, state in (("node1", "BACKUP"), ("node2", "BACKUP"), ("node1", "MASTER")):
        kenv.cli("send", "--host", host, "INSTANCE", "VI_1", state, "100")
    beat = json.dumps({"v": 1, "op": "heartbeat", "host": "node3", "interval_s": 5.0,
                       "spool": 2, "version": "test"}).encode()
    answer = json.loads(zmtp.request(f"ipc://{kenv.runtime}/knotify.sock", beat, 5))
    assert answer["ok"], answer

    def exposed() -> set[str] | None:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
            text = resp.read().decode()
        samples = {ln.split("{")[0].split()[0] for ln in text.splitlines()
                   if ln and not ln.startswith("#")}
        return samples if names <= samples else None

    try:
        wait_for(exposed, 30, interval=0.3, what="every dashboard metric in /metrics")
    except AssertionError:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
            text = resp.read().decode()
        samples = {ln.split("{")[0].split()[0] for ln in text.splitlines()
                   if ln and not ln.startswith("#")}
        raise AssertionError(f"not in /metrics: {sorted(names - samples)}") from None


def test_dashboard_is_importable_json() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        for target in panel.get("targets", []):
            assert target["expr"].count("(") == target["expr"].count(")"), target["expr"]
            assert '$job' in target["expr"], target["expr"]
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert variables == {"datasource", "job"}
