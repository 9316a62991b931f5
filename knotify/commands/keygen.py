"""knotify keygen: make a CURVE key pair for the router or for a sending host."""

from __future__ import annotations

import argparse
import os

from knotify import transport
from knotify.commands import fail
from knotify.errors import KeyFileError

HELP = "make a CURVE key pair (NAME.key public, NAME.key_secret 0600) for TCP between hosts"


def default_dir() -> str:
    if os.geteuid() == 0:
        return "/etc/knotify/keys"
    return os.path.join(os.path.expanduser("~"), ".config", "knotify", "keys")


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="key name, e.g. 'router' or this host's name")
    parser.add_argument("--dir", default=None,
                        help="where to write the files (default /etc/knotify/keys as root)")


def run(args: argparse.Namespace) -> int:
    directory = args.dir or default_dir()
    try:
        public, secret = transport.make_keys(directory, args.name)
    except KeyFileError as exc:
        return fail(str(exc))
    print(f"public key: {public}")
    print(f"secret key: {secret} (mode 0600: keep it on this host only)")
    print("router: [router.curve] secret_key = the router's .key_secret, clients = a folder "
          "holding each sending host's .key")
    print("host:   [hook.curve] secret_key = this host's .key_secret, server_key = the "
          "router's .key")
    return 0
