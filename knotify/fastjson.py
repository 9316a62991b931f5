"""JSON encoding for flat event dicts without importing :mod:`json` (which pulls in ``re``).

The hook runs once per keepalived event, and ``import json`` alone costs a few
milliseconds there; the C helper ``_json.encode_basestring_ascii`` does the
escaping. The output is plain JSON (ASCII, lone surrogates escaped as ``\\udcXX``)
and is read back with the standard :mod:`json` module everywhere else.
"""

from __future__ import annotations

from _json import encode_basestring_ascii as _quote


def dumps(value: object) -> str:
    """Compact JSON for None, bools, ints, floats, strings, lists/tuples and str-keyed dicts."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, str):
        return _quote(value)
    if isinstance(value, int):
        return int.__repr__(value)
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError("NaN and infinity are not JSON")
        return float.__repr__(value)
    if isinstance(value, list | tuple):
        return "[" + ",".join(dumps(v) for v in value) + "]"
    if isinstance(value, dict):
        parts = []
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"JSON object keys must be strings, found {key!r}")
            parts.append(_quote(key) + ":" + dumps(item))
        return "{" + ",".join(parts) + "}"
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")
