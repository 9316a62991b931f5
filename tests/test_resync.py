"""Re-learning keepalived's states from its JSON dump (unit part; real keepalived below)."""

from __future__ import annotations

import pytest

from knotify import resync
from knotify.errors import ResyncError
from knotify.event import decode_event

# Trimmed from a real keepalived 2.2.7 dump (SIGJSON, /tmp/keepalived.json).
DUMP = [
    {"data": {"iname": "VI_1", "vrid": 77, "base_priority": 100, "effective_priority": 100,
              "state": 2, "wantstate": 2, "last_transition": 1795849478.103513},
     "stats": {"become_master": 1}},
    {"data": {"iname": "VI_2", "effective_priority": 40, "state": 1,
              "last_transition": 1795849470.5}, "stats": {}},
    {"data": {"iname": "VI_3", "effective_priority": 100, "state": 3}, "stats": {}},
    {"data": {"iname": "VI_4", "effective_priority": 100, "state": 0}, "stats": {}},
    {"data": {"iname": "VI_5", "effective_priority": 100, "state": 97}, "stats": {}},
]


def test_dump_states_map_to_keepalived_words() -> None:
    got = {i["name"]: (i["state"], i["prio"]) for i in resync.parse_dump(DUMP)}
    assert got == {"VI_1": ("MASTER", 100), "VI_2": ("BACKUP", 40), "VI_3": ("FAULT", 100),
                   "VI_5": ("DELETED", 100)}  # INIT says nothing yet


def test_dump_that_is_not_a_list_is_refused() -> None:
    with pytest.raises(ResyncError, match="not a list"):
        resync.parse_dump({"iname": "VI_1"})


def test_snapshot_events_are_valid_wire_events_marked_resync() -> None:
    seqs = iter(range(10, 20))
    events = resync.wire_events(resync.parse_dump(DUMP), "node1", lambda: next(seqs),
                                lambda: "f" * 32)
    decoded = [decode_event(e) for e in events]
    assert [(e.name, e.state, e.seq, e.source) for e in decoded] == [
        ("VI_1", "MASTER", 10, "resync"), ("VI_2", "BACKUP", 11, "resync"),
        ("VI_3", "FAULT", 12, "resync"), ("VI_5", "DELETED", 13, "resync")]
    assert decoded[0].extra["keepalived_since_ns"] == 1795849478103513088


def test_snapshot_refuses_a_pid_that_is_not_keepalived() -> None:
    import os

    with pytest.raises(ResyncError, match="is not keepalived"):
        resync.snapshot(os.getpid())
