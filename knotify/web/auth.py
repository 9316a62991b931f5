"""Who may see the pages: a token file, a basic-auth file, or only this machine.

With neither, ``knotify web`` binds 127.0.0.1 and answers only requests whose Host
is a loopback name (so a web page elsewhere cannot reach it through DNS rebinding).
With a token or users, every request but ``/healthz`` must carry one:
``Authorization: Bearer TOKEN``, HTTP basic auth, or the cookie ``/login?token=...``
sets for browsers.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import stat
from dataclasses import dataclass, field

from knotify.errors import AuthFileError

COOKIE = "knotify_web"
MIN_TOKEN = 16
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})



def _read_private(path: str) -> str:
    try:
        st = os.stat(path)
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exc:
        raise AuthFileError(f"{path}: {exc.strerror or exc}") from None
    if st.st_mode & (stat.S_IROTH | stat.S_IWOTH):
        raise AuthFileError(f"{path}: readable or writable by anyone (mode "
                            f"{stat.S_IMODE(st.st_mode):04o}); chmod 0600 or 0640 it")
    return text


def load_token(path: str) -> str:
    """The first non-empty, non-comment line of ``path`` (at least 16 characters)."""
    for line in _read_private(path).splitlines():
        token = line.strip()
        if token and not token.startswith("#"):
            if len(token) < MIN_TOKEN:
                raise AuthFileError(f"{path}: the token is shorter than {MIN_TOKEN} "
                                    "characters (try: openssl rand -hex 24)")
            return token
    raise AuthFileError(f"{path}: no token in the file")


def load_users(path: str) -> dict[str, str]:
    """``user:password`` lines (``#`` comments); the password may contain ``:``."""
    users: dict[str, str] = {}
    for number, line in enumerate(_read_private(path).splitlines(), 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        user, sep, password = text.partition(":")
        if not sep or not user or not password:
            raise AuthFileError(f"{path}:{number}: expected user:password")
        users[user] = password
    if not users:
        raise AuthFileError(f"{path}: no user:password line in the file")
    return users


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


@dataclass(slots=True, frozen=True)
class Auth:
    token: str | None = None
    users: dict[str, str] = field(default_factory=dict)

    @property
    def required(self) -> bool:
        return bool(self.token or self.users)

    def cookie_value(self) -> str:
        """What the login cookie holds: a digest of the token, never the token itself."""
        assert self.token is not None
        return hashlib.sha256(b"knotify-web:" + self.token.encode()).hexdigest()

    def allows(self, authorization: str, cookie: str | None) -> bool:
        """Whether a request with these headers may see the pages."""
        if not self.required:
            return True
        scheme, _, value = authorization.strip().partition(" ")
        scheme = scheme.lower()
        value = value.strip()
        if self.token:
            if scheme == "bearer" and _same(value, self.token):
                return True
            if cookie and _same(cookie, self.cookie_value()):
                return True
        if scheme == "basic" and value:
            try:
                user, _, password = base64.b64decode(value, validate=True).decode(
                    "utf-8").partition(":")
            except (ValueError, UnicodeDecodeError):
                return False
            if self.users:
                known = self.users.get(user)
                return known is not None and _same(password, known)
            if self.token:  # any user name, the token as the password
                return _same(password, self.token)
        return False


def loopback_host(host_header: str) -> bool:
    """Whether a Host header names this machine's loopback (with or without a port)."""
    host = host_header.strip().lower()
    if host.startswith("["):
        host = host.split("]", 1)[0] + "]"
    elif host.count(":") == 1:
        host = host.split(":", 1)[0]
    return host in LOOPBACK
