"""Every read of the journal the web pages and the HTML report make, in one place.

The journal is opened read-only (``file:...?mode=ro``; SQLite's WAL lets a reader
in while the router writes) and only its tables are used: nothing here imports the
router's code, so the router's stores can change shape inside without touching the
pages, as long as the tables mean the same. The one shared reading is
:mod:`knotify.store.outbox_read` (an event's alert items, messages with their
attempts and escalations), which a history answer uses too. Times are nanoseconds since the epoch.

What the pages need:

- :func:`overview`: clusters (who is MASTER, BACKUP, since when, the last cluster
  condition), hosts (last heard from), actions running or failed lately, alerts
  waiting or failing, silences in force.
- :func:`timeline`: lanes (one per host of a cluster, or one per subject of a host)
  with state bands and marks for actions and alerts, in a time window.
- :func:`incidents` and :func:`incident`: state changes that belong together (a
  failover), and one of them told in full: every event, action and alert attempt.
- :func:`history`: events newest first with the CLI's filters.

The readers live in four modules, re-exported here: :mod:`.journal` (the connection,
filters, events with their runs and alerts, history), :mod:`.summary` (the
overview), :mod:`.lanes` (the timeline) and :mod:`.failovers` (incidents).
"""

from knotify.web.data.failovers import (
    INCIDENT_GAP_NS,
    INCIDENT_MAX_EVENTS,
    Incident,
    incident,
    incidents,
)
from knotify.web.data.journal import (
    EVENT_COLUMNS,
    Filters,
    action_outcome,
    alert_outcome,
    attach,
    connect,
    events_where,
    has_table,
    history,
)
from knotify.web.data.lanes import (
    KEEP_MARKS,
    Band,
    Lane,
    Mark,
    Timeline,
    cluster_names,
    host_names,
    timeline,
)
from knotify.web.data.summary import (
    Cluster,
    Member,
    Overview,
    clusters,
    hosts,
    open_actions,
    open_alerts,
    overview,
    silences,
)

__all__ = [
    "EVENT_COLUMNS", "INCIDENT_GAP_NS", "INCIDENT_MAX_EVENTS", "KEEP_MARKS", "Band",
    "Cluster", "Filters", "Incident", "Lane", "Mark", "Member", "Overview", "Timeline",
    "action_outcome", "alert_outcome", "attach", "cluster_names", "clusters", "connect",
    "events_where", "has_table", "history", "host_names", "hosts", "incident", "incidents",
    "open_actions", "open_alerts", "overview", "silences", "timeline",
]
