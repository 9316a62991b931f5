"""knotify reload: ask the router to re-read its config (a bad one is refused).

The ``reload`` op answers what the router's reload did: ok with a detail, or the reason
the new config was refused (the old one stays in force).
"""

from __future__ import annotations

import argparse
from typing import Any

from knotify.client import request
from knotify.commands import client_settings, fail
from knotify.errors import RouterRefused, RouterUnavailable
from knotify.event import reply
from knotify.ops.base import Answer, Op, OpContext

COMMAND = "reload"
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


# -- the daemon side ----------------------------------------------------------------------

def execute(ctx: OpContext, msg: dict[str, Any]) -> Answer:
    ok, detail = ctx.reload()
    return reply(ok, detail=detail) if ok else reply(False, error=detail)


OPS = (Op("reload", execute),)
