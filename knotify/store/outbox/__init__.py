"""The durable outbox: alert items, messages, delivery attempts and per-stream memory.

Everything lives in the journal's SQLite file, so a restart or a crash loses
nothing that was queued:

- ``alert_items``: one per (event, receiver) an alert action produced, with its
  status: ``waiting`` (in its group window), ``composed`` (in a message),
  ``silenced``, ``inhibited`` (an inhibit rule's source is on), ``suppressed``
  (flapping, repeat) or ``dropped``. Unique per
  action run and receiver, so a run repeated after a crash adds nothing.
- ``alert_messages``: what a receiver is sent, oldest first per receiver;
  ``pending`` -> ``sending`` -> ``sent`` | ``expired`` | ``dropped``, with the
  URLs already reached (never sent to again) and the next retry time.
- ``alert_attempts``: every delivery attempt, its per-URL outcomes (privacy
  URLs, scrubbed errors) and its result file while it runs.
- ``alert_streams``: what flap control and repeat suppression remember.

Silences have their own store (:mod:`knotify.store.silences`). This package only
reads and writes rows; deciding is done by the pure stages and the engine.

The package: :mod:`.schema` (the tables, and bringing an older journal's up to
date), :mod:`.rows` (the values read and written), :mod:`.tables` (the
:class:`Outbox`), :mod:`.history` (alerts in a history answer; pruning).
"""

from knotify.store.outbox.history import attach_history, prune
from knotify.store.outbox.rows import AttemptRow, ItemRow, MessageRow, StreamRow
from knotify.store.outbox.tables import Outbox, backoff

__all__ = ["AttemptRow", "ItemRow", "MessageRow", "Outbox", "StreamRow", "attach_history",
           "backoff", "prune"]
