"""The CLI's side of the router's socket: one JSON request, one JSON answer."""

from __future__ import annotations

import json
from typing import Any

from knotify import hook, zmtp
from knotify.config import Config

DEFAULT_TIMEOUT = 5.0


class RouterUnavailable(RuntimeError):
    pass


class RouterRefused(RuntimeError):
    pass


def settings_for(config: Config) -> hook.Settings:
    """The hook's send settings from a loaded config (one source of truth for both)."""
    settings = hook.Settings()
    settings.endpoints = list(config.client_endpoints)
    settings.ack_timeout = config.hook.ack_timeout
    settings.spool_dir = config.hook.spool_dir
    if config.hook.host:
        settings.host = config.hook.host
    return settings


def request(config: Config, op: str, timeout: float = DEFAULT_TIMEOUT,
            **fields: Any) -> dict[str, Any]:
    """Send ``op`` to the router; raise RouterUnavailable or RouterRefused with the reason."""
    payload = json.dumps({"v": 1, "op": op, **fields}).encode()
    errors = []
    for endpoint in config.client_endpoints:
        try:
            raw = zmtp.request(endpoint, payload, timeout)
        except (OSError, ValueError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            errors.append(f"{endpoint}: {reason}")
            continue
        answer: dict[str, Any] = json.loads(raw)
        if not answer.get("ok"):
            raise RouterRefused(str(answer.get("error", "the router refused the request")))
        return answer
    raise RouterUnavailable(
        "no answer from the router (" + "; ".join(errors) + "). Is `knotify run` running "
        "with the same config?"
    )
