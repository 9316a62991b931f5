"""Pure helpers between the journal's data and the templates: windows, times, SVG geometry.

Nothing here reads the journal or knows HTTP; the server and ``knotify report``
both render through :func:`knotify.web.render.render`.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass, field

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
_STEPS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600,
          43200, 86400, 172800, 604800)


class WindowError(ValueError):
    """A window the user asked for that cannot be used; the text says why."""


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
    if not ns:
        return ""
    when = dt.datetime.fromtimestamp(ns / 1e9).astimezone()
    return when.strftime("%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M")


def fmt_clock(ns: int | None) -> str:
    if not ns:
        return ""
    return dt.datetime.fromtimestamp(ns / 1e9).astimezone().strftime("%H:%M:%S.%f")[:-3]


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


@dataclass(slots=True)
class MarkBox:
    mark: Mark
    x: float
    y: float
    title: str


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
        for band in lane.bands:
            bx, ex = x(band.start_ns), x(band.end_ns)
            change = (f"{band.prev_state or '?'} -> {band.state}" if band.event_id
                      else f"{band.state} (since before the window)")
            prio = f", priority {band.prio}" if band.prio is not None else ""
            till = "now" if band.open and tl.until_ns >= tl.now_ns else fmt_time(band.end_ns)
            title = (f"{lane.label}: {change}{prio}\n{fmt_time(band.start_ns)} .. {till} "
                     f"({fmt_for(band.start_ns, band.end_ns)})")
            box.bands.append(BandBox(band, bx, max(ex - bx, 1.0), title))
        for mark in lane.marks:
            y = {"action": ACTION_Y, "alert": ALERT_Y}.get(mark.what, EVENT_Y)
            title = "\n".join([f"{mark.title}: {mark.outcome} at {fmt_clock(mark.t_ns)}",
                               *mark.lines])
            box.marks.append(MarkBox(mark, x(mark.t_ns), box.y + y, title))
        lanes.append(box)
    height = AXIS_H + max(1, len(lanes)) * LANE_H + 8
    now_x = x(tl.now_ns) if tl.since_ns <= tl.now_ns <= tl.until_ns else None
    return Picture(tl, width, height, x0, x1, _ticks(tl.since_ns, tl.until_ns, x), lanes,
                   now_x)


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
