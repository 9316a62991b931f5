"""knotify: an ordered, durable event router for keepalived's notify hooks and FIFOs.

Kept empty of imports: ``knotify-notify`` imports this package on keepalived's hot path.
"""

__version__ = "0.1.0"
