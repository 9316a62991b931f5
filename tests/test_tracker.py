"""The state table: what each report means (transition, repeat, notice, stale, invalid)."""

from __future__ import annotations

import itertools

import pytest

from knotify.event import Event
from knotify.tracker import KeyState, Tracker, Transition
from knotify.vocab import INIT, INVALID_CLASS, NOTICE, REPEAT, STALE, TRANSITION

_ids = itertools.count()
S = 1_000_000_000  # one second in ns


def ev(state: str, *, name: str = "VI_1", kind: str = "INSTANCE", prio: int | None = 100,
       seq: int = 0, ts: int = 0, host: str = "kb1", vs: str = "", source: str = "hook",
       form: str = "notify") -> Event:
    return Event(id=f"ev{next(_ids):08d}", host=host, kind=kind, name=name, state=state,
                 prio=prio, vs=vs, seq=seq, ts_ns=ts, source=source, form=form, recv_ns=ts)


def test_first_sight_is_a_transition_from_init() -> None:
    t = Tracker()
    first = ev("BACKUP", seq=1, ts=10 * S)
    tr = t.observe(first)
    assert tr == Transition(TRANSITION, "BACKUP", INIT, None, 1)
    assert tr.duration_s(20 * S) is None
    assert t.states[first.key] == KeyState("BACKUP", 100, 10 * S, first.id, 1, 1, 10 * S)


@pytest.mark.parametrize(("reported", "effective"), [
    ("MASTER_PRIORITY", "MASTER"), ("BACKUP_PRIORITY", "BACKUP"),
    ("MASTER_RX_LOWER_PRI", "MASTER"),
])
def test_first_sight_of_a_fifo_only_state_sets_the_implied_state(reported: str,
                                                                 effective: str) -> None:
    t = Tracker()
    tr = t.observe(ev(reported, prio=40))
    assert (tr.cls, tr.state, tr.prev_state) == (TRANSITION, effective, INIT)
    assert t.states[("kb1", "INSTANCE", "VI_1", "")].state == effective


def test_unknown_state_on_first_sight_is_a_notice_and_stores_nothing() -> None:
    t = Tracker()
    tr = t.observe(ev("{UNKNOWN}"))
    assert (tr.cls, tr.state, tr.prev_state, tr.epoch) == (NOTICE, "{UNKNOWN}", INIT, 0)
    assert t.states == {}


def test_unknown_state_when_known_is_a_notice_and_keeps_the_state() -> None:
    t = Tracker()
    t.observe(ev("MASTER", seq=1))
    tr = t.observe(ev("{UNKNOWN}", seq=2))
    assert (tr.cls, tr.state, tr.prev_state) == (NOTICE, "MASTER", "MASTER")
    assert t.states[("kb1", "INSTANCE", "VI_1", "")].state == "MASTER"


def test_one_change_reported_three_ways_is_one_transition_then_repeats() -> None:
    # notify_master (short form, no prio), generic notify, FIFO line: one change.
    t = Tracker()
    t.observe(ev("BACKUP", seq=1, ts=1 * S))
    a = t.observe(ev("MASTER", seq=2, ts=5 * S, prio=None, form="master"))
    b = t.observe(ev("MASTER", seq=3, ts=5 * S + 1000, form="notify"))
    c = t.observe(ev("MASTER", seq=4, ts=5 * S + 2000, source="fifo", form="fifo"))
    assert [x.cls for x in (a, b, c)] == [TRANSITION, REPEAT, REPEAT]
    assert a.prev_state == "BACKUP" and a.epoch == 2
    assert b.epoch == c.epoch == 2
    assert b.prev_state == c.prev_state == "MASTER"


def test_concurrent_hooks_arriving_out_of_seq_order_are_repeats() -> None:
    # Scripts run concurrently: the generic notify (seq 3) can arrive before notify_master (2).
    t = Tracker()
    t.observe(ev("BACKUP", seq=1))
    assert t.observe(ev("MASTER", seq=3)).cls == TRANSITION
    assert t.observe(ev("MASTER", seq=2, prio=None, form="master")).cls == REPEAT
    assert t.states[("kb1", "INSTANCE", "VI_1", "")].seq == 3


def test_master_priority_while_master_is_a_notice_that_updates_prio() -> None:
    t = Tracker()
    t.observe(ev("MASTER", seq=1, prio=100, ts=1 * S))
    tr = t.observe(ev("MASTER_PRIORITY", seq=2, prio=40, ts=2 * S))
    assert (tr.cls, tr.state, tr.prev_state, tr.epoch) == (NOTICE, "MASTER", "MASTER", 1)
    state = t.states[("kb1", "INSTANCE", "VI_1", "")]
    assert (state.state, state.prio, state.since_ns) == ("MASTER", 40, 1 * S)


