"""Alerts: chat and e-mail through apprise, with grouping, flap control, silences, an outbox.

One module per stage, each testable alone with plain values: :mod:`.render`
(titles and bodies), :mod:`.grouping`, :mod:`.flap`, :mod:`.repeat`,
:mod:`.silence`; state in the journal: :mod:`.outbox`; configuration:
:mod:`.receivers`; delivery: :mod:`.attempt` (router side) and :mod:`.sender`
(the child process, the only place apprise is imported); :mod:`.engine` joins
them inside the router. Importing this package never imports apprise.
"""
