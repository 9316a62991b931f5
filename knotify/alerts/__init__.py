"""Alerts: chat and e-mail through apprise, with grouping, flap control, silences, an outbox.

Pure decisions, each testable alone with plain values: :mod:`.render` (titles and
bodies), :mod:`.grouping`, :mod:`.incident`, :mod:`.flap`, :mod:`.repeat`,
:mod:`.silence`, :mod:`.inhibit`; configuration: :mod:`.receivers`. The engine's
stages, one per module over a shared :mod:`.core` (settings, stores, the injected
clock): :mod:`.enqueue`, :mod:`.admit`, :mod:`.timers`, :mod:`.compose`,
:mod:`.deliver`, :mod:`.attempts`, :mod:`.settle`, :mod:`.escalate`, :mod:`.adopt`,
:mod:`.commit`, :mod:`.control`; :mod:`.engine` joins them inside the router. State
is in the journal (:mod:`knotify.store.outbox`). Delivery: :mod:`.pool` (warm
workers, router side), :mod:`.attempt` (result files), :mod:`.worker` and
:mod:`.sender` (the child processes, the only place apprise is imported). Importing
this package never imports apprise.
"""
