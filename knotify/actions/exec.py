"""``exec`` and ``service`` actions: run a program, never through a shell.

Each argument is a template rendered on its own, so an event field lands inside
one argv element whatever characters it holds. The program runs in its own
session (process group); at its timeout the whole group gets SIGTERM, then
SIGKILL after ``kill_grace``, and so does every process it started that left the
group (:func:`descendants`). Exit code and the last 4 KiB of output are kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import os
import pwd
import shutil
import signal
import subprocess
from typing import TYPE_CHECKING, Any

from knotify.actions.base import Action, ActionContext, ActionSettings
from knotify.actions.registry import register
from knotify.errors import TemplateError
from knotify.outcome import Outcome
from knotify.security import must_be_root_only
from knotify.templates import Template
from knotify.vocab import ERROR, FAILED, OK, TIMEOUT

if TYPE_CHECKING:
    from knotify.schema import Table

SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
OUTPUT_TAIL = 4096
_ENV_SKIP = {"from", "subject", "time", "when", "duration"}


def action_env(ctx: ActionContext, extra: dict[str, str] | None = None) -> dict[str, str]:
    """A clean environment: a fixed PATH, the locale, and the event as KNOTIFY_* variables."""
    env = {"PATH": SAFE_PATH, "LANG": os.environ.get("LANG", "C.UTF-8")}
    for name in ("TZ", "LC_ALL"):
        if name in os.environ:
            env[name] = os.environ[name]
    for name, value in ctx.fields.items():
        if name not in _ENV_SKIP:
            env["KNOTIFY_" + name.upper()] = value
    if extra:
        env.update(extra)
    return env


def resolve_program(program: str) -> str | None:
    """An absolute path as is; a bare name through the fixed PATH (None if not found)."""
    if os.path.isabs(program):
        return program
    if "/" in program:
        return None
    return shutil.which(program, path=SAFE_PATH)


#: In the environment of every process an action starts (and, unless it clears its
#: environment, of everything those start): how its timeout finds them all.
TOKEN_VAR = "KNOTIFY_ACTION_TOKEN"
#: Rounds of "find and kill" at a timeout, for processes forking while they are killed.
KILL_ROUNDS = 10


def _kill_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def descendants(root: int, token: str) -> dict[int, int]:
    """Processes an action started, as {pid: process group}: ``root``'s descendants by
    parent links (a ``setsid`` child whose parent still runs), and every process with
    ``token`` in its environment (one whose parent is gone: a double fork, a daemon).

    Read from /proc, without cgroups. What it cannot find: a process that both left the
    tree (its parent exited) and cleared or replaced its environment (``env -i``, sudo's
    env_reset), and what another service manager started on the action's behalf.
    """
    marker = f"{TOKEN_VAR}={token}".encode() + b"\0"
    parent: dict[int, int] = {}
    group: dict[int, int] = {}
    marked: set[int] = set()
    me = os.getpid()
    try:
        entries = os.listdir("/proc")
    except OSError:
        return {}
    for name in entries:
        if not name.isdigit():
            continue
        pid = int(name)
        if pid in (me, 1):
            continue
        try:
            with open(f"/proc/{pid}/stat", "rb") as fh:
                fields = fh.read().rsplit(b")", 1)[1].split()
            if fields[0] == b"Z":
                continue  # already dead
            parent[pid], group[pid] = int(fields[1]), int(fields[2])
            with open(f"/proc/{pid}/environ", "rb") as fh:
                if marker in b"\0" + fh.read():
                    marked.add(pid)
        except (OSError, IndexError, ValueError):
            continue
    children: dict[int, list[int]] = {}
    for pid, ppid in parent.items():
        children.setdefault(ppid, []).append(pid)
    found = set(marked)
    todo = [root, *marked]
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in found:
                found.add(child)
                todo.append(child)
    found.discard(me)
    return {pid: group[pid] for pid in found if pid in group}


def _kill_tree(root: int, token: str, sig: int, seen: set[int]) -> None:
    """Send ``sig`` to the group ``root`` leads and to every process the action started;
    pids outside that group are added to ``seen``."""
    _kill_group(root, sig)
    for _ in range(KILL_ROUNDS if sig == signal.SIGKILL else 1):
        found = descendants(root, token)
        if not found:
            return
        for pid, pgid in found.items():
            if pgid != root:
                seen.add(pid)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)


class _Protocol(asyncio.subprocess.SubprocessStreamProtocol):
    """Knows when the program exits, not only when every process it left behind has
    closed its output (which is when ``Process.wait()`` returns)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(limit=2**16, loop=loop)
        self.exited: asyncio.Future[None] = loop.create_future()

    def process_exited(self) -> None:
        super().process_exited()
        if not self.exited.done():
            self.exited.set_result(None)


