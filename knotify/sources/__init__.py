"""Input sources inside the router: keepalived's notify FIFOs (with resync) and the spool.

Each source is one supervised loop (:class:`Source`). Whatever a source reads takes one
path in (:class:`Inlet`): decoded, handed to the intake in one batch, and written to the
spool when that fails (the journal is down, or a bug), so that the spool replay
(:mod:`knotify.sources.spooled`) journals it later. Nothing a source read is dropped.
Sockets are not sources: what they read is answered (:mod:`knotify.intake.wire`), and a
sender whose message is refused spools it itself.
"""

from knotify.sources.base import Inlet, Source, decode

__all__ = ["Inlet", "Source", "decode"]
