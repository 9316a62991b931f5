"""The TOML config turned into typed settings and rules.

Every error names the file, the key and what was expected (:class:`ConfigError`).
With no config file anywhere the embedded ``default.toml`` is used, which works
without root.

Everything parsed is frozen (tuples, read-only mappings): a reload builds a new
:class:`Config` and the router hands each part its new settings (an ``apply``
method per part, see :meth:`knotify.router.Router.reload`); nothing is patched.
"""

from __future__ import annotations

import grp
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from importlib import resources
from types import MappingProxyType

from knotify import paths
from knotify.actions import KINDS as ACTION_KINDS
from knotify.actions.base import Action, ActionSettings, Defaults
from knotify.alerts.receivers import AlertSettings, EngineSettings, Receiver, parse_receivers
from knotify.alerts.receivers import parse_settings as parse_alert_settings
from knotify.cluster.settings import AgentSettings, ClusterSettings, parse_agent, parse_cluster
from knotify.errors import ConfigError, KeyFileError
from knotify.metrics_settings import MetricsSettings
from knotify.metrics_settings import parse_settings as parse_metrics_settings
from knotify.peers.settings import PeerSettings, parse_peers
from knotify.rules import Match, Pattern, Rule, classes_from
from knotify.schema import Table
from knotify.security import must_be_root_only
from knotify.vocab import (
    CLUSTER_STATES,
    FIFO_ONLY_STATES,
    INIT,
    KINDS,
    LVS_STATES,
    SYNTHETIC_KINDS,
    SYNTHETIC_STATES,
    TRANSITION,
    UNKNOWN_STATE,
    VRRP_STATES,
)

EMBEDDED = "<embedded default>"

#: State words a rule may name (wildcards aside): a typo here is an error, not a silent miss.
KNOWN_STATES = frozenset(VRRP_STATES + LVS_STATES + CLUSTER_STATES + (INIT,))
NOTICE_ONLY = frozenset(FIFO_ONLY_STATES + (UNKNOWN_STATE,))


@dataclass(slots=True, frozen=True)
class CurveKeys:
    """CURVE key files: the router's (secret + authorised clients) or a client's."""

    secret_key: str
    clients: str = ""       # router: folder of authorised client public keys
    server_key: str = ""    # client: the router's public key
    #: router: client key names (``NAME`` of ``NAME.key``) allowed control operations.
    admins: tuple[str, ...] = ()
    #: router: the host names a client key may send as; a key not named here may send
    #: as the host its file is named for (``lb1.key``: ``lb1``) and nothing else.
    hosts: tuple[tuple[str, tuple[str, ...]], ...] = ()


@dataclass(slots=True, frozen=True)
class HookConfig:
    ack_timeout: float = 0.25
    spool_dir: str = ""
    host: str = ""
    endpoints: tuple[str, ...] = ()
    curve: CurveKeys | None = None


@dataclass(slots=True, frozen=True)
class FifoSource:
    """A FIFO the router reads itself; ``host`` labels its events (default: this host)."""

    path: str
    host: str = ""
    #: Ask keepalived for its states (JSON dump) whenever the FIFO is (re)opened.
    resync: bool = False
    pidfile: str = "/run/keepalived.pid"
    json_file: str = "/tmp/keepalived.json"


