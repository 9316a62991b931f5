"""Plain-text lines for ``knotify history``: what became of each alert of an event."""

from __future__ import annotations

from typing import Any

from knotify.vocab import COMPOSED, OK, PENDING, SENDING, SENT

INDENT = "    "


def _seconds(start: int | None, end: int | None) -> str:
    if not start or not end:
        return ""
    return f" in {(end - start) / 1e9:.2f}s"


def _attempt(att: dict[str, Any]) -> str:
    took = _seconds(att["started_ns"], att["ended_ns"])
    text = f"attempt {att['attempt']}: {att['status']}{took}"
    reached = [u["url"] for u in att.get("urls", []) if u.get("ok")]
    failed = [f"{u['url']}: {u.get('error') or u.get('status')}" for u in att.get("urls", [])
              if not u.get("ok")]
    if reached:
        text += f"; reached {', '.join(reached)}"
    if failed:
        text += f"; failed {'; '.join(failed)}"
    elif att.get("error") and att["status"] != OK:
        text += f" - {att['error']}"
    return text


def _message(msg: dict[str, Any], depth: int) -> list[str]:
    pad = INDENT * (depth + 2)
    lines = [f"{pad}message {msg['id']} to {msg['receiver']}: {msg['status']}, "
             f"{len(msg['events'])} event(s): {msg['title']}"]
    for att in msg.get("attempts", []):
        lines.append(f"{pad}  {_attempt(att)}")
    if msg["status"] not in (SENT, SENDING, PENDING) and msg.get("detail"):
        lines.append(f"{pad}  {msg['detail']}")
    escalation = msg.get("escalation")
    if escalation:
        lines.append(f"{pad}  escalated to {escalation['receiver']}:")
        lines.extend(_message(escalation, depth + 1))
    return lines


def alert_lines(alerts: list[dict[str, Any]]) -> list[str]:
    """Lines under an event: each alert item, its message and every delivery attempt."""
    lines: list[str] = []
    for item in alerts:
        head = f"{INDENT}=> alert {item['receiver']} ({item['alert']}): {item['status']}"
        if item.get("detail") and item["status"] != COMPOSED:
            head += f" - {item['detail']}"
        lines.append(head)
        if item.get("message"):
            lines.extend(_message(item["message"], 0))
    return lines
