"""knotify's words, each defined once: event kinds, state names, event classes, statuses.

A leaf: it imports nothing (the hook loads it through :mod:`knotify.keepalived`, so
it must stay a few constants). Every other module takes these names from here.
"""

# -- event kinds ---------------------------------------------------------------------------

INSTANCE = "INSTANCE"
GROUP = "GROUP"
VS = "VS"
RS = "RS"
VRRP_KINDS = (INSTANCE, GROUP)
LVS_KINDS = (VS, RS)
#: What keepalived reports on.
KINDS = VRRP_KINDS + LVS_KINDS
#: Kinds the router makes itself (the cluster view); never accepted from the wire.
CLUSTER = "CLUSTER"
PEER = "PEER"
SYNTHETIC_KINDS = (CLUSTER, PEER)
#: The kind (and state) of an event made from input that could not be read.
INVALID = "INVALID"

# -- states --------------------------------------------------------------------------------

MASTER = "MASTER"
BACKUP = "BACKUP"
FAULT = "FAULT"
STOP = "STOP"
DELETED = "DELETED"
#: States keepalived passes to scripts (generic ``notify``).
SCRIPT_STATES = (MASTER, BACKUP, FAULT, STOP, DELETED)
RX_LOWER_PRI = "MASTER_RX_LOWER_PRI"
MASTER_PRIORITY = "MASTER_PRIORITY"
BACKUP_PRIORITY = "BACKUP_PRIORITY"
#: States that only appear on the FIFO; they report news about the current state.
FIFO_ONLY_STATES = (RX_LOWER_PRI, MASTER_PRIORITY, BACKUP_PRIORITY)
UNKNOWN_STATE = "{UNKNOWN}"
VRRP_STATES = SCRIPT_STATES + FIFO_ONLY_STATES + (UNKNOWN_STATE,)
UP = "UP"
DOWN = "DOWN"
LVS_STATES = (UP, DOWN)
#: The state a key is in before its first event.
INIT = "INIT"

#: States of knotify's own CLUSTER and PEER events.
SPLIT_BRAIN = "SPLIT_BRAIN"
SPLIT_BRAIN_RESOLVED = "SPLIT_BRAIN_RESOLVED"
NO_MASTER = "NO_MASTER"
MASTER_BACK = "MASTER_BACK"
PEER_SILENT = "PEER_SILENT"
PEER_BACK = "PEER_BACK"
#: A cluster condition ended for a reason other than its own resolution (the cluster
#: is gone, a peer was forgotten).
CLUSTER_OK = "OK"
SYNTHETIC_STATES = (SPLIT_BRAIN, SPLIT_BRAIN_RESOLVED, NO_MASTER, MASTER_BACK, PEER_SILENT,
                    PEER_BACK)
CLUSTER_STATES = SYNTHETIC_STATES + (CLUSTER_OK,)
#: What CLUSTER and PEER events raise; a cluster or peer event's "from" is one of these
#: or :data:`NO_CONDITION`, never a resolution (NO_MASTER does not come from
#: SPLIT_BRAIN_RESOLVED: it comes from no condition).
CONDITIONS = frozenset({SPLIT_BRAIN, NO_MASTER, PEER_SILENT})
NO_CONDITION = CLUSTER_OK
#: States whose end is news to whoever was paged for them (a rule's ``send_resolved``).
INCIDENT_STATES = frozenset({FAULT, DOWN, SPLIT_BRAIN, NO_MASTER, PEER_SILENT})
#: States that end an incident: their event resolves the condition it ended.
ENDING_STATES = frozenset({SPLIT_BRAIN_RESOLVED, MASTER_BACK, PEER_BACK, CLUSTER_OK})

# -- event classes (what an event means for its key's state) -------------------------------

TRANSITION = "transition"
REPEAT = "repeat"
NOTICE = "notice"
STALE = "stale"
INVALID_CLASS = "invalid"
#: A new key past [router] max_keys: journaled, not tracked, fires nothing.
REFUSED = "refused"
#: The classes a rule's ``on`` can name.
RULE_CLASSES = (TRANSITION, REPEAT, NOTICE)

# -- statuses ------------------------------------------------------------------------------

#: An action run: pending -> running -> one of the outcomes below.
PENDING = "pending"
RUNNING = "running"
OK = "ok"
FAILED = "failed"
TIMEOUT = "timeout"
ERROR = "error"
SKIPPED = "skipped"
INTERRUPTED = "interrupted"
SILENCED = "silenced"
RUN_STATUSES = (PENDING, RUNNING, OK, FAILED, TIMEOUT, ERROR, SKIPPED, INTERRUPTED, SILENCED)

#: An alert item (one event for one receiver).
WAITING = "waiting"
COMPOSED = "composed"
SUPPRESSED = "suppressed"
DROPPED = "dropped"
#: Muted by an ``[[alerts.inhibit]]`` rule whose source is on.
INHIBITED = "inhibited"
ITEM_STATUSES = (WAITING, COMPOSED, SILENCED, INHIBITED, SUPPRESSED, DROPPED)
#: An alert message: pending -> sending -> sent | expired | dropped.
SENDING = "sending"
SENT = "sent"
EXPIRED = "expired"
#: A peer router sent it (knotify.peers): this router skipped it.
SENT_BY_PEER = "sent_by_peer"
MESSAGE_STATUSES = (PENDING, SENDING, SENT, EXPIRED, DROPPED, SENT_BY_PEER)
#: A delivery attempt: running -> ok | failed | timeout | interrupted.
ATTEMPT_STATUSES = (RUNNING, OK, FAILED, TIMEOUT, INTERRUPTED)
