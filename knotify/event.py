"""The Event model and its wire form.

One Event flows end to end. keepalived's input becomes event fields in
:mod:`knotify.keepalived`; the hook, the FIFO readers, resync and ``knotify send``
stamp them into a wire dict (:func:`knotify.stamp.stamp`); the router decodes the wire
dict here, strictly: an unknown version, field or value is refused with a message that
names it.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from knotify import keepalived
from knotify.errors import WireError
from knotify.vocab import (
    GROUP,
    INSTANCE,
    INVALID,
    KINDS,
    LVS_STATES,
    RS,
    SCRIPT_STATES,
    UNKNOWN_STATE,
    VRRP_STATES,
    VS,
)
from knotify.wire import WIRE_VERSION, ack

MAX_MESSAGE = 256 * 1024
#: Nesting allowed in a command or an event's ``extra`` (a real one has two or three levels).
MAX_DEPTH = 16

SOURCES = ("hook", "fifo", "send", "spool", "cluster", "agent", "resync")
STATES_BY_KIND = {
    INSTANCE: VRRP_STATES,
    GROUP: SCRIPT_STATES + (UNKNOWN_STATE,),
    VS: LVS_STATES,
    RS: LVS_STATES,
}

Key = tuple[str, str, str, str]



@dataclass(slots=True)
class Event:
    id: str
    host: str
    kind: str
    name: str
    state: str
    prio: int | None = None
    vs: str = ""
    seq: int = 0
    ts_ns: int = 0
    source: str = "send"
    form: str = ""
    argv: list[str] | None = None
    raw: str | None = None
    error: str | None = None
    recv_ns: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    #: When it happened on the sending host's boot clock (CLOCK_BOOTTIME; a hook's fork
    #: time), that boot's id, and a hook's pid: what orders one host's reports.
    mono_ns: int = 0
    boot: str = ""
    pid: int = 0

    @property
    def key(self) -> Key:
        return (self.host, self.kind, self.name, self.vs)

    @property
    def label(self) -> str:
        """How people name the subject: ``VI_1``, ``[10.0.0.5]:tcp:80 in [10.0.0.100]:tcp:80``."""
        return f"{self.name} in {self.vs}" if self.vs else self.name

    def to_wire(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "v": WIRE_VERSION,
            "id": self.id,
            "host": self.host,
            "kind": self.kind,
            "name": self.name,
            "state": self.state,
            "prio": self.prio,
            "vs": self.vs,
            "seq": self.seq,
            "ts_ns": self.ts_ns,
            "source": self.source,
            "form": self.form,
        }
        if self.argv is not None:
            data["argv"] = self.argv
        if self.raw is not None:
            data["raw"] = self.raw
        if self.error is not None:
            data["error"] = self.error
        if self.extra:
            data["extra"] = self.extra
        if self.mono_ns:
            data["mono_ns"] = self.mono_ns
        if self.boot:
            data["boot"] = self.boot
        if self.pid:
            data["pid"] = self.pid
        return data


_FIELDS: dict[str, tuple[type | tuple[type, ...], bool]] = {
    # name: (types, required)
    "v": (int, True),
    "id": (str, True),
    "host": (str, True),
    "kind": (str, True),
    "name": (str, True),
    "state": (str, True),
    "prio": ((int, type(None)), False),
    "vs": (str, False),
    "seq": (int, False),
    "ts_ns": (int, False),
    "source": (str, True),
    "form": (str, False),
    "argv": (list, False),
    "raw": (str, False),
    "error": (str, False),
    "extra": (dict, False),
    "mono_ns": (int, False),
    "boot": (str, False),
    "pid": (int, False),
}


_FIELD_NAMES = frozenset(_FIELDS)
_REQUIRED = frozenset(n for n, (_, required) in _FIELDS.items() if required)
ID_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
"""What an event id is made of (a whole id is 8..64 of them)."""
_ID = re.compile(r"[A-Za-z0-9_-]{8,64}")
#: (field names, value classes) of dicts that passed :func:`_check_shape`: every hook
#: sends the same few shapes, so most events are checked with one lookup.
#: Kept: decode_event 3.6 instead of 6.0 us, ~5% of the router's CPU in bench/intake.py.
_GOOD_SHAPES: set[tuple[tuple[str, ...], tuple[type, ...]]] = set()
_MAX_SHAPES = 256


def _check_shape(data: dict[str, Any]) -> None:
    """Field names, presence and types, or WireError naming the first problem."""
    keys = data.keys()
    if not keys <= _FIELD_NAMES:
        unknown = sorted(keys - _FIELD_NAMES)
        raise WireError(f"event has unknown field(s): {', '.join(map(repr, unknown))}")
    if not keys >= _REQUIRED:
        missing = next(n for n in _FIELDS if n in _REQUIRED and n not in keys)
        raise WireError(f"event is missing the field {missing!r}")
    for name, value in data.items():
        if value.__class__ is bool or not isinstance(value, _FIELDS[name][0]):
            raise WireError(f"event field {name!r} has the wrong type ({type(value).__name__})")


def _short_strings(words: list[Any]) -> bool:
    """Every item is a str of at most 4096 characters."""
    try:
        total = len("".join(words))  # TypeError if one is not a str
    except TypeError:
        return False
    return total <= 4096 or max(map(len, words)) <= 4096


def _safe(text: str, what: str) -> str:
    """``text`` as valid Unicode: argv's undecodable bytes (``\\udcXX``) shown as ``\\xNN``;
    any other lone surrogate (which only a hand-made JSON escape can make) refused."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        pass
    _no_lone_surrogate(text, what)
    return keepalived.safe_text(text)


