"""keepalived's argv and notify-FIFO lines turned into event fields.

Pure functions and the standard library only: the hook imports this module on
keepalived's hot path. The formats are those measured on keepalived 2.2.7
(docs/keepalived-input.md has the table). Every rejection raises
:class:`ParseError` whose message says what was wrong and what was expected.
"""

from __future__ import annotations

from knotify.errors import ParseError
from knotify.vocab import (
    BACKUP,
    DELETED,
    DOWN,
    FAULT,
    FIFO_ONLY_STATES,
    GROUP,
    INSTANCE,
    LVS_KINDS,
    LVS_STATES,
    MASTER,
    RS,
    RX_LOWER_PRI,
    SCRIPT_STATES,
    STOP,
    UNKNOWN_STATE,
    UP,
    VRRP_KINDS,
    VRRP_STATES,
    VS,
)

#: The words of the short form written into specific hooks' command strings.
SPECIFIC_VRRP = {
    "master": MASTER,
    "backup": BACKUP,
    "fault": FAULT,
    "stop": STOP,
    "deleted": DELETED,
    "rx-lower-pri": RX_LOWER_PRI,
    "master-rx-lower-pri": RX_LOWER_PRI,
}
SPECIFIC_LVS = {
    "rs-up": (RS, UP),
    "rs-down": (RS, DOWN),
    "vs-up": (VS, UP),
    "vs-down": (VS, DOWN),
    "quorum-up": (VS, UP),
    "quorum-down": (VS, DOWN),
}

MAX_NAME = 512

USAGE = (
    "expected keepalived's generic notify arguments '... INSTANCE|GROUP NAME STATE PRIO', "
    "or a short form: '[instance|group] master|backup|fault|stop|deleted|rx-lower-pri NAME', "
    "'rs-up|rs-down RS VS', 'vs-up|vs-down VS'"
)



def safe_text(text: str) -> str:
    """Text with undecodable bytes (surrogate escapes from argv) shown as ``\\xNN``.

    Everything downstream (journal, logs, templates) then sees valid UTF-8, while
    the raw argv is kept byte-exact in the event's ``argv`` field.
    """
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        pass
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:
        # A lone surrogate that is no escaped byte (JSON "\ud800" from the wire): shown as
        # \uXXXX, so that nothing downstream ever sees text that is not valid Unicode.
        return "".join(f"\\u{ord(c):04x}" if "\ud800" <= c <= "\udfff"
                       and not "\udc80" <= c <= "\udcff" else c for c in text
                       ).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _prio(word: str, what: str) -> int:
    if not word.isascii() or not word.isdigit() or len(word) > 3 or int(word) > 255:
        raise ParseError(f"{what}: priority must be a number 0..255, found {word!r}")
    return int(word)


def _name(word: str, what: str) -> str:
    name = safe_text(word)
    if not name:
        raise ParseError(f"{what}: the name is empty")
    if "\0" in name:  # (only a FIFO line can carry one) no name holds it, no argv can
        raise ParseError(f"{what}: the name holds a NUL character")
    if len(name) > MAX_NAME:
        raise ParseError(f"{what}: the name is longer than {MAX_NAME} characters")
    return name


def _fields(
    kind: str, name: str, state: str, prio: int | None, vs: str = "", form: str = ""
) -> dict[str, object]:
    return {"kind": kind, "name": name, "state": state, "prio": prio, "vs": vs, "form": form}


def parse_argv(words: list[str]) -> dict[str, object]:
    """Event fields from the words keepalived (or the user) gave the hook.

    The generic ``notify`` is recognised from the end (keepalived appends four
    words after the user's own); otherwise the short form is read from the start.
    """
    if len(words) >= 4 and words[-4] in VRRP_KINDS:
        kind, name, state, prio = words[-4:]
        what = f"generic notify ({kind})"
        if state not in SCRIPT_STATES and state != UNKNOWN_STATE:
            raise ParseError(
                f"{what}: unknown state {safe_text(state)!r}, expected one of "
                + ", ".join(SCRIPT_STATES)
            )
        return _fields(kind, _name(name, what), state, _prio(prio, what), form="notify")
    if not words:
        raise ParseError("no arguments: " + USAGE)
    rest = list(words)
    kind = INSTANCE
    if rest[0].lower() in ("instance", "group"):
        kind = rest.pop(0).upper()
        if not rest:
            raise ParseError(f"{kind.lower()}: missing state and name: " + USAGE)
    verb = rest[0].lower()
    if verb in SPECIFIC_VRRP:
        state = SPECIFIC_VRRP[verb]
        what = f"{verb} hook"
        if len(rest) < 2:
            raise ParseError(f"{what}: missing the {kind.lower()} name (e.g. '{verb} VI_1')")
        if len(rest) > 2:
            extra = " ".join(safe_text(w) for w in rest[2:])
            raise ParseError(f"{what}: unexpected words after the name: {extra!r}")
        if kind == GROUP and state in (DELETED, RX_LOWER_PRI):
            raise ParseError(f"{what}: keepalived has no {verb} hook for sync groups")
        return _fields(kind, _name(rest[1], what), state, None, form=verb)
    if verb in SPECIFIC_LVS and len(words) == len(rest):
        lkind, state = SPECIFIC_LVS[verb]
        what = f"{verb} hook"
        if lkind == RS:
            if len(rest) < 3:
                raise ParseError(f"{what}: expected '{verb} RS VS', e.g. "
                                 f"'{verb} [10.0.0.5]:tcp:80 [10.0.0.100]:tcp:80'")
            return _fields(RS, _name(rest[1], what), state, None,
                           vs=_name(" ".join(rest[2:]), what), form=verb)
        if len(rest) < 2:
            raise ParseError(f"{what}: expected '{verb} VS', e.g. '{verb} [10.0.0.100]:tcp:80'")
        return _fields(VS, _name(" ".join(rest[1:]), what), state, None, form=verb)
    raise ParseError(f"unknown form {safe_text(' '.join(words))[:200]!r}: " + USAGE)


