"""``[receivers]``, ``[alerts]`` and ``type = "alert"``: what loads, and errors that name the key.

URLs are checked by apprise itself (in a child process): what it refuses is a
config error, and no error or listing ever shows a secret.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from alert_servers import PASSWORD

from knotify import config as configmod
from knotify.actions.alert import AlertAction
from knotify.errors import ConfigError

RULE = """
[[rule]]
id = "r"
[[rule.action]]
type = "alert"
receivers = ["chat"]
"""


def load(tmp_path: Path, text: str) -> configmod.Config:
    path = tmp_path / "knotify.toml"
    path.write_text(text)
    return configmod.parse(text, str(path))


def error(tmp_path: Path, text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text)
    assert PASSWORD not in str(info.value)
    return info.value


def test_receivers_alert_settings_and_actions_load(tmp_path: Path) -> None:
    config = load(tmp_path, f"""
[alerts]
group_wait = "5s"
group_by = ["host", "state"]
flap_threshold = 4
flap_window = "90s"
flap_stable = "10m"
repeat_interval = "1h"
repeat_states = ["fault"]
retry_initial = "1s"
retry_max = "1m"
max_age = "2h"
timeout = "20s"

[receivers.chat]
urls = ["json://ops:{PASSWORD}@chat.example/hook", "mmost://mm.example/abcdefghijklmnopqrstuvwx"]
title = "{{hosts}}: {{headline}}"
format = "markdown"
fallback = "mail"
fallback_after = "2m"

[receivers.mail]
urls = ["mailto://user:{PASSWORD}@smtp.example?to=ops@example.com&from=k@example.com"]
timeout = "45s"
""" + RULE.replace('receivers = ["chat"]', 'receivers = ["chat", "mail"]\n'
                   'body = "{lines}"\nrepeat_interval = "30m"'))
    a = config.alerts
    assert (a.group_wait, a.group_by, a.retry_initial, a.retry_max, a.max_age, a.timeout) == \
        (5.0, ("host", "state"), 1.0, 60.0, 7200.0, 20.0)
    assert (a.flap.threshold, a.flap.window_s, a.flap.stable_s) == (4, 90.0, 600.0)
    assert a.repeat.interval_s == 3600.0 and a.repeat.states == {"FAULT"}
    chat, mail = config.receivers["chat"], config.receivers["mail"]
    assert chat.templates.title == "{hosts}: {headline}" and chat.format == "markdown"
    assert chat.timeout == 20.0 and mail.timeout == 45.0
    assert (chat.fallback, chat.fallback_after) == ("mail", 120.0)
    assert chat.shown == ("json://ops:****@chat.example/hook", "mmost://mm.example/a...x/")
    assert PASSWORD in chat.secrets
    assert PASSWORD not in repr(chat) and PASSWORD not in chat.describe()
    assert "receiver mail: mailto://user:****@smtp.example" in mail.describe()
    [action] = config.rules[0].actions
    assert isinstance(action, AlertAction)
    assert action.receivers == ("chat", "mail") and action.spec == {"body": "{lines}"}
    assert action.repeat_s == 1800.0
    assert action.describe() == "alert chat, mail (own body) repeat every 30m00s"


def test_defaults(tmp_path: Path) -> None:
    config = load(tmp_path, "")
    assert config.receivers == {}
    assert config.alerts.group_wait == 2.0 and config.alerts.group_by == ("incident",)
    assert config.alerts.repeat.interval_s == 4 * 3600
    assert "FAULT" in config.alerts.repeat.states and "DOWN" in config.alerts.repeat.states


def test_unknown_receiver_in_an_action(tmp_path: Path) -> None:
    exc = error(tmp_path, '[receivers.mail]\nurls = ["json://x.example/h"]\n' + RULE)
    assert exc.key == "rule[0].action[0].receivers[0]"
    assert exc.reason == "no receiver 'chat'; define [receivers.chat] (known: mail)"


def test_single_receiver_key(tmp_path: Path) -> None:
    config = load(tmp_path, '[receivers.chat]\nurls = ["json://x.example/h"]\n'
                  + RULE.replace('receivers = ["chat"]', 'receiver = "chat"'))
    assert config.rules[0].actions[0].receivers == ("chat",)  # type: ignore[attr-defined]


@pytest.mark.parametrize(("where", "key"), [
    ("receiver", "receivers.chat.title"), ("action", "rule[0].action[0].body")])
def test_bad_templates_are_config_errors(tmp_path: Path, where: str, key: str) -> None:
    receiver = '[receivers.chat]\nurls = ["json://x.example/h"]\n'
    if where == "receiver":
        text = receiver + 'title = "{hostname} down"\n' + RULE
    else:
        text = receiver + RULE + 'body = "{lines"\n'
    exc = error(tmp_path, text)
    assert exc.key == key
    assert "unknown field {hostname}" in exc.reason or "unclosed '{'" in exc.reason


def test_a_url_apprise_refuses_is_named_without_its_secret(tmp_path: Path) -> None:
    exc = error(tmp_path, f"""