async def run_process(
    argv: list[str],
    env: dict[str, str],
    timeout: float,
    kill_grace: float,
    cwd: str = "/",
    user: str | None = None,
    group: str | None = None,
) -> Outcome:
    """Run ``argv`` to completion or to its timeout; the outcome carries code and output tail."""
    kwargs: dict[str, Any] = {}
    if user is not None:
        kwargs["user"] = user
        kwargs["extra_groups"] = []
    if group is not None:
        kwargs["group"] = group
    token = os.urandom(16).hex()
    loop = asyncio.get_running_loop()
    try:
        transport, protocol = await loop.subprocess_exec(
            lambda: _Protocol(loop),
            *argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env={**env, TOKEN_VAR: token},
            cwd=cwd,
            start_new_session=True,
            **kwargs,
        )
    except (OSError, ValueError, subprocess.SubprocessError) as exc:
        return Outcome(ERROR, detail=f"could not start {argv[0]}: {exc}")
    proc = asyncio.subprocess.Process(transport, protocol, loop)
    tail = bytearray()
    assert proc.stdout is not None
    stdout = proc.stdout

    async def pump() -> None:
        while chunk := await stdout.read(65536):
            tail.extend(chunk)
            del tail[:-OUTPUT_TAIL]

    reader = asyncio.create_task(pump())
    status = OK
    detail = ""
    escaped: set[int] = set()
    try:
        await asyncio.wait_for(asyncio.shield(protocol.exited), timeout)
    except TimeoutError:
        status = TIMEOUT
        detail = f"timed out after {timeout:g}s; process group {proc.pid} killed"
        _kill_tree(proc.pid, token, signal.SIGTERM, escaped)
        try:
            await asyncio.wait_for(asyncio.shield(protocol.exited), kill_grace)
        except TimeoutError:
            detail += " (SIGKILL: it ignored SIGTERM)"
        # Whatever is left (children that ignored SIGTERM, in the group or not) goes now.
        _kill_tree(proc.pid, token, signal.SIGKILL, escaped)
        await protocol.exited
        if escaped:
            detail += f"; {len(escaped)} more process(es) it started outside its group too"
    except asyncio.CancelledError:
        _kill_tree(proc.pid, token, signal.SIGKILL, escaped)
        reader.cancel()
        raise
    try:
        # Children that outlive the program may hold the pipe open: do not wait on them.
        await asyncio.wait_for(asyncio.shield(reader), 1.0)
    except TimeoutError:
        reader.cancel()
    transport.close()  # our end of the pipe; the program is reaped already
    code = proc.returncode
    if status == OK and code != 0:
        status = FAILED
        detail = (f"killed by signal {-code}" if code is not None and code < 0
                  else f"exit code {code}")
    return Outcome(status, exit_code=code, output=tail.decode("utf-8", "replace"), detail=detail)


def _template(table: Table, key: str, text: str) -> Template:
    try:
        return Template(text)
    except TemplateError as exc:
        raise table.error(key, str(exc)) from None


def _run_as(table: Table) -> tuple[str | None, str | None]:
    user = table.opt_text("user")
    group = table.opt_text("group")
    if user is not None:
        try:
            entry = pwd.getpwnam(user)
        except KeyError:
            raise table.error("user", f"no such user {user!r}") from None
        if group is None:
            # Like su/runuser: the user's own primary group, never root's by accident.
            group = grp.getgrgid(entry.pw_gid).gr_name
    if group is not None:
        try:
            grp.getgrnam(group)
        except KeyError:
            raise table.error("group", f"no such group {group!r}") from None
    return user, group


