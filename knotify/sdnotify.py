"""systemd's notify protocol (sd_notify(3)): one datagram per message to $NOTIFY_SOCKET.

The router says ``READY=1`` once it serves, ``STOPPING=1`` when it stops, and, when the
unit sets ``WatchdogSec=``, ``WATCHDOG=1`` every half period while every loop of the
router has turned recently (:meth:`knotify.supervisor.Supervisor.stale`). A router
whose event loop is blocked, or one of whose loops is stuck, stops petting, and systemd
kills and restarts it. It is a few lines over AF_UNIX, so no library is needed.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping


def notify(state: str, env: Mapping[str, str] | None = None) -> bool:
    """Send ``state`` (``READY=1``, ``WATCHDOG=1``, ...) to systemd; False if not under it.

    An OSError (the socket went away) is raised for the caller to count.
    """
    env = os.environ if env is None else env
    address = env.get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):  # an abstract socket
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        sock.connect(address)
        sock.sendall(state.encode())
    return True


def watchdog_interval(env: Mapping[str, str] | None = None) -> float | None:
    """How often to pet the watchdog (half of ``WatchdogSec``), or None when it is off."""
    env = os.environ if env is None else env
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and (not pid.isdigit() or int(pid) != os.getpid()):
        return None  # meant for another process (the one that started us)
    return int(usec) / 2e6