[receivers.chat]
urls = ["json://x.example/h", "tgram://{PASSWORD}/123"]
""" + RULE)
    assert exc.key == "receivers.chat.urls[1]"
    assert exc.reason.startswith("apprise refuses this URL (tgram://...): ")
    assert str(exc.path).endswith("knotify.toml")


@pytest.mark.parametrize(("text", "key", "reason"), [
    ('[receivers.chat]\nurls = []\n', "receivers.chat.urls", "needs urls = [...] or config"),
    ('[receivers.chat]\nurls = ["json://x/h"]\ntags = ["ops"]\n', "receivers.chat.tags",
     "set config"),
    ('[receivers.chat]\nurls = ["json://x/h"]\nfallback = "pager"\n', "receivers.chat.fallback",
     "no receiver 'pager'; known: chat"),
    ('[receivers.chat]\nurls = ["json://x/h"]\nfallback = "mail"\n'
     '[receivers.mail]\nurls = ["json://y/h"]\nfallback = "chat"\n', "receivers.chat.fallback",
     "fallbacks go round in a circle: chat -> mail -> chat"),
    ('[receivers.chat]\nurls = ["json://x/h"]\nformat = "rtf"\n', "receivers.chat.format",
     "expected one of text, markdown, html"),
    ('[receivers.chat]\nurl = ["json://x/h"]\n', "receivers.chat.url", "unknown key"),
    ('[receivers."bad name"]\nurls = ["json://x/h"]\n', "receivers.bad name",
     "a receiver name is"),
    ('[alerts]\ngroup_by = ["colour"]\n', "alerts.group_by", "unknown field 'colour'"),
    ('[alerts]\nretry_initial = "10s"\nretry_max = "1s"\n', "alerts.retry_max",
     "at least retry_initial"),
    ('[alerts]\nflap_threshold = -1\n', "alerts.flap_threshold", "expected 0..10000"),
])
def test_receiver_and_alert_setting_errors(tmp_path: Path, text: str, key: str,
                                           reason: str) -> None:
    exc = error(tmp_path, text)
    assert exc.key == key and reason in exc.reason


def test_apprise_config_file_with_tags(tmp_path: Path) -> None:
    apprise_file = tmp_path / "apprise.yml"
    apprise_file.write_text(f"""urls:
  - json://ops:{PASSWORD}@chat.example/hook:
    - tag: ops
  - json://other.example/x:
    - tag: dev
""")
    config = load(tmp_path, """
[receivers.chat]
config = "apprise.yml"
tags = ["ops"]
""" + RULE)
    chat = config.receivers["chat"]
    assert chat.config == str(apprise_file)
    assert chat.config_shown == ("json://ops:****@chat.example/hook",)
    assert PASSWORD not in chat.describe()


@pytest.mark.parametrize(("content", "tags", "reason"), [
    (None, [], "cannot read the apprise config file"),
    ("urls:\n  - json://x.example/h:\n    - tag: dev\n", ["ops"], "no service with tag(s) ops"),
])
def test_apprise_config_file_problems(tmp_path: Path, content: str | None, tags: list[str],
                                      reason: str) -> None:
    apprise_file = tmp_path / "apprise.yml"
    if content is not None:
        apprise_file.write_text(content)
    exc = error(tmp_path, f"""
[receivers.chat]
config = "{apprise_file}"
tags = {tags!r}
""".replace("'", '"') + RULE)
    assert exc.key == "receivers.chat.config" and reason in exc.reason


def test_honor_silences_is_a_rule_option(tmp_path: Path) -> None:
    config = load(tmp_path, """
[[rule]]
id = "r"
honor_silences = true
[[rule.action]]
type = "log"
""")
    assert config.rules[0].honor_silences


def test_the_router_side_never_imports_apprise(tmp_path: Path) -> None:
    # apprise (and its 100+ plugins) lives only in the sender processes: the router's
    # memory stays small and a plugin crash cannot take it down.
    import subprocess
    import sys

    path = tmp_path / "knotify.toml"
    path.write_text('[receivers.chat]\nurls = ["json://x.example/h"]\n' + RULE)
    code = ("import sys, knotify.router, knotify.config as c; "
            f"c.load({str(path)!r}); "
            "assert 'apprise' not in sys.modules, 'apprise imported'")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
