"""The Alertmanager receiver's pure parts: labels, annotations' times, the posted body, URLs."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from knotify.alerts.alertmanager import (
    check_url,
    default_severity,
    fingerprint,
    labels_for,
    parse,
    post_body,
    rfc3339,
    shown_url,
    url_secrets,
)
from knotify.errors import ConfigError
from knotify.schema import Table


def fields(**over: str) -> dict[str, str]:
    base = {"host": "lb1", "kind": "INSTANCE", "name": "VI_1", "vs": "", "state": "FAULT",
            "rule": "page", "id": "e1", "ts_ns": "1700000000123456789"}
    return {**base, **over}


def test_rfc3339_is_utc_with_a_zone_and_microseconds() -> None:
    text = rfc3339(1700000000123456789)
    assert text == "2023-11-14T22:13:20.123456Z"
    parsed = dt.datetime.fromisoformat(text)
    assert parsed.tzinfo is not None and parsed.utcoffset() == dt.timedelta(0)
    assert int(parsed.timestamp() * 1e6) == 1700000000123456
    assert rfc3339(0) == "1970-01-01T00:00:00.000000Z"


@pytest.mark.parametrize(("over", "want"), [
    ({}, {"alertname": "KnotifyVRRP", "kind": "INSTANCE", "host": "lb1", "instance": "VI_1",
          "state": "FAULT", "severity": "critical"}),
    ({"kind": "GROUP", "name": "G1", "state": "MASTER"},
     {"alertname": "KnotifyVRRP", "kind": "GROUP", "host": "lb1", "instance": "G1",
      "state": "MASTER", "severity": "info"}),
    ({"kind": "RS", "name": "10.0.0.5:80", "vs": "10.0.0.1:80", "state": "DOWN"},
     {"alertname": "KnotifyLVS", "kind": "RS", "host": "lb1", "virtual_server": "10.0.0.1:80",
      "real_server": "10.0.0.5:80", "state": "DOWN", "severity": "critical"}),
    ({"kind": "VS", "name": "10.0.0.1:80", "state": "UP"},
     {"alertname": "KnotifyLVS", "kind": "VS", "host": "lb1", "virtual_server": "10.0.0.1:80",
      "state": "UP", "severity": "info"}),
    # A CLUSTER condition's host is the router that noticed it: not part of the alert.
    ({"kind": "CLUSTER", "host": "router-a", "name": "VI_1", "state": "SPLIT_BRAIN"},
     {"alertname": "KnotifyCluster", "kind": "CLUSTER", "cluster": "VI_1",
      "state": "SPLIT_BRAIN", "severity": "critical"}),
    ({"kind": "PEER", "host": "lb2", "name": "lb2", "state": "PEER_SILENT"},
     {"alertname": "KnotifyPeer", "kind": "PEER", "host": "lb2", "state": "PEER_SILENT",
      "severity": "critical"}),
])
def test_labels_per_kind(over: dict[str, str], want: dict[str, str]) -> None:
    assert labels_for(fields(**over)) == want


def test_labels_take_the_rule_severity_static_labels_and_group_by_rule() -> None:
    got = labels_for(fields(), "page", {"env": "prod"}, group_by=("host", "rule"))
    assert got["severity"] == "page" and got["env"] == "prod" and got["rule"] == "page"
    assert "rule" not in labels_for(fields(), group_by=("host",))
    # Static labels never override knotify's own (the config refuses them as well).
    assert labels_for(fields(), None, {"state": "x"})["state"] == "FAULT"


def test_empty_values_are_left_out_and_hostile_values_kept_as_data() -> None:
    got = labels_for(fields(host=""))
    assert "host" not in got
    hostile = "VI_$(id);`x`|é✓" + "y" * 500
    assert labels_for(fields(name=hostile))["instance"] == hostile


def test_severity_from_the_state() -> None:
    assert [default_severity(s) for s in ("FAULT", "NO_MASTER", "STOP", "MASTER")] == \
        ["critical", "critical", "warning", "info"]


def test_fingerprint_does_not_depend_on_label_order() -> None:
    a = {"alertname": "X", "host": "h", "state": "FAULT"}
    b = dict(reversed(list(a.items())))
    assert fingerprint(a) == fingerprint(b) != fingerprint({**a, "state": "BACKUP"})


def test_post_body_firing_is_valid_for_a_while_resolved_carries_its_end() -> None:
    now = 1700000100 * 10**9
    alerts: list[dict[str, Any]] = [
        {"labels": {"alertname": "A"}, "annotations": {"summary": "s"},
         "starts_ns": 1700000000 * 10**9, "ends_ns": None},
        {"labels": {"alertname": "B"}, "annotations": {}, "starts_ns": 1700000000 * 10**9,
         "ends_ns": 1700000050 * 10**9},
    ]
    firing, resolved = post_body(alerts, now, 240.0, "http://knotify.example/")
    assert firing["startsAt"] == "2023-11-14T22:13:20.000000Z"
    assert firing["endsAt"] == rfc3339(now + 240 * 10**9)
    assert firing["annotations"] == {"summary": "s"}
    assert firing["generatorURL"] == "http://knotify.example/"
    assert resolved["endsAt"] == rfc3339(1700000050 * 10**9)
    assert "generatorURL" not in post_body(alerts, now, 240.0)[0]


def test_post_body_never_starts_after_it_ends() -> None:
    [entry] = post_body([{"labels": {}, "starts_ns": 20 * 10**9, "ends_ns": 10 * 10**9}],
                        0, 1.0)
    assert entry["startsAt"] == entry["endsAt"]


def test_urls_are_shown_without_secrets() -> None:
    raw = "https://knotify:Pw-s3cret@am1.example.net:9093/prefix?x=abcdefgh"
    assert shown_url(raw) == "https://knotify:****@am1.example.net:9093/prefix"
    assert {"Pw-s3cret", "abcdefgh"} <= url_secrets(raw)
    assert shown_url("http://[::1]:9093") == "http://[::1]:9093"


@pytest.mark.parametrize(("url", "says"), [
    ("ftp://am:9093", "http:// or https://"),
    ("http://:9093", "no host"),
    ("http://am:9093/?a=b", "no query"),
    ("http://am:9093/api/v2/alerts", "base URL"),
    ("http://am:99999", "not a URL"),
])
def test_check_url_says_what_is_wrong(url: str, says: str) -> None:
    problem = check_url(url)
    assert problem is not None and says in problem


def test_check_url_accepts_base_urls() -> None:
    assert check_url("http://127.0.0.1:9093") is None
    assert check_url("https://user:pw@am.example.net/alertmanager/") is None


def table(data: dict[str, Any]) -> Table:
    return Table(data, "/etc/knotify/knotify.toml", "receivers.am")


def test_parse_reads_every_key(tmp_path: Any) -> None:
    token = tmp_path / "token"
    token.write_text("tok-123456789\n")
    t = table({"urls": ["http://a:9093", "http://b:9093"], "bearer_token_file": str(token),
               "labels": {"env": "prod"}, "repost_interval": "30s",
               "generator_url": "https://knotify.example/"})
    am = parse(t, None)
    t.done()
    assert am.urls == ("http://a:9093", "http://b:9093")
    assert am.bearer_token == "tok-123456789" and "tok-123456789" in am.secrets()
    assert am.labels == (("env", "prod"),) and am.repost_interval == 30.0
    assert am.valid_for == 120.0
    assert "tok-123456789" not in repr(am)


def test_parse_errors_name_the_key() -> None:
    with pytest.raises(ConfigError) as err:
        parse(table({"urls": ["http://a:9093"], "labels": {"__x": "1"}}), None)
    assert err.value.key == "receivers.am.labels.__x"
    with pytest.raises(ConfigError) as err:
        parse(table({"urls": ["http://u:secretpw@a:9093/api/v2/alerts"]}), None)
    assert err.value.key == "receivers.am.urls[0]" and "secretpw" not in str(err.value)
    with pytest.raises(ConfigError) as err:
        parse(table({"urls": ["http://a:9093", "http://a:9093"]}), None)
    assert "twice" in str(err.value)
    with pytest.raises(ConfigError) as err:
        parse(table({"urls": ["http://a:9093"], "bearer_token": "a\nb"}), None)
    assert err.value.key == "receivers.am.bearer_token"
