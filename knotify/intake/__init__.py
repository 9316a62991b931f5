"""The intake: the one way in for events, whatever brought them.

decode (:mod:`~knotify.intake.wire`, for messages read from a socket) → journal →
classify → dispatch (:mod:`~knotify.intake.ingest`), within the bounds of
:mod:`~knotify.intake.keys`. Input sources (:mod:`knotify.sources`) hand their events to
:meth:`Intake.ingest` too.
"""

from knotify.intake.ingest import Intake, describe
from knotify.intake.settings import IntakeSettings
from knotify.intake.wire import WireIntake

__all__ = ["Intake", "IntakeSettings", "WireIntake", "describe"]
