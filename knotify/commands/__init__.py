"""One module per CLI command: ``HELP``, ``register(parser)`` and ``run(args) -> exit code``."""

from __future__ import annotations

import argparse
import sys

from knotify import config as configmod
from knotify import hook, paths
from knotify.schema import ConfigError


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


def client_settings(args: argparse.Namespace) -> hook.Settings:
    """Where the router is, read leniently (as the hook does), with problems on stderr."""
    settings = hook.load_settings(paths.find_config(args.config))
    for problem in settings.problems:
        print(f"knotify: warning: {problem}", file=sys.stderr)
    return settings
