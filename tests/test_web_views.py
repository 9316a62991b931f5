"""The timeline's layout (pure): bands where their times put them, crowds merged, windows."""

from __future__ import annotations

import pytest

from knotify.errors import WindowError
from knotify.web import views
from knotify.web.data import Band, Lane, Mark, Timeline

S = 10**9
T0 = 1_800_000_000 * S


def _timeline(bands: list[Band], marks: list[Mark] | None = None, span_s: int = 3600
              ) -> Timeline:
    lane = Lane(1, "node1", "INSTANCE", "VI_1", "", "node1", bands, marks or [])
    return Timeline("cluster VI_1", T0, T0 + span_s * S, T0 + span_s * S, [lane], "VI_1")


def test_bands_are_placed_by_their_times() -> None:
    bands = [Band("BACKUP", T0, T0 + 600 * S, "a", "INIT", 100),
             Band("MASTER", T0 + 600 * S, T0 + 3600 * S, "b", "BACKUP", 100, open=True)]
    pic = views.layout(_timeline(bands))
    [lane] = pic.lanes
    first, second = lane.bands
    assert first.x == pytest.approx(pic.x0)
    assert second.x == pytest.approx(pic.x0 + (pic.x1 - pic.x0) / 6, abs=0.01)
    assert second.x + second.w == pytest.approx(pic.x1, abs=0.01)
    assert "BACKUP -> MASTER, priority 100" in second.title and "now" in second.title


def test_changes_too_close_to_draw_are_one_changing_stretch() -> None:
    flaps = [Band("MASTER" if i % 2 else "BACKUP", T0 + i * S // 10, T0 + (i + 1) * S // 10,
                  f"e{i}", None, None) for i in range(50)]
    steady = Band("MASTER", T0 + 5 * S, T0 + 3600 * S, "last", "BACKUP", None, open=True)
    pic = views.layout(_timeline([*flaps, steady]))
    boxes = pic.lanes[0].bands
    assert [(b.band.state, b.count) for b in boxes] == [("CHANGING", 50), ("MASTER", 1)]
    assert "50 changes (BACKUP, MASTER)" in boxes[0].title
    # At a scale where they can be told apart, each is its own band.
    fine = views.layout(_timeline([*flaps, steady], span_s=10))
    assert len(fine.lanes[0].bands) == 51


def test_close_marks_of_one_kind_are_one_with_a_count() -> None:
    ev = {"host": "node1", "name": "VI_1", "state": "MASTER"}
    run = {"status": "ok", "started_ns": T0, "ended_ns": T0 + S, "exit_code": 0,
           "detail": None}
    marks = [Mark("action", "ok", T0 + i * S, f"e{i}", "action r#0 exec", f"run-{i}", ev, run)
             for i in range(8)]
    marks.append(Mark("action", "failed", T0 + 2 * S, "x", "action r#1 exec", "run-x", ev,
                      {**run, "status": "failed", "exit_code": 1}))
    boxes = views.layout(_timeline([], marks)).lanes[0].marks
    assert sorted((b.mark.outcome, b.count) for b in boxes) == [("failed", 1), ("ok", 8)]
    ok = next(b for b in boxes if b.mark.outcome == "ok")
    assert "... and 3 more here" in ok.title and ok.title.count("action r#0 exec: ok") == 5


def test_windows() -> None:
    now = T0
    assert views.window(None, None, None, now) == views.Window(now - 3600 * S, now, "1h", True)
    assert views.window("7d", None, None, now).since_ns == now - 7 * 86400 * S
    custom = views.window(None, "1800000000", "1800000060", now)
    assert (custom.since_ns, custom.until_ns, custom.live) == (T0, T0 + 60 * S, False)
    bads: list[tuple[str | None, str | None, str | None]] = [
        ("soon", None, None), ("0s", None, None), ("400d", None, None),
        (None, "yesterday", None), (None, "1800000060", "1800000000")]
    for bad in bads:
        with pytest.raises(WindowError):
            views.window(*bad, now_ns=now)


def test_marks_the_journal_read_left_out_are_counted() -> None:
    ev = {"host": "node1", "name": "VI_1", "state": "MASTER"}
    run = {"status": "ok", "started_ns": T0, "ended_ns": T0, "exit_code": 0, "detail": None}
    first = Mark("action", "ok", T0, "e0", "action r#0 exec", "run-0", ev, run, hidden=995)
    rest = [Mark("action", "ok", T0 + i, f"e{i}", "action r#0 exec", f"run-{i}", ev, run)
            for i in range(1, 5)]
    [box] = views.layout(_timeline([], [first, *rest])).lanes[0].marks
    assert box.count == 1000
    assert box.title.endswith("... and 995 more here")
    assert views.resolution(T0, T0 + 3600 * S) == int(3600 * S / (views.WIDTH - views.LABEL_W
                                                                  - views.RIGHT) * 1.5)