def parse_fifo_line(line: str) -> dict[str, object]:
    """Event fields from one line of a keepalived notify FIFO (without the newline)."""
    line = line.rstrip("\r\n")
    head, _, rest = line.partition(" ")
    if head in VRRP_KINDS:
        what = f"FIFO {head} line"
        # The name is written verbatim between quotes, so read the last two words
        # from the end and leave whatever is left (quotes included) as the name.
        parts = rest.rsplit(" ", 2)
        if len(parts) != 3:
            raise ParseError(f"{what}: expected '{head} \"NAME\" STATE PRIO', found {line!r}")
        quoted, state, prio = parts
        if len(quoted) < 2 or quoted[0] != '"' or quoted[-1] != '"':
            raise ParseError(f"{what}: the name must be in double quotes, found {quoted!r}")
        if state not in VRRP_STATES:
            raise ParseError(
                f"{what}: unknown state {state!r}, expected one of " + ", ".join(VRRP_STATES)
            )
        if head == GROUP and state in FIFO_ONLY_STATES:
            raise ParseError(f"{what}: keepalived sends {state} for instances only")
        return _fields(head, _name(quoted[1:-1], what), state, _prio(prio, what), form="fifo")
    if head in LVS_KINDS:
        what = f"FIFO {head} line"
        body, _, state = rest.rpartition(" ")
        if state not in LVS_STATES:
            raise ParseError(f"{what}: expected UP or DOWN at the end, found {line!r}")
        if head == VS:
            if not body:
                raise ParseError(f"{what}: missing the virtual server, found {line!r}")
            return _fields(VS, _name(body, what), state, None, form="fifo")
        rs, _, vs = body.partition(" ")
        if not rs or not vs:
            raise ParseError(f"{what}: expected 'RS <rs> <vs> UP|DOWN', found {line!r}")
        return _fields(RS, _name(rs, what), state, None, vs=_name(vs, what), form="fifo")
    raise ParseError(
        f"unknown FIFO line {line[:200]!r}: expected INSTANCE, GROUP, VS or RS at the start"
    )


def build_manual(kind: str, name: str, state: str, prio: str | None) -> dict[str, object]:
    """Event fields for ``knotify send KIND NAME STATE [PRIO]``, checked like keepalived's."""
    kind = kind.upper()
    state = state.upper()
    if kind in VRRP_KINDS:
        # keepalived sends the FIFO-only states for instances only (and the router refuses
        # them for groups), so a GROUP accepts the script states and {UNKNOWN}.
        states = VRRP_STATES if kind == INSTANCE else SCRIPT_STATES + (UNKNOWN_STATE,)
        if state not in states:
            raise ParseError(
                f"state {state!r} is not a {kind} state; expected one of " + ", ".join(states)
            )
        value = _prio(prio, "send") if prio is not None else (0 if kind == GROUP else None)
        return _fields(kind, _name(name, "send"), state, value, form="send")
    if kind in LVS_KINDS:
        if state not in LVS_STATES:
            raise ParseError(f"state {state!r} is not a {kind} state; expected UP or DOWN")
        if kind == RS:
            rs, _, vs = name.partition(" ")
            if not vs:
                raise ParseError("send RS: give the name as 'RS VS', e.g. "
                                 "'[10.0.0.5]:tcp:80 [10.0.0.100]:tcp:80'")
            return _fields(RS, _name(rs, "send"), state, None, vs=_name(vs, "send"), form="send")
        return _fields(VS, _name(name, "send"), state, None, form="send")
    raise ParseError(f"kind {kind!r} is not one of INSTANCE, GROUP, VS, RS")
