"""HTML from templates (Jinja2, every value escaped): the server's pages and the report.

The pages and the report share their templates, their CSS and their script, inlined
in every page: the report is one self-contained file, and the pages need no build step
and no static files.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import Any

import jinja2

from knotify import __version__
from knotify.web import views

STATE_CLASSES = ("MASTER", "BACKUP", "FAULT", "STOP", "INIT", "DELETED", "UP", "DOWN",
                 "CHANGING")


def state_class(state: str | None) -> str:
    """A CSS class for a state (unknown states share one colour)."""
    return f"state-{state}" if state in STATE_CLASSES else "state-other"


@cache
def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("knotify.web", "templates"),
        autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True,
        lstrip_blocks=True)
    env.filters.update({
        "t": views.fmt_time, "clock": views.fmt_clock, "state_class": state_class,
        "dur": views.fmt_for,
    })
    env.globals.update({"version": __version__, "fmt_ago": views.fmt_ago,
                        "windows": views.WINDOWS, "fmt_input": views.fmt_input})
    return env


def asset(name: str) -> str:
    loader = environment().loader
    assert loader is not None
    source, _, _ = loader.get_source(environment(), name)
    return source


def render(template: str, *, link: Callable[[str, dict[str, Any]], str], nonce: str = "",
           static: bool = False, **context: Any) -> str:
    """Render ``template``; ``link(page, params)`` makes the URLs between pages."""
    return environment().get_template(template).render(
        link=link, nonce=nonce, static=static, css=asset("style.css"),
        script=asset("app.js"), **context)
