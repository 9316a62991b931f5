"""Every error a user or another module can meet, in one leaf (it imports nothing).

Each message names what was wrong and, where it can, what to do about it.
"""


# -- input -----------------------------------------------------------------------------------

class ParseError(ValueError):
    """An input keepalived (or a user) gave that is not one of the known forms."""


class WireError(ValueError):
    """A message the router refuses; the text says which field and why."""


class ConfigError(ValueError):
    """A config problem a user can fix: ``FILE: KEY: reason``."""

    def __init__(self, path: str, key: str, reason: str) -> None:
        self.path = path
        self.key = key
        self.reason = reason
        where = f"{path}: {key}" if key else path
        super().__init__(f"{where}: {reason}")


class TemplateError(ValueError):
    """A ``{field}`` template that cannot be used; the text says why."""


class SilenceError(ValueError):
    """A matcher or silence request that cannot be used; the text says why."""


class KeyFileError(ValueError):
    """A key file that cannot be used; the message names the file and the reason."""


class AuthFileError(ValueError):
    """A token or users file that cannot be used; the text names the file and why."""


class WindowError(ValueError):
    """A window the user asked for that cannot be used; the text says why."""


# -- storage ---------------------------------------------------------------------------------

class JournalError(RuntimeError):
    """The journal could not be written (disk full, locked, I/O error)."""


class JournalUnavailable(RuntimeError):
    """The journal cannot be read (not created yet, no permission); the text says why."""


class BadFile(Exception):
    """A spool entry that is not a readable event file; the text says what it is."""


# -- processes and connections ---------------------------------------------------------------

class RouterError(RuntimeError):
    """The router cannot start; the message says why and what to do."""


class RouterUnavailable(RuntimeError):
    """No router answered on the control socket."""


class RouterRefused(RuntimeError):
    """The router answered, and refused the request; the text is its reason."""


class ZmtpError(OSError):
    """The peer is not a ZMTP 3 peer we can talk to, or the connection broke."""


class ResyncError(RuntimeError):
    """keepalived's state dump could not be had; the text says why."""


class PoolError(RuntimeError):
    """No worker could be had (it would not start, or the pool is closed)."""


class AgentBusy(RuntimeError):
    """Another agent already serves this spool."""