@register
class ExecAction(Action):
    kind = "exec"

    def __init__(self, argv: list[Template], env: dict[str, Template], timeout: float,
                 kill_grace: float, cwd: str, user: str | None, group: str | None) -> None:
        self.argv = argv
        self.env = env
        self.timeout = timeout
        self.kill_grace = kill_grace
        self.cwd = cwd
        self.user = user
        self.group = group

    @classmethod
    def from_config(cls, table: Table, settings: ActionSettings) -> ExecAction:
        words = table.strings("argv")
        if not words:
            raise table.error("argv", "must name at least the program to run")
        if "{" in words[0]:
            raise table.error("argv", "the program (argv[0]) cannot contain a template")
        program = resolve_program(words[0])
        if program is None:
            raise table.error("argv", f"program {words[0]!r} not found (bare names are looked "
                              f"up in {SAFE_PATH}; relative paths are refused)")
        literal = program.replace("{", "{{").replace("}", "}}")  # a path, never a template
        argv = [Template(literal)] + [
            _template(table, f"argv[{i}]", w) for i, w in enumerate(words[1:], 1)
        ]
        env_table = table.table("env")
        env = {}
        for name in list(env_table.data):
            env[name] = _template(env_table, name, env_table.text(name))
        env_table.done()
        timeout = table.duration("timeout", settings.defaults.exec_timeout)
        kill_grace = table.duration("kill_grace", "2s")
        cwd = table.text("cwd", "/")
        user, group = _run_as(table)
        if user is None or pwd.getpwnam(user).pw_uid == 0:
            refusal = must_be_root_only(program)
            if refusal:
                raise table.error("argv", refusal)
        return cls(argv, env, timeout, kill_grace, cwd, user, group)

    async def run(self, ctx: ActionContext) -> Outcome:
        argv = [t.render(ctx.fields) for t in self.argv]
        env = action_env(ctx, {k: t.render(ctx.fields) for k, t in self.env.items()})
        ctx.log.info("exec.start", argv=argv, timeout=self.timeout)
        return await run_process(argv, env, self.timeout, self.kill_grace, self.cwd,
                                 self.user, self.group)

    def describe(self) -> str:
        words = [self.argv[0].render({}), *(t.text for t in self.argv[1:])]
        return "exec " + " ".join(words) + f" (timeout {self.timeout:g}s)"


SERVICE_COMMANDS = ("restart", "start", "stop", "reload", "try-restart", "reload-or-restart")


@register
class ServiceAction(Action):
    """``systemctl COMMAND -- UNIT``: the common case of exec, written short."""

    kind = "service"

    def __init__(self, command: str, unit: Template, systemctl: str, timeout: float,
                 kill_grace: float) -> None:
        self.command = command
        self.unit = unit
        self.systemctl = systemctl
        self.timeout = timeout
        self.kill_grace = kill_grace

    @classmethod
    def from_config(cls, table: Table, settings: ActionSettings) -> ServiceAction:
        command = table.text("command", "restart", choices=SERVICE_COMMANDS)
        unit = _template(table, "unit", table.text("unit"))
        if not unit.text.strip():
            raise table.error("unit", "is empty")
        systemctl = table.text("systemctl", settings.defaults.systemctl)
        if not os.path.isabs(systemctl) and "/" in systemctl:
            raise table.error("systemctl", "must be an absolute path or a bare name")
        resolved = resolve_program(systemctl)
        refusal = must_be_root_only(resolved) if resolved else None
        if refusal:
            raise table.error("systemctl", refusal)
        timeout = table.duration("timeout", settings.defaults.service_timeout)
        kill_grace = table.duration("kill_grace", "2s")
        return cls(command, unit, systemctl, timeout, kill_grace)

    async def run(self, ctx: ActionContext) -> Outcome:
        program = resolve_program(self.systemctl)
        if program is None:
            return Outcome(ERROR, detail=f"{self.systemctl} not found in {SAFE_PATH}")
        argv = [program, "--no-ask-password", self.command, "--", self.unit.render(ctx.fields)]
        ctx.log.info("service.start", argv=argv, timeout=self.timeout)
        return await run_process(argv, action_env(ctx), self.timeout, self.kill_grace)

    def describe(self) -> str:
        return f"service {self.command} {self.unit.text} (timeout {self.timeout:g}s)"
