"""Storage: the journal's SQLite file and the stores that keep their rows in it.

:mod:`.db` is the connection (WAL, pragmas, file modes, one transaction at a time
with rollback hooks, damaged-file detection, schema versions). Each store creates
and upgrades its own tables and knows nothing above it (no action kind, no
config, no router): :mod:`.events` (events, keys, state, action runs),
:mod:`.outbox` (the alert outbox), :mod:`.silences`, :mod:`.peers` (the hosts the
cluster view watches).
"""
