"""One module per CLI command: ``HELP``, ``register(parser)`` and ``run(args) -> exit code``."""

from __future__ import annotations

import argparse
import sys

from knotify import client, paths
from knotify import config as configmod
from knotify.errors import ConfigError


def load_config(args: argparse.Namespace) -> configmod.Config:
    """The config the command should use; exits 2 with the reason if it is broken."""
    try:
        return configmod.load(paths.find_config(args.config))
    except ConfigError as exc:
        print(f"knotify: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def fail(message: str, code: int = 1) -> int:
    print(f"knotify: {message}", file=sys.stderr)
    return code


def client_settings(args: argparse.Namespace, strict: bool = True) -> client.Settings:
    """Where the router is, read leniently (as the hook does), with problems on stderr.

    A config file that cannot be read at all (missing: a typo in ``-c``; not a file, not
    UTF-8, not TOML) exits 2 naming it, unless ``strict`` is off (``knotify fifo``, which
    must keep keepalived's lines flowing, spools them with the reason instead): falling
    back to the default router would hide the mistake.
    """
    settings = client.load_settings(paths.find_config(args.config))
    if strict and settings.config_error:
        print(f"knotify: {settings.config_error}", file=sys.stderr)
        raise SystemExit(2)
    for problem in settings.problems:
        print(f"knotify: warning: {problem}", file=sys.stderr)
    return settings
