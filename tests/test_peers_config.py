"""``[peers]``: parsed into frozen settings; every mistake named by file and key."""

from __future__ import annotations

import pytest
from conftest import KEnv

from knotify import config as configmod
from knotify.errors import ConfigError

FILE = "/etc/knotify/peers.toml"
BASE = '[hook]\nhost = "lb1"\n'


def parse(text: str) -> configmod.Config:
    return configmod.parse(BASE + text, FILE)


def error(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse(text)
    return str(info.value)


def test_no_peers_table_means_a_router_alone() -> None:
    assert parse("").peers is None


def test_full_peers_table_is_read() -> None:
    peers = parse('[peers]\nname = "lb1"\npeer_timeout = "3s"\norder = ["lb2", "lb1"]\n'
                  '[peers.routers.lb2]\nendpoint = "tcp://10.0.0.2:5599"\nhost = "node2"\n'
                  ).peers
    assert peers is not None
    assert (peers.name, peers.host, peers.peer_timeout, peers.order) == (
        "lb1", "lb1", 3.0, ("lb2", "lb1"))
    (lb2,) = peers.routers
    assert (lb2.name, lb2.endpoint, lb2.host) == ("lb2", "tcp://10.0.0.2:5599", "node2")
    assert peers.host_of("lb2") == "node2" and peers.host_of("lb1") == "lb1"


def test_defaults_name_from_hook_host_order_by_name_host_from_name() -> None:
    peers = parse('[peers.routers.lb0]\nendpoint = "ipc:///run/k0/knotify.sock"\n').peers
    assert peers is not None
    assert peers.name == "lb1" and peers.peer_timeout == 15.0
    assert peers.order == ("lb0", "lb1")
    assert peers.routers[0].host == "lb0"


def test_order_leaving_a_router_out_puts_it_last() -> None:
    peers = parse('[peers]\norder = ["lb3"]\n[peers.routers.lb2]\nendpoint = "tcp://a:1"\n'
                  '[peers.routers.lb3]\nendpoint = "tcp://b:1"\n').peers
    assert peers is not None and peers.order == ("lb3", "lb1", "lb2")


@pytest.mark.parametrize(("text", "key", "reason"), [
    ("[peers]\n", "peers.routers", "names no other router"),
    ('[peers.routers.lb2]\nendpoint = "http://x"\n', "peers.routers.lb2.endpoint",
     "expected tcp://HOST:PORT or ipc://PATH"),
    ("[peers.routers.lb2]\n", "peers.routers.lb2.endpoint", "is required"),
    ('[peers.routers.lb1]\nendpoint = "tcp://a:1"\n', "peers.routers.lb1",
     "this router's own name"),
    ('[peers]\norder = ["lb1", "lb9"]\n[peers.routers.lb2]\nendpoint = "tcp://a:1"\n',
     "peers.order", "'lb9'"),
    ('[peers]\norder = ["lb1", "lb1"]\n[peers.routers.lb2]\nendpoint = "tcp://a:1"\n',
     "peers.order", "twice"),
    ('[peers]\npeer_timeout = "0s"\n[peers.routers.lb2]\nendpoint = "tcp://a:1"\n',
     "peers.peer_timeout", "more than 0s"),
    ('[peers]\npeer_timeout = "soon"\n[peers.routers.lb2]\nendpoint = "tcp://a:1"\n',
     "peers.peer_timeout", ""),
    ('[peers]\nname = "lb 1; rm -rf /"\n[peers.routers.lb2]\nendpoint = "tcp://a:1"\n',
     "peers.name", "expected a router name"),
    ('[peers]\ntimeout = "1s"\n[peers.routers.lb2]\nendpoint = "tcp://a:1"\n',
     "peers.timeout", "unknown key"),
    ('[peers.routers.lb2]\nendpoint = "tcp://a:1"\nport = 1\n', "peers.routers.lb2.port",
     "unknown key"),
    ('[peers]\nrouters = 3\n', "peers.routers", "expected a table"),
])
def test_mistakes_name_the_key(text: str, key: str, reason: str) -> None:
    message = error(text)
    assert message.startswith(f"{FILE}: {key}"), message
    assert reason in message


def test_peers_change_needs_a_restart() -> None:
    old = parse('[peers.routers.lb2]\nendpoint = "tcp://a:1"\n')
    new = parse('[peers.routers.lb2]\nendpoint = "tcp://b:1"\n')
    assert "peers" in configmod.restart_needed(old, new)
    assert configmod.reloaded(old, new).peers == old.peers


def test_check_config_shows_the_peers(kenv: KEnv) -> None:
    kenv.write_config('[hook]\nhost = "lb1"\n[peers]\npeer_timeout = "5s"\n'
                      '[peers.routers.lb2]\nendpoint = "tcp://10.0.0.2:5599"\nhost = "node2"\n')
    out = kenv.cli("check-config", str(kenv.config)).stdout
    assert ("  peers    lb1 (beside lb1) with lb2 at tcp://10.0.0.2:5599 (beside node2); each "
            "position waits 5.0s, order lb1, lb2 when no VRRP MASTER decides") in out, out


def test_the_shipped_commented_peers_block_is_valid_uncommented() -> None:
    from conftest import ROOT

    lines = (ROOT / "config" / "knotify.toml").read_text().splitlines()
    start = lines.index("# [peers]")
    end = lines.index("", start)
    block = "\n".join(line[2:] for line in lines[start:end])
    peers = configmod.parse(block, FILE).peers
    assert peers is not None and peers.name == "lb1" and peers.order == ("lb1", "lb2")
    assert peers.routers[0].endpoint == "tcp://10.0.0.2:5599"