def _no_lone_surrogate(text: str, what: str) -> None:
    for c in text:
        if "\ud800" <= c <= "\udfff" and not "\udc80" <= c <= "\udcff":
            raise WireError(f"{what} holds a lone surrogate (\\u{ord(c):04x}): not valid Unicode")


def check_text(data: object, what: str = "message", depth: int = 0) -> None:
    """Refuse text that is not valid Unicode anywhere in ``data``, and nesting over 16.

    For commands and an event's ``extra``: what they hold reaches SQLite, the log and
    templates, none of which can take a lone surrogate."""
    if depth > MAX_DEPTH:
        raise WireError(f"{what} is nested more than {MAX_DEPTH} levels deep")
    if isinstance(data, str):
        if not data.isascii():
            try:
                data.encode("utf-8")
            except UnicodeEncodeError:
                raise WireError(f"{what} holds text that is not valid Unicode (a lone "
                                "surrogate)") from None
    elif isinstance(data, dict):
        for key, value in data.items():
            check_text(key, what, depth + 1)
            check_text(value, what, depth + 1)
    elif isinstance(data, list):
        for item in data:
            check_text(item, what, depth + 1)


def decode_event(data: object, recv_ns: int | None = None) -> Event:
    """An Event from a wire dict, or WireError naming the first thing that is wrong.

    The router decodes every event it receives, so the common case is checked first
    in cheap ways; anything unusual goes through the checks that name the problem.
    """
    if data.__class__ is not dict:
        if not isinstance(data, dict):
            raise WireError(f"event must be a JSON object, found {type(data).__name__}")
        data = dict(data)
    assert isinstance(data, dict)
    shape = (tuple(data), tuple(map(type, data.values())))
    if shape not in _GOOD_SHAPES:
        _check_shape(data)
        if len(_GOOD_SHAPES) < _MAX_SHAPES:
            _GOOD_SHAPES.add(shape)
    if data["v"] != WIRE_VERSION:
        raise WireError(f"event version {data['v']!r} is not supported (this router speaks 1)")
    ident = data["id"]
    if _ID.fullmatch(ident) is None:
        raise WireError(f"event id {ident[:80]!r} must be 8..64 letters, digits, '-' or '_'")
    host = _safe(data["host"], "event host")
    if not 1 <= len(host) <= 255 or "\n" in host or "\r" in host or "\0" in host:
        raise WireError("event host must be 1..255 characters without newlines or NUL")
    source = data["source"]
    if source not in SOURCES:
        raise WireError(f"event source {source!r} is not one of {', '.join(SOURCES)}")
    kind = data["kind"]
    state = data["state"]
    name = _safe(data["name"], "event name")
    vs = _safe(data.get("vs", ""), "event vs")
    if "\0" in name or "\0" in vs:
        raise WireError("event name or vs holds a NUL character")
    error = data.get("error")
    if kind == INVALID:
        if state != INVALID:
            raise WireError("an INVALID event must have state INVALID")
    else:
        if kind not in KINDS:
            raise WireError(f"event kind {kind[:40]!r} is not one of {', '.join(KINDS)}")
        if state not in STATES_BY_KIND[kind]:
            raise WireError(f"event state {state[:40]!r} is not a {kind} state")
        if not name:
            raise WireError("event name is empty")
        if (kind == RS) != bool(vs):
            raise WireError("an RS event needs its virtual server in 'vs'; other kinds have none")
    if len(name) > keepalived.MAX_NAME or len(vs) > keepalived.MAX_NAME:
        raise WireError(f"event name or vs is longer than {keepalived.MAX_NAME} characters")
    prio = data.get("prio")
    if prio is not None and not 0 <= prio <= 255:
        raise WireError(f"event prio {prio} is outside 0..255")
    seq = data.get("seq", 0)
    ts_ns = data.get("ts_ns", 0)
    if seq < 0 or ts_ns < 0 or seq >= 2**63 or ts_ns >= 2**63:
        raise WireError("event seq and ts_ns must be in 0..2^63")
    argv = data.get("argv")
    if argv is not None and (len(argv) > 256 or not _short_strings(argv)):
        raise WireError("event argv must be at most 256 strings of at most 4096 characters")
    raw = data.get("raw")
    if raw is not None and len(raw) > 4096:
        raise WireError("event raw line is longer than 4096 characters")
    if error is not None:
        error = _safe(error[:2000], "event error")
    form = _safe(data.get("form", ""), "event form")
    if len(form) > 32:
        raise WireError("event form is longer than 32 characters")
    mono_ns, boot, pid = data.get("mono_ns", 0), data.get("boot", ""), data.get("pid", 0)
    if not 0 <= mono_ns < 2**63 or not 0 <= pid < 2**31 or len(boot) > 64:
        raise WireError("event mono_ns, pid or boot is out of range")
    boot = _safe(boot, "event boot")
    extra = data.get("extra") or {}
    if extra:
        check_text(extra, "event extra", 1)
        detail = extra.get("detail")
        if detail is not None and (not isinstance(detail, str) or "\0" in detail):
            raise WireError("event extra 'detail' must be text without NUL characters")
    return Event(
        ident, host, kind, name, state, prio, vs, seq, ts_ns or time.time_ns(), source, form,
        argv, raw, error, recv_ns if recv_ns is not None else time.time_ns(),
        extra, mono_ns, boot, pid,
    )


