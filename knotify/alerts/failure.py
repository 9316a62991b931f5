"""What failed when a receiver could not be reached, in words a person acts on.

apprise says "A Connection error occurred sending JSON notification to host" for a
name that does not resolve, a port nobody listens on and a TLS handshake that fails
alike; the reason is only in its debug lines (``Socket Exception: ...``). The sender
keeps those lines, and :func:`explain` turns them into ``DNS lookup failed``,
``connection refused``, ``TLS handshake failed``, ``timed out`` or ``HTTP 503``,
followed by apprise's own words and the low-level reason. Pure functions.
"""

from __future__ import annotations

import re

_CAUSES = (
    ("DNS lookup failed", re.compile(
        r"name or service not known|temporary failure in name resolution|"
        r"nodename nor servname|no address associated|nameresolutionerror|"
        r"failed to resolve|getaddrinfo failed|name resolution", re.I)),
    ("connection refused", re.compile(r"connection refused|errno 111\b", re.I)),
    ("TLS handshake failed", re.compile(
        r"\bssl\b|sslerror|ssl:|certificate|tls|wrong_version_number|handshake", re.I)),
    ("timed out", re.compile(r"timed out|timeout", re.I)),
    ("network unreachable", re.compile(
        r"network is unreachable|no route to host|errno 101\b|errno 113\b", re.I)),
    ("connection reset", re.compile(r"connection reset|connection aborted|remotedisconnected|"
                                    r"broken pipe", re.I)),
    ("authentication failed", re.compile(r"authentication (?:failed|unsuccessful)|"
                                         r"\b535\b|smtpauthenticationerror|unauthorized",
                                         re.I)),
)
_HTTP = re.compile(r"(?:error=|http[ /]status[ :]*|status code[ :]*|http error[ :]*)(\d{3})\b",
                   re.I)
_LOW = re.compile(r"(\[Errno -?\d+\] [^\"')(]+|\[SSL: [A-Z_]+\] [^\"')(]+)")


def cause(text: str) -> str:
    """The kind of failure ``text`` (apprise's lines, an exception) describes, or ''."""
    http = _HTTP.search(text)
    if http:  # first: a 504 page saying "timeout" is still an HTTP answer
        return f"HTTP {http.group(1)}"
    for word, pattern in _CAUSES:
        if pattern.search(text):
            return word
    return ""


def low_level(text: str) -> str:
    """The innermost reason, e.g. ``[Errno 111] Connection refused``, or ''."""
    found = _LOW.findall(text)
    return found[-1].strip().rstrip(".") if found else ""


def explain(lines: list[str], details: list[str]) -> str:
    """One line: the cause, apprise's words (``lines``), the low-level reason (``details``).

    ``lines`` are apprise's warnings and errors; ``details`` its debug lines about the
    exception (``Socket Exception: ...``), which are never shown whole: only the reason.
    """
    said = "; ".join(dict.fromkeys(ln.strip() for ln in lines if ln.strip()))
    everything = "\n".join([*lines, *details])
    what = cause(everything)
    reason = low_level("\n".join(details)) or low_level(said)
    parts = [p for p in (said, f"({reason})" if reason and reason not in said else "") if p]
    text = " ".join(parts)
    if what and not text.lower().startswith(what.lower()):
        text = f"{what}: {text}" if text else what
    return text
