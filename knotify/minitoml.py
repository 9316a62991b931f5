"""Read the hook's few settings from a config file without importing :mod:`tomllib`.

``import tomllib`` costs the hook ~12 ms (it pulls in re, typing, datetime, enum):
on keepalived's hot path that is more than the rest of the hook together. The hook
needs only ``[paths]`` and ``[hook]`` (with ``[hook.curve]``), written as plain
``key = value`` lines. This reader handles exactly that subset and returns None
as soon as anything in those tables could be read differently by a real TOML parser
(multi-line values, inline tables, dotted or quoted keys, dates, duplicate keys, odd
table names); values elsewhere are skipped, multi-line ones included. The caller then
uses :mod:`tomllib`. tests/test_minitoml.py
checks it agrees with tomllib whenever it answers.
"""

from __future__ import annotations

WANTED = ("paths", "hook", "hook.curve")
_BARE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
_ESCAPES = {"b": "\b", "t": "\t", "n": "\n", "f": "\f", "r": "\r", '"': '"', "\\": "\\"}


class _Bail(Exception):
    pass


def _string(text: str, i: int) -> tuple[str, int]:
    """A basic or literal string starting at ``text[i]``; returns (value, index after)."""
    quote = text[i]
    if text.startswith(quote * 3, i):
        raise _Bail
    out: list[str] = []
    i += 1
    while i < len(text):
        ch = text[i]
        if ch == quote:
            return "".join(out), i + 1
        if ch == "\\" and quote == '"':
            i += 1
            if i >= len(text):
                raise _Bail
            esc = text[i]
            if esc in _ESCAPES:
                out.append(_ESCAPES[esc])
            elif esc in "uU":
                width = 4 if esc == "u" else 8
                digits = text[i + 1 : i + 1 + width]
                if len(digits) != width or not all(c in "0123456789abcdefABCDEF" for c in digits):
                    raise _Bail
                code = int(digits, 16)
                if 0xD800 <= code <= 0xDFFF or code > 0x10FFFF:
                    raise _Bail
                out.append(chr(code))
                i += width
            else:
                raise _Bail
        elif (ch < " " and ch != "\t") or ch == "\x7f":
            raise _Bail
        else:
            out.append(ch)
        i += 1
    raise _Bail  # unterminated


def _skip_ws(text: str, i: int) -> int:
    while i < len(text) and text[i] in " \t":
        i += 1
    return i


def _end_of_line(text: str, i: int) -> None:
    i = _skip_ws(text, i)
    if i < len(text) and text[i] != "#":
        raise _Bail


def _scalar(text: str, i: int) -> tuple[object, int]:
    ch = text[i] if i < len(text) else ""
    if ch in "\"'":
        return _string(text, i)
    j = i
    while j < len(text) and text[j] not in " \t,]#":
        j += 1
    word = text[i:j]
    if word in ("true", "false"):
        return word == "true", j
    body = word[1:] if word[:1] in "+-" else word
    if body and all(c in "0123456789_" for c in body) and "__" not in body \
            and body[0] != "_" and body[-1] != "_" and not (len(body) > 1 and body[0] == "0"):
        return int(word.replace("_", "")), j
    parts = body.split(".")
    if (len(parts) == 2 and all(p and p.isascii() and p.isdigit() for p in parts)
            and not (len(parts[0]) > 1 and parts[0][0] == "0")):
        return float(word), j
    raise _Bail  # dates, exponents, inf/nan, hex...: leave them to tomllib


def _value(text: str, i: int) -> object:
    if i < len(text) and text[i] == "[":
        items: list[object] = []
        i = _skip_ws(text, i + 1)
        while True:
            if i >= len(text):
                raise _Bail  # a multi-line array
            if text[i] == "]":
                _end_of_line(text, i + 1)
                return items
            item, i = _scalar(text, i)
            items.append(item)
            i = _skip_ws(text, i)
            if i < len(text) and text[i] == ",":
                i = _skip_ws(text, i + 1)
            elif i >= len(text) or text[i] != "]":
                raise _Bail
    value, i = _scalar(text, i)
    _end_of_line(text, i)
    return value


def _skip_value(text: str, i: int) -> int:
    """Skip a value we do not need (it may span lines); return the start of the next line."""
    depth = 0
    while i < len(text):
        ch = text[i]
        if ch in "\"'":
            quote = ch * 3
            if text.startswith(quote, i):
                i += 3
                while not text.startswith(quote, i):
                    if i >= len(text):
                        raise _Bail
                    i += 2 if text[i] == "\\" and ch == '"' else 1
                i += 3
                while i < len(text) and text[i] == ch:
                    i += 1  # a string may end with up to two more quotes
                continue
            _, i = _string(text, i)
            continue
        if ch == "#":
            while i < len(text) and text[i] != "\n":
                i += 1
            continue
        if ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "\n" and depth <= 0:
            return i + 1
        i += 1
    return i


def read(text: str) -> dict[str, object] | None:
    """The wanted tables as tomllib would give them (``hook.curve`` nested), or None."""
    try:
        return dict(_read(text))
    except _Bail:
        return None


def _read(text: str) -> dict[str, dict[str, object]]:
    tables: dict[str, dict[str, object]] = {}
    current: dict[str, object] | None = None
    at_root = True
    i = 0
    while i < len(text):
        end = text.find("\n", i)
        end = len(text) if end < 0 else end
        line = text[i:end].strip(" \t\r")
        start, i = i, end + 1
        if not line or line[0] == "#":
            continue
        if line[0] == "[":
            array = line.startswith("[[")
            close = line.find("]]" if array else "]")
            if close < 0:
                raise _Bail
            name = line[2 if array else 1 : close].strip(" \t")
            _end_of_line(line, close + (2 if array else 1))
            if not name or any(c not in _BARE and c != "." for c in name):
                raise _Bail  # quoted or odd table names
            at_root = False
            if array:
                if name in WANTED or any(w.startswith(name + ".") for w in WANTED):
                    raise _Bail
                current = None
            elif name not in WANTED:
                current = None
            elif name in tables:
                raise _Bail
            else:
                current = tables[name] = {}
            continue
        key, eq, value = line.partition("=")
        key = key.strip(" \t")
        if not eq or not key or any(c not in _BARE for c in key):
            raise _Bail  # dotted or quoted keys, or not a key/value line
        if current is None:
            if at_root and key in ("paths", "hook"):
                raise _Bail  # a wanted table written as an inline table
            i = _skip_value(text, text.index("=", start) + 1)
            continue
        if key in current:
            raise _Bail
        current[key] = _value(value.strip(" \t\r"), 0)
    if "hook.curve" in tables:
        hook = tables.setdefault("hook", {})
        if "curve" in hook:
            raise _Bail
        hook["curve"] = tables.pop("hook.curve")
    return tables