def test_backup_priority_while_backup_is_a_notice() -> None:
    t = Tracker()
    t.observe(ev("BACKUP", seq=1, prio=40))
    tr = t.observe(ev("BACKUP_PRIORITY", seq=2, prio=100))
    assert tr.cls == NOTICE
    assert t.states[("kb1", "INSTANCE", "VI_1", "")].prio == 100


def test_rx_lower_pri_repeats_are_notices() -> None:
    t = Tracker()
    t.observe(ev("MASTER", seq=1))
    classes = [t.observe(ev("MASTER_RX_LOWER_PRI", seq=2 + i)).cls for i in range(5)]
    assert classes == [NOTICE] * 5
    assert t.states[("kb1", "INSTANCE", "VI_1", "")].epoch == 1


def test_master_priority_while_backup_is_a_transition_to_master() -> None:
    # The FIFO says the instance is MASTER: a missed MASTER line must not leave us at BACKUP.
    t = Tracker()
    t.observe(ev("BACKUP", seq=1))
    tr = t.observe(ev("MASTER_PRIORITY", seq=2, prio=40))
    assert (tr.cls, tr.state, tr.prev_state) == (TRANSITION, "MASTER", "BACKUP")


def test_stale_older_seq_with_other_state_does_not_change_state() -> None:
    t = Tracker()
    t.observe(ev("BACKUP", seq=1, ts=1 * S))
    t.observe(ev("MASTER", seq=5, ts=5 * S))
    tr = t.observe(ev("FAULT", seq=4, ts=4 * S))
    assert (tr.cls, tr.state, tr.prev_state, tr.epoch) == (STALE, "MASTER", "MASTER", 2)
    state = t.states[("kb1", "INSTANCE", "VI_1", "")]
    assert (state.state, state.seq, state.since_ns) == ("MASTER", 5, 5 * S)


def test_stale_report_does_not_touch_prio_or_seq() -> None:
    t = Tracker()
    t.observe(ev("MASTER", seq=5, prio=100))
    assert t.observe(ev("MASTER_PRIORITY", seq=4, prio=40)).cls == STALE
    assert t.observe(ev("MASTER", seq=3, prio=7)).cls == REPEAT
    state = t.states[("kb1", "INSTANCE", "VI_1", "")]
    assert (state.prio, state.seq) == (100, 5)


def test_unknown_seq_is_never_stale() -> None:
    # seq 0 = the hook could not use its counter: never used to order.
    t = Tracker()
    t.observe(ev("MASTER", seq=9))
    tr = t.observe(ev("FAULT", seq=0))
    assert (tr.cls, tr.state) == (TRANSITION, "FAULT")
    t2 = Tracker()
    t2.observe(ev("MASTER", seq=0))
    assert t2.observe(ev("BACKUP", seq=1)).cls == TRANSITION


