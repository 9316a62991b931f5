"""The CLI's side of the router's socket: one JSON request, one JSON answer."""

from __future__ import annotations

import json
from typing import Any

from knotify import hook, zmtp
from knotify.errors import RouterRefused, RouterUnavailable

DEFAULT_TIMEOUT = 5.0



def request(settings: hook.Settings, op: str, timeout: float = DEFAULT_TIMEOUT,
            **fields: Any) -> dict[str, Any]:
    """Send ``op`` to the router; raise RouterUnavailable or RouterRefused with the reason.

    ``settings`` come from :func:`knotify.hook.load_settings`, which reads only where
    the router is: a config with a mistake elsewhere must not lock the CLI out.
    """
    payload = json.dumps({"v": 1, "op": op, **fields}).encode()
    errors = []
    for endpoint in settings.endpoints:
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
