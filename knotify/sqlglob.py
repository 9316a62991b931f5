"""SQL ``GLOB`` clauses for the CLI's and the web pages' filters, in one place.

The patterns are the rules' and ``knotify watch``'s (:class:`knotify.rules.Pattern`):
``*`` and ``?`` wildcards, ``[`` literal, a leading ``!`` negates. Both the journal and
the web pages' read-only queries build their filters here, so they cannot drift apart.
"""

from __future__ import annotations

import string


def glob_clause(column: str, pattern: str, upper: bool = False) -> tuple[str, list[str]]:
    """SQL for a pattern (``upper`` for case-insensitive columns stored upper-case)."""
    negate = pattern.startswith("!")
    text = pattern[1:] if negate else pattern
    if upper:
        text = text.upper()
    return f"{column} {'NOT ' if negate else ''}GLOB ?", [text.replace("[", "[[]")]


def id_clause(event_id: str) -> tuple[str, list[str]]:
    """SQL for an event id or its first characters.

    Ids are case-sensitive ``[A-Za-z0-9_-]``; knotify's own are lower-case hex, so a hex
    id typed in upper case (as some terminals copy it) still finds them.
    """
    escaped = event_id.replace("[", "[[]").replace("*", "[*]").replace("?", "[?]")
    lower = escaped.lower() if all(c in string.hexdigits for c in event_id) else escaped
    return "(id GLOB ? OR id GLOB ?)", [escaped + "*", lower + "*"]