@dataclass(slots=True, frozen=True)
class Config:
    path: str
    runtime_dir: str
    state_dir: str
    listen: tuple[str, ...]
    curve: CurveKeys | None
    insecure: bool
    group: str | None
    journal: str
    fifos: tuple[FifoSource, ...]
    drain_timeout: float
    spool_interval: float
    synchronous: str
    keep_events: int
    max_message: int
    max_parallel: int
    max_backlog: int
    hook: HookConfig
    log_format: str
    log_level: str
    defaults: Defaults
    rules: tuple[Rule, ...]
    alerts: AlertSettings = field(default_factory=AlertSettings)
    receivers: Mapping[str, Receiver] = field(
        default_factory=lambda: MappingProxyType({}))
    cluster: ClusterSettings = field(default_factory=ClusterSettings)
    agent: AgentSettings = field(default_factory=AgentSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    #: ``[peers]``: the other routers of this site (None: this router alone).
    peers: PeerSettings | None = None
    #: Bounds and clocks (docs/architecture.md, "Bounds"); defaults as in parse().
    handshake_timeout: float = 10.0
    max_clock_skew: float = 300.0
    max_keys: int = 20_000
    forget_deleted: float = 86_400.0

    @property
    def control_endpoint(self) -> str:
        return paths.control_endpoint(self.runtime_dir)

    @property
    def pub_endpoint(self) -> str:
        return paths.pub_endpoint(self.runtime_dir)

    @property
    def alert_engine(self) -> EngineSettings:
        """The alert engine's settings: its result files live next to the journal."""
        return EngineSettings(self.alerts, self.receivers, os.path.join(
            os.path.dirname(os.path.abspath(self.journal)), "outbox"), self.rules,
            self.cluster)

    @property
    def client_endpoints(self) -> list[str]:
        return list(self.hook.endpoints) or [self.control_endpoint]


#: What a reload cannot change while the router runs (each one is reported): the
#: sockets, folders, journal, FIFOs, workers and the metrics port are set up at start.
def restart_needed(old: Config, new: Config) -> list[str]:
    """The settings ``new`` changes that take effect only after a restart."""
    changed = [name for name, a, b in (
        ("runtime_dir", old.runtime_dir, new.runtime_dir),
        ("state_dir", old.state_dir, new.state_dir),
        ("listen", old.listen, new.listen),
        ("curve", old.curve, new.curve),
        ("insecure", old.insecure, new.insecure),
        ("group", old.group, new.group),
        ("journal", old.journal, new.journal),
        ("fifos", old.fifos, new.fifos),
        ("synchronous", old.synchronous, new.synchronous),
        ("max_message", old.max_message, new.max_message),
        ("max_parallel", old.max_parallel, new.max_parallel),
        ("metrics", old.metrics, new.metrics),
        ("peers", old.peers, new.peers),
        ("handshake_timeout", old.handshake_timeout, new.handshake_timeout),
        ("hook.spool_dir", old.hook.spool_dir, new.hook.spool_dir),
        ("log", (old.log_format, old.log_level), (new.log_format, new.log_level)),
    ) if a != b]
    return changed


def reloaded(old: Config, new: Config) -> Config:
    """The config a running router goes on with after a reload: ``new``, but with what
    needs a restart (:func:`restart_needed`) as it was. CURVE key roles (admins, hosts)
    are live when the key files stay the same."""
    curve = old.curve
    if (old.curve is not None and new.curve is not None
            and (new.curve.secret_key, new.curve.clients)
            == (old.curve.secret_key, old.curve.clients)):
        curve = new.curve
    return replace(
        new, runtime_dir=old.runtime_dir, state_dir=old.state_dir, listen=old.listen,
        curve=curve, insecure=old.insecure, group=old.group, journal=old.journal,
        fifos=old.fifos, synchronous=old.synchronous, max_message=old.max_message,
        max_parallel=old.max_parallel, metrics=old.metrics, peers=old.peers,
        handshake_timeout=old.handshake_timeout,
        hook=replace(new.hook, spool_dir=old.hook.spool_dir, curve=old.hook.curve),
        log_format=old.log_format, log_level=old.log_level)


def load(path: str | None) -> Config:
    """Load ``path``, or the embedded default when ``path`` is None."""
    if path is None:
        text = resources.files("knotify").joinpath("default.toml").read_text()
        return parse(text, EMBEDDED)
    try:
        text = paths.read_config(path)  # never blocks on a FIFO, never reads a device
    except ValueError as exc:
        raise ConfigError(path, "", str(exc)) from None
    refusal = must_be_root_only(path)
    if refusal:
        raise ConfigError(path, "", refusal + " (a config decides what root runs)")
    return parse(text, path)


def parse(text: str, path: str) -> Config:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, "", f"not valid TOML: {exc}") from None
    except RecursionError:
        raise ConfigError(path, "", "nested too deeply for the TOML parser (arrays or "
                          "inline tables inside each other); flatten it") from None
    top = Table(data, path, "")

    p = top.table("paths")
    runtime_dir = p.text("runtime_dir", paths.runtime_dir())
    state_dir = p.text("state_dir", paths.state_dir())
    for key, value in (("runtime_dir", runtime_dir), ("state_dir", state_dir)):
        if not os.path.isabs(value):
            raise p.error(key, f"must be an absolute path, found {value!r}")
    group = p.opt_text("group")
    if group is not None:
        try:
            grp.getgrnam(group)
        except KeyError:
            raise p.error("group", f"no such group {group!r}") from None
    p.done()

    r = top.table("router")
    listen = tuple(r.strings("listen", []))
    for i, endpoint in enumerate(listen):
        if not endpoint.startswith(("tcp://", "ipc://")):
            raise r.error(f"listen[{i}]", f"expected tcp://HOST:PORT or ipc://PATH, found "
                          f"{endpoint!r}")
    insecure = r.flag("insecure", False)
    curve = None
    if r.has("curve"):
        c = r.table("curve")
        curve = CurveKeys(secret_key=_key_file(c, "secret_key", secret=True),
                          clients=c.text("clients"), admins=tuple(c.strings("admins", [])),
                          hosts=_key_hosts(c))
        if not os.path.isdir(curve.clients):
            raise c.error("clients", f"{curve.clients} is not a folder of client public keys")
        c.done()
    if any(e.startswith("tcp://") for e in listen) and curve is None and not insecure:
        raise r.error("listen", "TCP needs [router.curve] (keys from `knotify keygen`) so "
                      "only authorised hosts get in; set insecure = true to allow plain TCP")
    journal = r.text("journal", os.path.join(state_dir, "journal.db"))
    fifos = _fifos(r)
    drain_timeout = r.duration("drain_timeout", "10s")
    spool_interval = r.duration("spool_interval", "1s")
    if spool_interval <= 0:
        raise r.error("spool_interval", "must be more than 0")
    synchronous = r.text("synchronous", "full", choices=("full", "normal"))
    keep_events = r.integer("keep_events", 1_000_000, lo=1000)
    max_message = r.integer("max_message", 256 * 1024, lo=4096, hi=64 * 1024 * 1024)
    max_parallel = r.integer("max_parallel_actions", 32, lo=1, hi=10_000)
    max_backlog = r.integer("max_backlog", 5_000, lo=10, hi=10_000_000)
    handshake_timeout = r.duration("handshake_timeout", "10s")
    if not 0.1 <= handshake_timeout <= 300:
        raise r.error("handshake_timeout", "expected 100ms .. 5m")
    max_clock_skew = r.duration("max_clock_skew", "5m")
    if max_clock_skew <= 0:
        raise r.error("max_clock_skew", "must be more than 0")
    max_keys = r.integer("max_keys", 20_000, lo=10, hi=10_000_000)
    forget_deleted = r.duration("forget_deleted", "1d")
    r.done()

    h = top.table("hook")
    hook_curve = None
    ack_timeout = h.duration("ack_timeout", "250ms")
    hook_spool = h.text("spool_dir", os.path.join(state_dir, "spool"))
    hook_host = h.text("host", "")
    hook_endpoints = tuple(h.strings("endpoints", []))
    if h.has("curve"):
        c = h.table("curve")
        hook_curve = CurveKeys(secret_key=_key_file(c, "secret_key", secret=True),
                               server_key=_key_file(c, "server_key", secret=False))
        c.done()
    hook = HookConfig(ack_timeout=ack_timeout, spool_dir=hook_spool, host=hook_host,
                      endpoints=hook_endpoints, curve=hook_curve)
    h.done()

    lg = top.table("log")
    log_format = lg.text("format", "auto", choices=("auto", "json", "console"))
    log_level = lg.text("level", "info", choices=("debug", "info", "warning", "error"))
    lg.done()

    d = top.table("defaults")
    defaults = Defaults(
        exec_timeout=d.duration("exec_timeout", "30s"),
        service_timeout=d.duration("service_timeout", "90s"),
        systemctl=d.text("systemctl", "systemctl"),
    )
    d.done()

    alerts = parse_alert_settings(top)
    receivers = MappingProxyType(parse_receivers(top, alerts))
    cluster = parse_cluster(top)
    agent = parse_agent(top)
    metrics = parse_metrics_settings(top)
    peers = parse_peers(top, hook_host)

    config = Config(
        path=path, runtime_dir=runtime_dir, state_dir=state_dir, listen=listen, curve=curve,
        insecure=insecure, group=group, journal=journal, fifos=fifos, drain_timeout=drain_timeout,
        spool_interval=spool_interval, synchronous=synchronous, keep_events=keep_events,
        max_message=max_message, max_parallel=max_parallel, max_backlog=max_backlog,
        handshake_timeout=handshake_timeout, max_clock_skew=max_clock_skew,
        max_keys=max_keys, forget_deleted=forget_deleted,
        hook=hook, log_format=log_format,
        log_level=log_level,
        defaults=defaults, rules=(), alerts=alerts, receivers=receivers,
        cluster=cluster, agent=agent, metrics=metrics, peers=peers,
    )
    seen: set[str] = set()
    rules: list[Rule] = []
    settings = ActionSettings(defaults, frozenset(receivers))
    for table in top.tables("rule"):
        rule = _rule(table, settings)
        if rule.id in seen:
            raise table.error("id", f"rule id {rule.id!r} is used twice")
        seen.add(rule.id)
        rules.append(rule)
    top.done()
    return replace(config, rules=tuple(rules))


