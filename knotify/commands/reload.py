"""knotify reload: ask the router to re-read its config (a bad one is refused)."""

from __future__ import annotations

import argparse

from knotify.client import request
from knotify.commands import client_settings, fail
from knotify.errors import RouterRefused, RouterUnavailable

HELP = "make the running router re-read its config (the old one stays if the new is bad)"


def register(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    settings = client_settings(args)
    try:
        answer = request(settings, "reload")
    except (RouterUnavailable, RouterRefused) as exc:
        return fail(str(exc))
    print(answer.get("detail", "reloaded"))
    return 0
