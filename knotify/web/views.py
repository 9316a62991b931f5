"""Pure helpers between the journal's data and the templates: windows, times, SVG geometry.

Nothing here reads the journal or knows HTTP; the server and ``knotify report``
both render through :func:`knotify.web.render.render`.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from knotify.errors import WindowError
from knotify.units import format_duration, parse_duration
from knotify.web.data import Band, Lane, Mark, Timeline

#: The windows offered next to "custom".
WINDOWS = ("1h", "24h", "7d")
MAX_WINDOW_S = 366 * 86400.0

# SVG geometry (user units = CSS pixels at 100%).
WIDTH = 1200
LABEL_W = 170
RIGHT = 16
AXIS_H = 28
LANE_H = 46
BAND_Y = 13
BAND_H = 18
ACTION_Y = 6
ALERT_Y = 39
EVENT_Y = 22
#: Bands narrower than this are merged into a "changing" stretch; marks closer than
#: MARK_PX are drawn as one, whose detail lists the first MARK_LINES.
MIN_BAND_PX = 0.25
MARK_PX = 3.0
MARK_LINES = 5
_STEPS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600,
          43200, 86400, 172800, 604800)



@dataclass(slots=True, frozen=True)
class Window:
    since_ns: int
    until_ns: int
    #: "1h", "24h", "7d" or "custom".
    name: str
    #: Ends now (so the picture keeps moving with live updates).
    live: bool


def parse_time(text: str) -> int:
    """``2026-12-03T08:00[:SS]`` (local time, as the pages show it) or epoch seconds."""
    text = text.strip()
    try:
        return int(float(text) * 1e9)
    except ValueError:
        pass
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise WindowError(f"not a time: {text!r} (expected 2026-12-03T08:00 or epoch "
                          "seconds)") from None
    if when.tzinfo is None:
        when = when.astimezone()
    return int(when.timestamp() * 1e9)


def window(name: str | None, since: str | None, until: str | None,
           now_ns: int | None = None) -> Window:
    """The time window a page shows: a named one ending now, or since/until."""
    now = time.time_ns() if now_ns is None else now_ns
    if since:
        start = parse_time(since)
        end = parse_time(until) if until else now
        if end <= start:
            raise WindowError("the window's end must come after its start")
        if (end - start) / 1e9 > MAX_WINDOW_S:
            raise WindowError("a window is at most 366 days")
        return Window(start, end, "custom", not until)
    label = name or "1h"
    try:
        seconds = parse_duration(label)
    except ValueError as exc:
        raise WindowError(f"window: {exc}") from None
    if not 1 <= seconds <= MAX_WINDOW_S:
        raise WindowError("a window is 1s .. 366d")
    return Window(now - int(seconds * 1e9), now, label, True)


def fmt_time(ns: int | None, seconds: bool = True) -> str:
    """Local time, as the CLI shows it."""
    if not ns:
        return ""
    return time.strftime("%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M",
                         time.localtime(ns // 10**9))


def fmt_clock(ns: int | None) -> str:
    if not ns:
        return ""
    return f"{time.strftime('%H:%M:%S', time.localtime(ns // 10**9))}.{ns // 10**6 % 1000:03d}"


def fmt_input(ns: int) -> str:
    """For ``<input type=datetime-local>``."""
    return dt.datetime.fromtimestamp(ns / 1e9).astimezone().strftime("%Y-%m-%dT%H:%M:%S")


def fmt_ago(ns: int | None, now_ns: int) -> str:
    if not ns:
        return "never"
    return format_duration(max(0, now_ns - ns) / 1e9) + " ago"


def fmt_for(start_ns: int | None, end_ns: int | None) -> str:
    if not start_ns or not end_ns:
        return ""
    return format_duration(max(0, end_ns - start_ns) / 1e9)


# -- the timeline picture ----------------------------------------------------------------------


@dataclass(slots=True)
class Tick:
    x: float
    label: str


@dataclass(slots=True)
class BandBox:
    band: Band
    x: float
    w: float
    title: str
    #: Changes drawn as this one box: more than 1 where they were too close to tell apart
    #: at this scale (the box is then a "changing" stretch; zoom in to see each).
    count: int = 1


@dataclass(slots=True)
class MarkBox:
    mark: Mark
    x: float
    y: float
    title: str
    #: Marks of the same kind and outcome drawn as this one (closer than a few pixels).
    count: int = 1


@dataclass(slots=True)
class LaneBox:
    lane: Lane
    y: float
    bands: list[BandBox] = field(default_factory=list)
    marks: list[MarkBox] = field(default_factory=list)


@dataclass(slots=True)
class Picture:
    """A :class:`~knotify.web.data.Timeline` laid out for SVG."""

    timeline: Timeline
    width: int
    height: int
    x0: float
    x1: float
    ticks: list[Tick]
    lanes: list[LaneBox]
    now_x: float | None


def layout(tl: Timeline, width: int = WIDTH) -> Picture:
    x0, x1 = float(LABEL_W), float(width - RIGHT)
    span = max(1, tl.until_ns - tl.since_ns)

    def x(t: int) -> float:
        return round(x0 + (min(max(t, tl.since_ns), tl.until_ns) - tl.since_ns) / span
                     * (x1 - x0), 2)

    lanes: list[LaneBox] = []
    for i, lane in enumerate(tl.lanes):
        box = LaneBox(lane, AXIS_H + i * LANE_H)
        box.bands = _merge_bands(tl, lane, [(band, x(band.start_ns), x(band.end_ns))
                                            for band in lane.bands])
        box.marks = _merge_marks([(mark, x(mark.t_ns)) for mark in lane.marks], box.y)
        lanes.append(box)
    height = AXIS_H + max(1, len(lanes)) * LANE_H + 8
    now_x = x(tl.now_ns) if tl.since_ns <= tl.now_ns <= tl.until_ns else None
    ticks = [t for t in _ticks(tl.since_ns, tl.until_ns, x) if t.x <= width - 24]
    return Picture(tl, width, height, x0, x1, ticks, lanes, now_x)


def _band_title(tl: Timeline, lane: Lane, band: Band) -> str:
    change = (f"{band.prev_state or '?'} -> {band.state}" if band.event_id
              else f"{band.state} (since before the window)")
    prio = f", priority {band.prio}" if band.prio is not None else ""
    till = "now" if band.open and tl.until_ns >= tl.now_ns else fmt_time(band.end_ns)
    return (f"{lane.label}: {change}{prio}\n{fmt_time(band.start_ns)} .. {till} "
            f"({fmt_for(band.start_ns, band.end_ns)})")


def _merge_bands(tl: Timeline, lane: Lane, bands: list[tuple[Band, float, float]]
                 ) -> list[BandBox]:
    """Runs of bands narrower than :data:`MIN_BAND_PX` become one "changing" box.

    Titles are made only for the boxes drawn (a 24 h window can hold thousands of
    changes that fit in a few pixels)."""
    out: list[BandBox] = []
    run: list[tuple[Band, float, float]] = []

    def close() -> None:
        if len(run) == 1:
            band, bx, ex = run[0]
            out.append(BandBox(band, bx, ex - bx, _band_title(tl, lane, band)))
        elif run:
            first, last = run[0][0], run[-1][0]
            states = sorted({b.state for b, _, _ in run})
            band = Band("CHANGING", first.start_ns, last.end_ns, first.event_id,
                        first.prev_state, None, last.open)
            title = (f"{lane.label}: {len(run)} changes ({', '.join(states)}) between "
                     f"{fmt_clock(band.start_ns)} and {fmt_clock(band.end_ns)}, too close to "
                     "draw apart at this scale: choose a shorter window")
            out.append(BandBox(band, run[0][1], run[-1][2] - run[0][1], title, len(run)))
        run.clear()

    for item in bands:
        if item[2] - item[1] < MIN_BAND_PX:
            run.append(item)
            continue
        close()
        run.append(item)
        close()
    close()
    for box in out:
        box.w = max(box.w, 1.0)
    return out


def _mark_title(mark: Mark) -> str:
    return "\n".join([f"{mark.title}: {mark.outcome} at {fmt_clock(mark.t_ns)}",
                      *mark.lines])


def _merge_marks(marks: list[tuple[Mark, float]], lane_y: float) -> list[MarkBox]:
    """Marks of one kind and outcome closer than :data:`MARK_PX` are drawn as one."""
    groups: list[list[tuple[Mark, float]]] = []
    last: dict[tuple[str, str], list[tuple[Mark, float]]] = {}
    for mark, mx in marks:
        key = (mark.what, mark.outcome)
        group = last.get(key)
        if group is not None and mx - group[0][1] < MARK_PX:
            group.append((mark, mx))
            continue
        group = last[key] = [(mark, mx)]
        groups.append(group)
    out: list[MarkBox] = []
    for group in groups:
        mark, mx = group[0]
        count = sum(1 + m.hidden for m, _ in group)
        title = "\n\n".join(_mark_title(m) for m, _ in group[:MARK_LINES])
        if count > MARK_LINES:
            title += f"\n\n... and {count - min(len(group), MARK_LINES)} more here"
        y = lane_y + {"action": ACTION_Y, "alert": ALERT_Y}.get(mark.what, EVENT_Y)
        out.append(MarkBox(mark, mx, y, title, count))
    return out


def resolution(since_ns: int, until_ns: int, width: int = WIDTH) -> int:
    """The stretch of time within which marks are drawn as one (see data.timeline)."""
    return max(1, int((until_ns - since_ns) / (width - LABEL_W - RIGHT) * MARK_PX / 2))


def _ticks(since_ns: int, until_ns: int, x: Callable[[int], float]) -> list[Tick]:
    span_s = (until_ns - since_ns) / 1e9
    step = next((s for s in _STEPS if span_s / s <= 8), _STEPS[-1])
    local = dt.datetime.fromtimestamp(since_ns / 1e9).astimezone()
    delta = local.utcoffset()
    offset = int(delta.total_seconds()) if delta is not None else 0
    first = ((since_ns // 10**9 + offset) // step + 1) * step - offset
    fmt = "%H:%M:%S" if step < 60 else "%H:%M" if step < 86400 else "%m-%d"
    if span_s > 86400 and step < 86400:
        fmt = "%m-%d %H:%M"
    out: list[Tick] = []
    t = first
    while t * 10**9 <= until_ns and len(out) < 40:
        out.append(Tick(x(t * 10**9), dt.datetime.fromtimestamp(t).astimezone().strftime(fmt)))
        t += step
    return out