def _key_file(t: Table, key: str, *, secret: bool) -> str:
    from knotify import transport

    path = t.text(key)
    try:
        if secret:
            transport.load_secret(path)
        else:
            transport.load_public(path)
    except KeyFileError as exc:
        raise t.error(key, str(exc)) from None
    return path


def _key_hosts(c: Table) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """``[router.curve.hosts]``: client key name -> the host names it may send as."""
    t = c.table("hosts")
    out = []
    for name in sorted(t.data):
        hosts = t.strings(name, allow_str=True)
        if not hosts or not all(hosts):
            raise t.error(name, "expected host names (\"*\" for any host)")
        out.append((name, tuple(hosts)))
    t.done()
    return tuple(out)


def _fifos(r: Table) -> tuple[FifoSource, ...]:
    out: list[FifoSource] = []
    raw = r.raw("fifos", [])
    if not isinstance(raw, list):
        raise r.error("fifos", "expected a list of paths or {path = ..., host = ...} tables")
    for i, item in enumerate(raw):
        if isinstance(item, str):
            source = FifoSource(item)
        elif isinstance(item, dict):
            t = Table(item, r.path, r.key(f"fifos[{i}]"))
            source = FifoSource(t.text("path"), t.text("host", ""), t.flag("resync", False),
                                t.text("pidfile", "/run/keepalived.pid"),
                                t.text("json_file", "/tmp/keepalived.json"))
            t.done()
        else:
            raise r.error(f"fifos[{i}]", "expected a path or a {path = ..., host = ...} table")
        if not os.path.isabs(source.path):
            raise r.error(f"fifos[{i}]", f"must be an absolute path, found {source.path!r}")
        out.append(source)
    return tuple(out)


