"""``knotify report --html``: the timeline and every incident of a window in one HTML file.

The same templates as the web pages, with the CSS inlined and links turned into
anchors within the file: it opens in any browser, from disk or as a mail attachment,
with no server. Hover details are SVG ``<title>`` elements, shown by the browser itself.
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any

from knotify.web import data, views
from knotify.web.render import render

MAX_INCIDENTS = 50


def build(db: sqlite3.Connection, since_ns: int, until_ns: int, cluster: str | None = None,
          now_ns: int | None = None) -> str:
    now = time.time_ns() if now_ns is None else now_ns
    tl = data.timeline(db, since_ns, until_ns, cluster=cluster, now_ns=now,
                       resolution_ns=views.resolution(since_ns, until_ns))
    found = data.incidents(db, since_ns, until_ns, cluster)[-MAX_INCIDENTS:]
    told: list[tuple[data.Incident, views.Picture]] = []
    anchors: dict[str, str] = {}
    for summary in found:
        inc = data.incident(db, summary.event_id, now)
        if inc is None:
            continue
        pad = max(5 * 10**9, (inc.end_ns - inc.start_ns) // 5)
        start, end = inc.start_ns - pad, inc.end_ns + pad
        pic = views.layout(data.timeline(
            db, start, end, cluster=inc.clusters[0] if inc.clusters else None,
            host=None if inc.clusters else inc.hosts[0], now_ns=now,
            resolution_ns=views.resolution(start, end)))
        told.append((inc, pic))
        for ev in inc.events:
            anchors.setdefault(ev["id"], f"#incident-{inc.event_id}")
        anchors.setdefault(inc.event_id, f"#incident-{inc.event_id}")

    def link(page: str, params: dict[str, Any]) -> str:
        if page == "incident":
            return anchors.get(str(params.get("id")), "#")
        return "#"

    return render("report.html", link=link, static=True, stream="", journal="",
                  now_ns=now, page="report", picture=views.layout(tl), incidents=told)
