"""Silence states read naturally: one ended by hand shows when it really ended.

``knotify silence expire`` ends a silence by hand: ``list --all`` shows it
``expired``, with the time it was expired under UNTIL (not the end it was planned to
have, which lies in the future) and "expired by hand"; one whose time ran out shows
``ended`` and "ran out". The JSON gives ``ended_ns``, the real end, for both.
"""

from __future__ import annotations

import json
import re

from conftest import KEnv, RouterProcess, wait_for

from knotify.alerts.silence import Silence, parse_matchers
from knotify.commands.table import fmt_time

S = 10**9


def _rows(text: str) -> dict[str, list[str]]:
    """The table's rows by ID (cells are separated by two or more spaces)."""
    lines = text.strip().splitlines()
    assert lines[0].split()[:5] == ["ID", "STATUS", "FROM", "UNTIL", "LEFT"], lines[0]
    return {cells[0]: cells for cells in (re.split(r"\s{2,}", ln.strip()) for ln in lines[1:])}


def test_expired_by_hand_and_ran_out_read_naturally(kenv: KEnv, router: RouterProcess) -> None:
    router.start()
    kenv.cli("silence", "add", "host=node1", "--for", "2h", "--reason", "kernel upgrade")
    out = kenv.cli("silence", "expire", "1").stdout
    assert out.startswith("expired silence 1 now (it was to last until "), out
    kenv.cli("silence", "add", "host=node2", "--for", "1s", "--reason", "quick check")
    wait_for(lambda: json.loads(kenv.cli("silence", "list", "--all", "--json").stdout)[1][
        "status"] == "ended", 20, what="silence 2 to run out")

    listed = {s["id"]: s for s in json.loads(
        kenv.cli("silence", "list", "--all", "--json").stdout)}
    first, second = listed[1], listed[2]
    assert first["status"] == "expired" and first["ended_ns"] == first["expired_ns"]
    assert first["ended_ns"] < first["ends_ns"] - 3600 * S  # ended long before it was to
    assert second["status"] == "ended" and second["ended_ns"] == second["ends_ns"]
    assert second["expired_ns"] is None

    rows = _rows(kenv.cli("silence", "list", "--all").stdout)
    assert rows["1"][1] == "expired" and rows["1"][4] == "expired by hand"
    assert rows["1"][3] == fmt_time(first["expired_ns"])[:19]  # its real end
    assert rows["2"][1] == "ended" and rows["2"][4] == "ran out"
    assert rows["2"][3] == fmt_time(second["ends_ns"])[:19]


def test_ended_ns_is_the_real_end() -> None:
    matchers = parse_matchers(["host=a"])
    running = Silence(1, matchers, 0, 10 * S, 0, "me", "why")
    assert running.to_dict(5 * S)["ended_ns"] is None
    assert running.to_dict(11 * S)["status"] == "ended"
    assert running.to_dict(11 * S)["ended_ns"] == 10 * S
    by_hand = Silence(2, matchers, 0, 10 * S, 0, "me", "why", expired_ns=3 * S)
    assert by_hand.to_dict(5 * S)["status"] == "expired"
    assert by_hand.to_dict(5 * S)["ended_ns"] == 3 * S
    assert by_hand.to_dict(50 * S)["ended_ns"] == 3 * S
