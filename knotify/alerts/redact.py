"""Keeping secrets in apprise URLs out of logs, history and error messages.

apprise knows which parts of its URLs are secret: ``url(privacy=True)`` masks
them (``mailto://user:****@host``, ``tgram://1...5/``). What it masks, compared
with the real URL, is the list of secrets; :func:`scrub` removes them from any
text (apprise's own error lines, exception messages) before knotify stores or
logs it. Pure functions, no apprise import: the router uses them too.
"""

from __future__ import annotations

import hashlib
import re
from urllib.parse import parse_qsl, unquote, urlsplit

MASK = "****"
_SPLIT = re.compile(r"[/:@?&=#,;\s+]+")
#: Shorter pieces are words like "yes", ports or "POST": never worth hiding.
_MIN_SECRET = 4
#: Query values at least this long are hidden when their key names a secret (``?:token=``,
#: a header) or apprise does not show them.
_MIN_QUERY_SECRET = 8
_SECRET_KEY = re.compile(r"token|key|secret|pass|auth|sig|cred", re.IGNORECASE)


def short_url(privacy_url: str) -> str:
    """The privacy URL without its query string (apprise shows every default there)."""
    return privacy_url.split("?", 1)[0]


def scheme(url: str) -> str:
    """``mailto://`` from a URL, or ``?://`` when there is none; safe to show."""
    head, sep, _ = url.partition("://")
    if sep and head.replace("+", "").isalnum() and len(head) <= 20:
        return head.lower() + "://"
    return "?://"


def secret_tokens(raw_url: str, privacy_url: str | None = None) -> set[str]:
    """The pieces of ``raw_url`` that must never be shown.

    Everything apprise masks in ``privacy_url``, the password, and long query
    values. With no privacy form (apprise refused the URL, so nobody knows which
    part is the token), every piece after the scheme counts as secret.
    """
    secrets: set[str] = set()
    try:
        parts = urlsplit(raw_url)
        password = parts.password
        query = parse_qsl(parts.query, keep_blank_values=True)
    except ValueError:
        password, query = None, []
    if password:
        secrets.update({password, unquote(password)})
    shown_text = ""
    if privacy_url is not None:
        rest_shown = privacy_url.partition("://")[2]
        shown_text = rest_shown + "\n" + unquote(rest_shown)
    for key, value in query:
        # A long value is secret where it names one (a header such as ?:token=, key=,
        # password=...) or where apprise does not show it; an address (to=, from=) is not.
        if len(value) >= _MIN_QUERY_SECRET and (
                key.startswith(":") or _SECRET_KEY.search(key) or value not in shown_text):
            secrets.add(value)
    rest = raw_url.partition("://")[2] or raw_url
    tokens = {t for t in _SPLIT.split(rest) if len(t) >= _MIN_SECRET}
    tokens |= {unquote(t) for t in tokens}
    if privacy_url is None:
        secrets |= tokens
    else:
        # apprise shows some parts quoted (oncall%40example.net): split both forms.
        shown = set(_SPLIT.split(shown_text))
        shown |= {unquote(t) for t in shown}
        secrets |= {t for t in tokens if t not in shown}
    return {s for s in secrets if len(s) >= _MIN_SECRET or s == password}


def scrub(text: str, secrets: set[str] | frozenset[str]) -> str:
    """``text`` with every secret replaced by ``****`` (longest first)."""
    if not text or not secrets:
        return text
    for secret in sorted(secrets, key=len, reverse=True):
        if secret:
            text = text.replace(secret, MASK)
    return text


def url_id(raw_url: str) -> str:
    """A stable, non-reversible name for one URL: which ones a message already reached."""
    return hashlib.sha256(raw_url.encode()).hexdigest()[:16]