def _pattern(table: Table, key: str, *, upper: bool = False,
             known: frozenset[str] | None = None) -> Pattern:
    values = table.strings(key, [], allow_str=True)
    pattern = Pattern.parse(values, upper=upper)
    if known is not None:
        for value in (*pattern.positive, *pattern.negative):
            if "*" not in value and "?" not in value and value not in known:
                raise table.error(key, f"unknown value {value!r}; expected one of "
                                  + ", ".join(sorted(known)))
    return pattern


def _rule(t: Table, settings: ActionSettings) -> Rule:
    rule_id = t.text("id", t.where.replace("rule[", "rule-").rstrip("]"))
    prio_min = prio_max = None
    prio = t.raw("prio")
    if prio is not None:
        if (not isinstance(prio, list) or len(prio) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) for v in prio)):
            raise t.error("prio", "expected [MIN, MAX], e.g. prio = [100, 255]")
        if not 0 <= prio[0] <= prio[1] <= 255:
            raise t.error("prio", f"expected 0 <= MIN <= MAX <= 255, found {prio}; "
                          "this range would never match")
        prio_min, prio_max = prio
    match = Match(
        kind=_pattern(t, "kind", upper=True, known=frozenset(KINDS + SYNTHETIC_KINDS)),
        name=_pattern(t, "name"),
        vs=_pattern(t, "vs"),
        host=_pattern(t, "host"),
        state=_pattern(t, "state", upper=True, known=KNOWN_STATES),
        prev=_pattern(t, "from", upper=True, known=KNOWN_STATES),
        source=_pattern(t, "source"),
        prio_min=prio_min,
        prio_max=prio_max,
    )
    try:
        on = classes_from(t.strings("on", [TRANSITION], allow_str=True))
    except ValueError as exc:
        raise t.error("on", str(exc)) from None
    if (match.state.positive and on == {TRANSITION}
            and all(s in NOTICE_ONLY for s in match.state.positive)):
        raise t.error("state", f"{', '.join(match.state.positive)} never changes the state, "
                      "so this rule would never fire; add on = \"every\" (or \"notice\")")
    synthetic = [s for s in match.state.positive if s in SYNTHETIC_STATES]
    if synthetic and not any(match.kind.positive and match.kind(k) for k in SYNTHETIC_KINDS):
        raise t.error("state", f"{', '.join(synthetic)} is a state of knotify's own CLUSTER "
                      "and PEER events, which reach only rules that name their kind; add "
                      "kind = [\"CLUSTER\", \"PEER\"] (or the one you mean)")
    actions: list[Action] = []
    for a in t.tables("action"):
        kind = a.text("type", choices=tuple(ACTION_KINDS))
        actions.append(ACTION_KINDS[kind].from_config(a, settings))
        a.done()
    if not actions:
        raise t.error("action", "the rule has no [[rule.action]]")
    rule = Rule(
        id=rule_id,
        match=match,
        on=on,
        actions=tuple(actions),
        delay=t.duration("delay", 0),
        skip_if_superseded=t.flag("skip_if_superseded", False),
        max_age=t.opt_duration("max_age"),
        description=t.text("description", ""),
        honor_silences=t.flag("honor_silences", False),
        send_resolved=(t.flag("send_resolved", True)
                       and any(action.pages for action in actions)),
    )
    t.done()
    return rule
