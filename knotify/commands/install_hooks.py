"""knotify install-hooks: the hook wrappers keepalived runs, for this install and config.

keepalived's ``enable_script_security`` drops a script (with one log line at start-up)
unless the script and every folder above it belong to root and nobody else can write
them. The wrappers in hooks/ name ``/opt/knotify/venv``; this command writes them for
the virtualenv it runs from, with the config path built in (so none of the hook
strings in keepalived.conf needs ``-c FILE``), root-owned, mode 0755, atomically.
"""

from __future__ import annotations

import argparse
import os
import sys

from knotify import __version__, paths
from knotify.commands import fail

# (shlex, tempfile and the path checks are imported when the command runs: every CLI
# command builds the whole parser, and `knotify send` should not pay for them.)

HELP = ("write knotify-notify and knotify-fifo wrappers into DIR for this virtualenv and "
        "config, root-owned and safe under keepalived's enable_script_security")

WRAPPERS = {
    "knotify-notify": ("the notify hook: point notify, notify_master/backup/fault/stop/deleted, "
                       "notify_up/down and quorum_up/down here",
                       "import sys; from knotify.hook import main; sys.exit(main())"),
    "knotify-fifo": ("the FIFO reader for vrrp_notify_fifo_script / notify_fifo_script "
                     "(keepalived appends the FIFO path)",
                     'import sys; from knotify.cli import main; '
                     'sys.exit(main(["fifo", *sys.argv[1:]]))'),
}
SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", help="where keepalived will find them, e.g. /usr/local/sbin "
                        "(created root-owned 0755 if missing)")
    parser.add_argument("--python", default=sys.executable,
                        help="the interpreter of the knotify install (default: this one, "
                        f"{sys.executable})")
    parser.add_argument("--no-config", action="store_true",
                        help="do not build a config path in (the hooks then look for "
                        "one as usual: -c, $KNOTIFY_CONFIG, /etc/knotify/knotify.toml)")


def wrapper(name: str, python: str, config: str | None) -> str:
    """The text of one wrapper (``#!/bin/sh``: Debian's keepalived needs the #!)."""
    import shlex

    what, code = WRAPPERS[name]
    lines = [
        "#!/bin/sh",
        f"# {name}: {what}.",
        f"# Written by `knotify install-hooks` (knotify {__version__}). keepalived passes its",
        "# own environment: PATH is fixed and Python runs isolated (-I), so nothing in it",
        "# changes what runs.",
        f"PATH={SAFE_PATH}",
        "export PATH",
    ]
    if config:
        lines += ["# The config (an explicit -c in keepalived's command string still wins).",
                  f"KNOTIFY_CONFIG={shlex.quote(config)}", "export KNOTIFY_CONFIG"]
    lines.append(f"exec {shlex.quote(python)} -I -c {shlex.quote(code)} \"$@\"")
    return "\n".join(lines) + "\n"


def _write(path: str, text: str) -> None:
    import tempfile

    folder = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(prefix=".knotify-hook-", dir=folder)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        if os.geteuid() == 0:
            os.chown(tmp, 0, 0)
        os.chmod(tmp, 0o755)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def run(args: argparse.Namespace) -> int:
    from knotify.security import insecure_reason

    folder = os.path.abspath(args.dir)
    python = os.path.abspath(args.python)
    if any(c in folder + python for c in "\n\r\0"):
        return fail("paths with newlines cannot be used in a hook", 2)
    if not os.access(python, os.X_OK):
        return fail(f"--python {python}: not an executable", 2)
    config = None
    if not args.no_config:
        found = paths.find_config(args.config)
        if found is None:
            return fail("no config file found (-c FILE, $KNOTIFY_CONFIG or "
                        f"{paths.SYSTEM_CONFIG}); give one, or --no-config", 2)
        config = os.path.abspath(found)
        if any(c in config for c in "\n\r\0"):
            return fail("a config path with newlines cannot be used in a hook", 2)
        if not os.path.isfile(config):
            return fail(f"the config {config} does not exist", 2)
    root = os.geteuid() == 0
    try:
        os.makedirs(folder, mode=0o755, exist_ok=True)
    except OSError as exc:
        return fail(f"cannot create {folder}: {exc.strerror}")
    if root:
        reason = insecure_reason(folder)
        if reason is not None:
            return fail(f"{folder} is not safe for keepalived's script security: {reason} "
                        "(keepalived would refuse every script in it)")
    written = []
    for name in WRAPPERS:
        path = os.path.join(folder, name)
        try:
            _write(path, wrapper(name, python, config))
        except OSError as exc:
            return fail(f"cannot write {path}: {exc.strerror or exc}")
        written.append(path)
        if root and (reason := insecure_reason(path)) is not None:
            return fail(f"{path}: {reason}")
    for path in written:
        print(f"wrote {path}")
    if not root:
        print("warning: not running as root, so the wrappers are not root-owned; keepalived's "
              "enable_script_security refuses them until they (and every folder above) are "
              "root's", file=sys.stderr)
    elif (reason := insecure_reason(python)) is not None:
        print(f"warning: {python}: {reason}. keepalived does not check what a script runs, "
              "but whoever can change the interpreter or its virtualenv runs code as root at "
              "the next event", file=sys.stderr)
    if config:
        print(f"config built in: {config}")
    hook = os.path.join(folder, "knotify-notify")
    fifo = os.path.join(folder, "knotify-fifo")
    print("in keepalived.conf, for example:")
    print(f'    notify "{hook}"')
    print(f'    notify_master "{hook} master VI_1"')
    print(f"    vrrp_notify_fifo_script {fifo}")
    return 0
