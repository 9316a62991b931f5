"""A real keepalived failover makes exactly one chat message and one e-mail.

Two keepalived nodes in network namespaces (:mod:`netns`), a sync group G1 of
VI_1 and VI_2, generic ``notify`` hooks on all three reporting to one router.
node1 (priority 100) is MASTER; its keepalived is stopped and node2 takes over.
The alert rule fires on every BACKUP -> MASTER: node2's three transitions must
arrive as ONE grouped Mattermost-style chat message and ONE e-mail, listing all
three, through real servers (a local HTTP server, aiosmtpd).
"""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path

import netns
import pytest
from alert_servers import HttpSink, SmtpSink, settled
from conftest import ROOT, KEnv, RouterProcess, wait_for

pytestmark = [pytest.mark.keepalived, pytest.mark.slow, pytest.mark.timeout(180)]

VENV_PYTHON = "/opt/knotify/venv/bin/python"
INSTANCES = ("VI_1", "VI_2")
GROUP = "G1"
SUBJECTS = [("INSTANCE", "VI_1"), ("INSTANCE", "VI_2"), ("GROUP", GROUP)]
GROUP_WAIT = 2.0


def hook_wrapper(bindir: Path) -> Path:
    """The repo's knotify-notify wrapper, on this interpreter, as keepalived wants scripts."""
    netns.secure_dir(bindir)
    text = (ROOT / "hooks" / "knotify-notify").read_text()
    assert VENV_PYTHON in text
    return netns.install_script(bindir / "knotify-notify", text.replace(VENV_PYTHON,
                                                                        sys.executable))


def node_files(kenv: KEnv, node: netns.Node, hook: Path,
               instances: tuple[str, ...] = INSTANCES, group: str | None = GROUP) -> None:
    cfg = node.workdir / f"{node.name}.toml"
    cfg.write_text(f"[paths]\nruntime_dir = {json.dumps(str(kenv.runtime))}\n"
                   f"state_dir = {json.dumps(str(kenv.state))}\n\n"
                   f"[hook]\nhost = {json.dumps(node.name)}\n")
    cfg.chmod(0o644)
    notify = f'    notify "{hook} -c {cfg}"'
    out = ["global_defs {", f"    router_id {node.name}", "    script_user root",
           "    enable_script_security", "}"]
    if group is not None:
        out += ["", f"vrrp_sync_group {group} {{", "    group {",
                *(f"        {i}" for i in instances), "    }", notify, "}"]
    for n, inst in enumerate(instances, 1):
        out += ["", f"vrrp_instance {inst} {{", "    state BACKUP",
                f"    interface {node.ifname}", f"    virtual_router_id {90 + n}",
                f"    priority {node.prio}", "    advert_int 1",
                f"    unicast_src_ip {node.addr}", "    unicast_peer {", f"        {node.peer}",
                "    }", "    virtual_ipaddress {", f"        10.215.0.{100 + n}/24", "    }",
                notify, "}"]
    node.keepalived_conf.write_text("\n".join(out) + "\n")


def states(kenv: KEnv) -> dict[tuple[str, str, str], str]:
    return {(s["host"], s["kind"], s["name"]): s["state"] for s in kenv.status()}


def wait_states(kenv: KEnv, cl: netns.Cluster, want: dict[tuple[str, str, str], str],
                what: str) -> None:
    def reached() -> bool:
        cl.check_scripts()
        cl.check_running()
        now = states(kenv)
        return all(now.get(k) == v for k, v in want.items())

    wait_for(reached, 40, interval=0.2, what=what)


def quiet(kenv: KEnv) -> None:
    """No hook left to arrive, every alert delivered, and a group window gone by."""
    wait_for(lambda: not kenv.spooled() and settled(kenv.history()), 40, interval=0.2,
             what="alerts to be delivered")
    time.sleep(GROUP_WAIT + 1.5)
    wait_for(lambda: settled(kenv.history()), 40, interval=0.2, what="late alerts")


