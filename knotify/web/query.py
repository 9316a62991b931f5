"""The pages' query strings read, checked and written back (links between pages)."""

from __future__ import annotations

import urllib.parse
from typing import Any


def link(page: str, params: dict[str, Any]) -> str:
    """URLs between the pages (the report makes its own: anchors in one file)."""
    args = {k: v for k, v in params.items() if v not in (None, "", False)}
    if page == "incident":
        path = "/incident/" + urllib.parse.quote(str(args.pop("id", "")), safe="")
    else:
        path = {"overview": "/", "timeline": "/timeline", "history": "/history"}[page]
    return path + ("?" + urllib.parse.urlencode(args) if args else "")


class BadRequest(ValueError):
    pass


def query_int(query: Any, name: str, default: int, lo: int, hi: int) -> int:
    raw = query.get(name)
    if raw in (None, ""):
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"{name} must be a whole number, not {raw[:40]!r}") from None
    if not lo <= value <= hi:
        raise BadRequest(f"{name} must be {lo}..{hi}")
    return value


def query_text(query: Any, name: str, limit: int = 200) -> str:
    value = str(query.get(name, "")).strip()
    if len(value) > limit:
        raise BadRequest(f"{name} is longer than {limit} characters")
    return value
