"""knotify check-config: validate a config; exit 0 if valid, else name file, key and reason."""

from __future__ import annotations

import argparse
import os
import sys

from knotify import config as configmod
from knotify import paths, spool
from knotify.cluster.settings import ClusterSettings
from knotify.errors import ConfigError
from knotify.units import format_duration

HELP = "check a config file: exit 0 if valid, else print file, key and reason and exit 1"


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", nargs="?", help="the file to check (default: as -c / search)")
    parser.add_argument("-q", "--quiet", action="store_true", help="print nothing when valid")


def run(args: argparse.Namespace) -> int:
    path = args.file or paths.find_config(args.config)
    try:
        config = configmod.load(path)
    except ConfigError as exc:
        print(f"knotify: {exc}", file=sys.stderr)
        return 1
    if args.quiet:
        return 0
    print(f"OK: {config.path}: {len(config.rules)} rule(s)")
    unread = unread_spool(config.hook.spool_dir)
    if unread:
        print(f"  warning  {unread}")
    print(f"  socket   {config.control_endpoint}" +
          (f" + {', '.join(config.listen)}" if config.listen else ""))
    print(f"  journal  {config.journal}")
    print(f"  spool    {config.hook.spool_dir}")
    for fifo in config.fifos:
        print(f"  fifo     {fifo.path}" + (f" (host {fifo.host})" if fifo.host else ""))
    for receiver in config.receivers.values():
        print(f"  {receiver.describe()}")
    a = config.alerts
    print(f"  alerts   grouped by {', '.join(a.group_by) or 'receiver only'}, group_wait "
          f"{format_duration(a.group_wait)}"
          + (f", lists folded after {a.fold_after}" if a.fold_after else ""))
    for n, inhibition in enumerate(a.inhibit, 1):
        print(f"  inhibit {n}: {inhibition.describe()}")
    c = config.cluster
    if c != ClusterSettings():
        print(f"  cluster  {'on' if c.enabled else 'off'}: split brain after "
              f"{format_duration(c.split_brain_grace)}, no master after "
              f"{format_duration(c.no_master_grace)}, silent after "
              f"{format_duration(c.silent_after)}"
              + "".join(f"; {g.label} = {g.instances.describe()}"
                        + (f" on {g.hosts.describe()}" if g.hosts else "") for g in c.groups))
    peers = config.peers
    if peers is not None:
        print(f"  peers    {peers.name} (beside {peers.host}) with "
              + ", ".join(f"{r.name} at {r.endpoint} (beside {r.host})" for r in peers.routers)
              + f"; each position waits {format_duration(peers.peer_timeout)}, order "
              + ", ".join(peers.order) + " when no VRRP MASTER decides")
    if config.metrics.listen:
        print(f"  metrics  http://{config.metrics.listen}/metrics")
    for rule in config.rules:
        match = rule.match
        parts = [f"{name}={pat.describe()}" for name, pat in (
            ("kind", match.kind), ("name", match.name), ("vs", match.vs), ("host", match.host),
            ("state", match.state), ("from", match.prev), ("source", match.source)) if pat]
        if match.prio_min is not None:
            parts.append(f"prio={match.prio_min}..{match.prio_max}")
        on = ",".join(sorted(rule.on))
        print(f"  rule {rule.id}: on {on} when {' '.join(parts) or 'any event'}"
              + (" (honours silences)" if rule.honor_silences else ""))
        for action in rule.actions:
            print(f"    - {action.describe()}")
    return 0


def unread_spool(spool_dir: str) -> str:
    """A warning if events wait in the default spool while this config reads another:
    where a hook given a config path that does not exist spools them. Else ""."""
    default = os.path.join(paths.state_dir(), "spool")
    if os.path.realpath(default) == os.path.realpath(spool_dir):
        return ""
    count = spool.depth(default)
    if not count:
        return ""
    return (f"{count} event(s) wait in {default}, a spool this config does not read (a hook "
            "given a config path that does not exist spools there): fix that hook's -c, and "
            f"move them to {os.path.join(spool_dir, 'new')} to replay them")