def decode_message(payload: bytes, limit: int = MAX_MESSAGE) -> dict[str, Any]:
    """A request dict from one wire frame; WireError if it is too big, not JSON or unversioned."""
    if len(payload) > limit:
        raise WireError(f"message of {len(payload)} bytes is over the {limit}-byte limit")
    try:
        data = loads(payload)
    except (UnicodeDecodeError, ValueError) as exc:
        raise WireError(f"message is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise WireError("message must be a JSON object")
    version = data.get("v")
    if version.__class__ is not int or version != WIRE_VERSION:
        raise WireError(
            f"message version {version!r} is not supported (this router speaks 1)"[:200]
        )
    if not isinstance(data.get("op"), str):
        raise WireError("message has no 'op'")
    return data


def encode(data: dict[str, Any]) -> bytes:
    """Compact JSON.

    orjson is several times faster than :mod:`json`, which the router feels at
    thousands of events a second; it refuses lone surrogates (an argv byte that is not
    UTF-8), which :mod:`json` escapes as ``\\udcXX``.
    """
    try:
        return orjson.dumps(data)
    except TypeError:
        return json.dumps(data, separators=(",", ":"), ensure_ascii=True).encode()


def loads(payload: bytes | str) -> Any:
    """JSON in, fast; :mod:`json` for what orjson refuses (escaped lone surrogates)."""
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        if "depth limit" in str(exc) or "recursion" in str(exc).lower():
            raise ValueError(f"nested too deeply ({exc})") from None
    try:
        return json.loads(payload)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def reply(ok: bool, **fields: Any) -> bytes:
    return encode({"v": WIRE_VERSION, "ok": ok, **fields})


def acked(ident: str) -> bytes:
    """``reply(True, id=ident)`` for an id :func:`decode_event` accepted, without building
    and encoding a dict: one per event (:func:`knotify.wire.ack`, which clients match)."""
    return ack(ident)