def test_keepalived_failover_is_one_chat_message_and_one_email(
    kenv: KEnv, router: RouterProcess, cluster: netns.Cluster
) -> None:
    chat = HttpSink().start()
    smtp = SmtpSink().start()
    try:
        cluster.create({"node1": 100, "node2": 50}, subnet="10.215.0")
        hook = hook_wrapper(cluster.workdir / "bin")
        node1, node2 = cluster.nodes["node1"], cluster.nodes["node2"]
        for node in (node1, node2):
            node_files(kenv, node, hook)
        kenv.write_config(f"""
[alerts]
group_wait = "{GROUP_WAIT}s"
retry_initial = "200ms"
retry_max = "1s"

[receivers.chat]
urls = ["{chat.mattermost_url()}"]

[receivers.mail]
urls = ["{smtp.url(to='oncall@example.com')}"]

[[rule]]
id = "take-over"
kind = ["INSTANCE", "GROUP"]
state = "MASTER"
from = "BACKUP"
[[rule.action]]
type = "alert"
receivers = ["chat", "mail"]
""")
        router.start()
        cluster.start(node1)
        wait_states(kenv, cluster, {("node1", k, n): "BACKUP" for k, n in SUBJECTS},
                    "node1 BACKUP at start-up")
        cluster.start(node2)
        wait_states(kenv, cluster, {**{("node1", k, n): "MASTER" for k, n in SUBJECTS},
                                    **{("node2", k, n): "BACKUP" for k, n in SUBJECTS}},
                    "node1 MASTER, node2 BACKUP")
        quiet(kenv)
        chats_before, mails_before = len(chat.got()), len(smtp.mails)

        assert cluster.stop(node1, signal.SIGTERM, timeout=20) == 0
        wait_states(kenv, cluster, {("node2", k, n): "MASTER" for k, n in SUBJECTS},
                    "node2 to take over")
        wait_for(lambda: len(chat.got()) > chats_before and len(smtp.mails) > mails_before,
                 40, what="the failover's chat message and e-mail")
        quiet(kenv)
        cluster.check_scripts()

        new_chats = chat.got()[chats_before:]
        new_mails = smtp.mails[mails_before:]
        assert len(new_chats) == 1, [r.json for r in new_chats]
        assert len(new_mails) == 1, [m.subject for m in new_mails]
        text = new_chats[0].json["text"]
        title = text.splitlines()[0]
        # grouped by incident: node1 and node2 serve the cluster, node2 took it over
        assert title == ("[node1, node2] 3 instances and sync groups: node2 BACKUP -> "
                         "MASTER (3)"), title
        mail = new_mails[0]
        assert mail.subject == title and mail.rcpt_tos == ["oncall@example.com"]
        for kind, name in SUBJECTS:
            line = f"node2 {kind} {name}: BACKUP -> MASTER"
            assert line in text and line in mail.body, (line, text, mail.body)
        takeover = [e for e in kenv.history() if e["host"] == "node2"
                    and e["state"] == "MASTER" and e["class"] == "transition"]
        assert len(takeover) == 3
        messages = {(i["receiver"], i["message"]["id"]) for e in takeover
                    for i in e["alerts"]}
        assert len(messages) == 2  # one per receiver, shared by the three events
    except BaseException:
        print(cluster.logs())
        print("===== router log (tail)\n" + router.log_text()[-20000:])
        raise
    finally:
        chat.stop()
        smtp.stop()


def test_keepalived_one_instance_failover_is_one_message_naming_both_hosts(
    kenv: KEnv, router: RouterProcess, cluster: netns.Cluster
) -> None:
    """node1's STOP and node2's MASTER of one failover: one message by default (with
    the old default, group_by = ["host"], it was one per host)."""
    chat = HttpSink().start()
    try:
        cluster.create({"node1": 100, "node2": 50}, subnet="10.216.0")
        hook = hook_wrapper(cluster.workdir / "bin")
        node1, node2 = cluster.nodes["node1"], cluster.nodes["node2"]
        for node in (node1, node2):
            node_files(kenv, node, hook, instances=("VI_1",), group=None)
        kenv.write_config(f"""
[alerts]
group_wait = "4s"
retry_initial = "200ms"
retry_max = "1s"

[receivers.chat]
urls = ["{chat.url()}"]

[[rule]]
id = "failover"
kind = "INSTANCE"
state = ["MASTER", "STOP"]
from = "!INIT"
[[rule.action]]
type = "alert"
receivers = ["chat"]
""")
        router.start()
        vi1 = [("INSTANCE", "VI_1")]
        cluster.start(node1)
        wait_states(kenv, cluster, {("node1", "INSTANCE", "VI_1"): "BACKUP"}, "node1 BACKUP")
        cluster.start(node2)
        wait_states(kenv, cluster, {("node1", "INSTANCE", "VI_1"): "MASTER",
                                    ("node2", "INSTANCE", "VI_1"): "BACKUP"},
                    "node1 MASTER, node2 BACKUP")
        quiet(kenv)
        before = len(chat.got())

        assert cluster.stop(node1, signal.SIGTERM, timeout=20) == 0
        wait_states(kenv, cluster, {("node1", k, n): "STOP" for k, n in vi1}
                    | {("node2", k, n): "MASTER" for k, n in vi1}, "node2 to take over")
        wait_for(lambda: len(chat.got()) > before, 40, what="the failover's message")
        quiet(kenv)
        cluster.check_scripts()
        new = [r.json for r in chat.got()[before:]]
        assert len(new) == 1, [m["title"] for m in new]
        title, text = new[0]["title"], new[0]["message"]
        assert title.startswith("[node1, node2] VI_1: "), title
        assert "node1 MASTER -> STOP" in title and "node2 BACKUP -> MASTER" in title, title
        assert "node1 INSTANCE VI_1: MASTER -> STOP" in text, text
        assert "node2 INSTANCE VI_1: BACKUP -> MASTER" in text, text
    except BaseException:
        print(cluster.logs())
        print("===== router log (tail)\n" + router.log_text()[-20000:])
        raise
    finally:
        chat.stop()