def test_durations_use_the_previous_state_start() -> None:
    t = Tracker()
    t.observe(ev("BACKUP", seq=1, ts=100 * S))
    t.observe(ev("BACKUP", seq=2, ts=130 * S))  # a repeat does not restart the clock
    tr = t.observe(ev("MASTER", seq=3, ts=160 * S))
    assert tr.prev_since_ns == 100 * S
    assert tr.duration_s(160 * S) == 60.0
    tr2 = t.observe(ev("FAULT", seq=4, ts=161 * S + S // 2))
    assert tr2.prev_since_ns == 160 * S
    assert tr2.duration_s(161 * S + S // 2) == 1.5


def test_duration_is_never_negative() -> None:
    tr = Transition(TRANSITION, "MASTER", "BACKUP", 10 * S, 2)
    assert tr.duration_s(5 * S) == 0.0


def test_epochs_count_transitions_only() -> None:
    t = Tracker()
    states = ["BACKUP", "BACKUP", "MASTER", "MASTER_PRIORITY", "MASTER", "FAULT", "BACKUP",
              "BACKUP_PRIORITY", "MASTER", "STOP"]
    epochs = [t.observe(ev(s, seq=i + 1)).epoch for i, s in enumerate(states)]
    assert epochs == [1, 1, 2, 2, 2, 3, 4, 4, 5, 6]
    assert t.epoch(("kb1", "INSTANCE", "VI_1", "")) == 6
    assert t.epoch(("kb1", "INSTANCE", "nope", "")) == 0


def test_transition_prio_update_and_short_form_keeps_known_prio() -> None:
    t = Tracker()
    t.observe(ev("BACKUP", seq=1, prio=100))
    t.observe(ev("MASTER", seq=2, prio=None, form="master"))
    assert t.states[("kb1", "INSTANCE", "VI_1", "")].prio == 100
    t.observe(ev("FAULT", seq=3, prio=90))
    assert t.states[("kb1", "INSTANCE", "VI_1", "")].prio == 90


def test_group_prio_zero_does_not_overwrite_a_known_prio_on_repeat() -> None:
    t = Tracker()
    key = ("kb1", "GROUP", "G1", "")
    t.observe(ev("MASTER", kind="GROUP", name="G1", seq=1, prio=50))  # knotify send with prio
    assert t.observe(ev("MASTER", kind="GROUP", name="G1", seq=2, prio=0)).cls == REPEAT
    assert t.states[key].prio == 50


def test_group_prio_zero_does_not_overwrite_a_known_prio_on_transition() -> None:
    t = Tracker()
    key = ("kb1", "GROUP", "G1", "")
    t.observe(ev("MASTER", kind="GROUP", name="G1", seq=1, prio=50))
    tr = t.observe(ev("FAULT", kind="GROUP", name="G1", seq=2, prio=0))
    assert tr.cls == TRANSITION
    assert t.states[key].prio == 50


def test_instance_prio_zero_is_a_real_value() -> None:
    t = Tracker()
    t.observe(ev("MASTER", seq=1, prio=100))
    t.observe(ev("MASTER", seq=2, prio=0))
    assert t.states[("kb1", "INSTANCE", "VI_1", "")].prio == 0


def test_keys_are_independent_by_host_kind_name_and_vs() -> None:
    t = Tracker()
    assert t.observe(ev("MASTER", host="a")).cls == TRANSITION
    assert t.observe(ev("MASTER", host="b")).cls == TRANSITION
    assert t.observe(ev("MASTER", kind="GROUP", prio=0)).cls == TRANSITION
    assert t.observe(ev("MASTER", name="VI_2")).cls == TRANSITION
    assert t.observe(ev("UP", kind="RS", name="r", vs="v1", prio=None)).cls == TRANSITION
    assert t.observe(ev("DOWN", kind="RS", name="r", vs="v2", prio=None)).cls == TRANSITION
    assert t.observe(ev("UP", kind="RS", name="r", vs="v1", prio=None)).cls == REPEAT
    assert len(t.states) == 6


def test_lvs_up_down_transitions() -> None:
    t = Tracker()
    t.observe(ev("UP", kind="VS", name="FWM 5", prio=None, seq=1))
    tr = t.observe(ev("DOWN", kind="VS", name="FWM 5", prio=None, seq=2))
    assert (tr.cls, tr.state, tr.prev_state) == (TRANSITION, "DOWN", "UP")


def test_invalid_events_are_classified_without_touching_state() -> None:
    t = Tracker()
    bad = Event(id="bad00001", host="kb1", kind="INVALID", name="", state="INVALID")
    assert t.observe(bad) == Transition(INVALID_CLASS, "INVALID", "", None, 0)
    assert t.states == {}


def test_tracker_resumes_from_loaded_states() -> None:
    key = ("kb1", "INSTANCE", "VI_1", "")
    t = Tracker({key: KeyState("MASTER", 100, 5 * S, "old", 10, 4, 5 * S)})
    assert t.observe(ev("MASTER", seq=11)).cls == REPEAT
    assert t.observe(ev("BACKUP", seq=9)).cls == STALE
    tr = t.observe(ev("BACKUP", seq=12, ts=9 * S))
    assert (tr.cls, tr.prev_state, tr.prev_since_ns, tr.epoch) == (TRANSITION, "MASTER",
                                                                   5 * S, 5)


def test_reference_fifo_capture_classification() -> None:
    """The reference doc's kb1 capture, classified line by line."""
    lines = [
        ("GROUP", "G1", "BACKUP", 0, TRANSITION),
        ("INSTANCE", "VI_1", "BACKUP", 100, TRANSITION),
        ("INSTANCE", "VI_2", "BACKUP", 100, TRANSITION),
        ("INSTANCE", "VI_3", "BACKUP", 100, TRANSITION),
        ("INSTANCE", "VI_2", "MASTER", 100, TRANSITION),
        ("INSTANCE", "VI_1", "MASTER", 100, TRANSITION),
        ("GROUP", "G1", "MASTER", 0, TRANSITION),
        ("INSTANCE", "VI_3", "MASTER", 100, TRANSITION),
        ("INSTANCE", "VI_3", "MASTER_PRIORITY", 40, NOTICE),
        ("INSTANCE", "VI_3", "BACKUP", 40, TRANSITION),
        ("INSTANCE", "VI_3", "BACKUP_PRIORITY", 100, NOTICE),
        ("INSTANCE", "VI_3", "MASTER", 100, TRANSITION),
        ("INSTANCE", "VI_2", "MASTER_RX_LOWER_PRI", 100, NOTICE),
        ("INSTANCE", "VI_3", "MASTER_RX_LOWER_PRI", 100, NOTICE),
        ("INSTANCE", "VI_1", "FAULT", 100, TRANSITION),
        ("GROUP", "G1", "FAULT", 0, TRANSITION),
        ("INSTANCE", "VI_3", "DELETED", 100, TRANSITION),
        ("GROUP", "G1", "MASTER", 0, TRANSITION),
        ("INSTANCE", "VI_1", "STOP", 100, TRANSITION),
        ("INSTANCE", "VI_2", "STOP", 100, TRANSITION),
        ("GROUP", "G1", "STOP", 0, TRANSITION),
    ]
    t = Tracker()
    got = [t.observe(ev(state, kind=kind, name=name, prio=prio, seq=i + 1, source="fifo")).cls
           for i, (kind, name, state, prio, _) in enumerate(lines)]
    assert got == [row[4] for row in lines]
    final = {k[2]: v.state for k, v in t.states.items()}
    assert final == {"G1": "STOP", "VI_1": "STOP", "VI_2": "STOP", "VI_3": "DELETED"}
    assert t.states[("kb1", "INSTANCE", "VI_3", "")].prio == 100


def _clocked(state: str, *, mono_s: float, seq: int, pid: int = 0,
             boot: str = "b1", source: str = "hook", wall_s: float | None = None) -> Event:
    wall = int((mono_s if wall_s is None else wall_s) * S)
    return Event(id=f"{state}{seq}{pid}", host="h", kind="INSTANCE", name="VI_1", state=state,
                 prio=100, seq=seq, ts_ns=wall, source=source,
                 mono_ns=int(mono_s * S), boot=boot, pid=pid, recv_ns=wall)


def test_late_running_hook_cannot_undo_a_newer_fifo_state() -> None:
    t = Tracker()
    t.observe(_clocked("MASTER", mono_s=1.0, seq=1, source="fifo"))
    t.observe(_clocked("STOP", mono_s=2.0, seq=2, source="fifo"))
    # notify_master was forked at 1.0 s but only ran (and took its sequence) at 2.5 s.
    late = t.observe(_clocked("MASTER", mono_s=1.0, seq=3, pid=500))
    assert late.cls == STALE
    assert t.states[("h", "INSTANCE", "VI_1", "")].state == "STOP"


def test_hooks_forked_in_one_clock_tick_are_ordered_by_pid() -> None:
    t = Tracker()
    t.observe(_clocked("BACKUP", mono_s=1.0, seq=1, pid=100))
    # MASTER (pid 200) and then FAULT (pid 201) forked in the same tick; FAULT ran first.
    t.observe(_clocked("FAULT", mono_s=5.0, seq=2, pid=201))
    assert t.observe(_clocked("MASTER", mono_s=5.0, seq=3, pid=200)).cls == STALE
    assert t.states[("h", "INSTANCE", "VI_1", "")].state == "FAULT"


def test_a_new_boot_is_ordered_by_wall_clock() -> None:
    t = Tracker()
    t.observe(_clocked("MASTER", mono_s=900.0, seq=50, boot="old", wall_s=10_000.0))
    # After a reboot the boot clock restarts near zero: not "older" for that.
    tr = t.observe(_clocked("BACKUP", mono_s=5.0, seq=1, boot="new", wall_s=10_200.0))
    assert tr.cls == TRANSITION
    # A report from the old boot replayed late (a spool) is older by the wall clock.
    late = t.observe(_clocked("MASTER", mono_s=950.0, seq=51, boot="old", wall_s=10_050.0))
    assert late.cls == STALE


def test_a_forged_boot_clock_leap_cannot_pin_a_key() -> None:
    """Issue 9, finding 4 (the same boot's clock): a report whose boot clock ran far
    further ahead than the time that passed applies its state but does not anchor the
    key's order, so the host's next real report is not stale."""
    t = Tracker(skew_ns=300 * S)
    t.observe(_clocked("BACKUP", mono_s=10.0, seq=1, wall_s=1_000.0))
    forged = t.observe(_clocked("MASTER", mono_s=10.0 + 365 * 86400, seq=2, wall_s=1_001.0))
    assert forged.cls == TRANSITION
    real = t.observe(_clocked("FAULT", mono_s=12.0, seq=3, wall_s=1_002.0))
    assert (real.cls, real.prev_state) == (TRANSITION, "MASTER")
    assert t.states[("h", "INSTANCE", "VI_1", "")].state == "FAULT"


def test_a_plausible_boot_clock_step_is_still_believed() -> None:
    t = Tracker(skew_ns=300 * S)
    t.observe(_clocked("BACKUP", mono_s=10.0, seq=1, wall_s=1_000.0))
    t.observe(_clocked("MASTER", mono_s=70.0, seq=2, wall_s=1_060.0))
    # A hook forked before the MASTER report but run late stays stale.
    assert t.observe(_clocked("BACKUP", mono_s=40.0, seq=3, wall_s=1_061.0)).cls == STALE


def test_a_huge_sequence_number_is_not_believed() -> None:
    t = Tracker(skew_ns=300 * S)
    t.observe(ev("BACKUP", seq=5, ts=1 * S))
    t.observe(ev("MASTER", seq=2**62, ts=2 * S))
    assert t.observe(ev("FAULT", seq=6, ts=3 * S)).cls == TRANSITION


def test_a_report_dated_past_the_skew_after_the_last_one_is_never_older() -> None:
    """Whatever pinned a key (a forged clock or sequence on a first report, a counter
    reset), a report dated more than the skew after the key's last applied report
    arrived is newer: a pin lasts at most max_clock_skew."""
    t = Tracker(skew_ns=300 * S)
    t.observe(_clocked("MASTER", mono_s=10**6, seq=2**40, wall_s=1_000.0))
    early = t.observe(_clocked("BACKUP", mono_s=5.0, seq=3, wall_s=1_100.0))
    assert early.cls == STALE  # within the skew the boot clock still decides
    late = t.observe(_clocked("BACKUP", mono_s=6.0, seq=4, wall_s=1_400.0))
    assert (late.cls, late.prev_state) == (TRANSITION, "MASTER")


def test_boot_clocks_within_one_tick_do_not_decide_the_order() -> None:
    t = Tracker()
    # A FIFO line read at 1.005 s, then a hook whose fork time (in 10 ms ticks, rounded
    # down) says 1.000 s: it may well have come after, so the sequence decides.
    t.observe(_clocked("BACKUP", mono_s=1.005, seq=1, source="fifo"))
    tr = t.observe(_clocked("MASTER", mono_s=1.000, seq=2, pid=300))
    assert (tr.cls, tr.prev_state) == (TRANSITION, "BACKUP")
    # More than a tick earlier, though, it is older whatever its sequence.
    assert t.observe(_clocked("FAULT", mono_s=0.985, seq=3, pid=301)).cls == STALE
    assert t.states[("h", "INSTANCE", "VI_1", "")].state == "MASTER"


def test_cluster_and_peer_events_come_from_the_previous_condition_or_none() -> None:
    """NO_MASTER after a split brain ended comes from no condition (OK), not from
    SPLIT_BRAIN_RESOLVED; a resolution comes from its condition."""
    t = Tracker()

    def cluster(state: str, ts: int) -> Transition:
        return t.observe(ev(state, kind="CLUSTER", prio=None, ts=ts * S, host="central",
                            source="cluster", form="cluster"))

    assert cluster("SPLIT_BRAIN", 1).prev_state == "OK"
    resolved = cluster("SPLIT_BRAIN_RESOLVED", 5)
    assert (resolved.prev_state, resolved.duration_s(5 * S)) == ("SPLIT_BRAIN", 4.0)
    assert cluster("NO_MASTER", 9).prev_state == "OK"
    assert cluster("MASTER_BACK", 12).prev_state == "NO_MASTER"
    assert cluster("OK", 20).prev_state == "OK"
    peer = [t.observe(ev(s, kind="PEER", name="lb2", host="lb2", prio=None, ts=i * S,
                         source="cluster", form="peer"))
            for i, s in enumerate(("PEER_SILENT", "PEER_BACK", "PEER_SILENT"), 1)]
    assert [p.prev_state for p in peer] == ["OK", "PEER_SILENT", "OK"]
    # keepalived's own instances keep their real previous state.
    assert t.observe(ev("BACKUP", ts=S)).prev_state == INIT
