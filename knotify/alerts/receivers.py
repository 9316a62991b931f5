"""``[receivers.NAME]`` and ``[alerts]`` from the config: who gets alerts, and the noise knobs.

A receiver is a list of apprise URLs and/or an apprise config file (with tags
selecting its entries): apprise's own loading, never re-implemented here. The
URLs are checked by apprise itself, in a short child process (the router never
imports apprise); what it refuses is a config error naming file, key and
reason, and what is shown anywhere is apprise's privacy form of each URL.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from knotify.alerts import alertmanager, render
from knotify.alerts.flap import FlapPolicy
from knotify.alerts.grouping import GROUP_FIELDS
from knotify.alerts.inhibit import InhibitRule, parse_rules
from knotify.alerts.redact import scrub
from knotify.alerts.repeat import RepeatPolicy
from knotify.cluster.settings import ClusterSettings
from knotify.errors import ConfigError, TemplateError
from knotify.rules import Rule
from knotify.schema import Table
from knotify.units import format_duration

CHECK_TIMEOUT = 60.0
RECEIVER_TYPES = ("apprise", alertmanager.KIND)
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


@dataclass(slots=True, frozen=True)
class Receiver:
    name: str
    urls: tuple[str, ...] = field(repr=False)
    config: str | None = None
    tags: tuple[str, ...] = ()
    templates: render.Templates = field(default_factory=render.Templates)
    format: str = "text"
    timeout: float = 30.0
    fallback: str | None = None
    fallback_after: float = 300.0
    #: apprise's privacy form of each URL (query dropped): what logs and history show.
    shown: tuple[str, ...] = ()
    #: The same for the entries of the apprise config file that the tags select.
    config_shown: tuple[str, ...] = ()
    secrets: frozenset[str] = field(default=frozenset(), repr=False)
    #: Set for ``type = "alertmanager"``: knotify's own sender, not apprise.
    alertmanager: alertmanager.AMSettings | None = None

    def job(self) -> dict[str, Any]:
        """What the sender needs to reach this receiver (secrets included: stdin only)."""
        if self.alertmanager is not None:
            return {**self.alertmanager.job(), "timeout": self.timeout}
        return {"urls": list(self.urls), "config": self.config, "tags": list(self.tags),
                "format": self.format, "timeout": self.timeout}

    def scrub(self, text: str) -> str:
        return scrub(text, self.secrets)

    def describe(self) -> str:
        parts = list(self.shown) or ([f"{len(self.urls)} URL(s)"] if self.urls else [])
        if self.config:
            tags = f" tags {','.join(self.tags)}" if self.tags else ""
            found = f": {', '.join(self.config_shown)}" if self.config_shown else ""
            parts.append(f"apprise config {self.config}{tags}{found}")
        if self.alertmanager is not None:
            parts = [f"Alertmanager {', '.join(self.shown)}", f"re-posted every "
                     f"{format_duration(self.alertmanager.repost_interval)}"]
        text = f"receiver {self.name}: {'; '.join(parts)} (timeout {self.timeout:g}s"
        if self.fallback:
            text += f", fallback {self.fallback} after {format_duration(self.fallback_after)}"
        return text + ")"


@dataclass(slots=True, frozen=True)
class AlertSettings:
    group_wait: float = 2.0
    group_by: tuple[str, ...] = ("incident",)
    #: A message lists the lines of this many subjects (instances), then counts the rest.
    fold_after: int = 12
    flap: FlapPolicy = field(default_factory=FlapPolicy)
    repeat: RepeatPolicy = field(default_factory=RepeatPolicy)
    retry_initial: float = 5.0
    retry_max: float = 300.0
    max_age: float = 86400.0
    timeout: float = 30.0
    #: Sender workers (warm processes with apprise loaded): delivery attempts at once.
    max_parallel: int = 4
    #: Attempts at once to one receiver (messages of different groups only).
    max_parallel_per_receiver: int = 2
    #: A worker with nothing to do for this long exits.
    worker_idle: float = 60.0
    #: ``[[alerts.inhibit]]``: conditions that mute the alerts they explain.
    inhibit: tuple[InhibitRule, ...] = ()


@dataclass(slots=True, frozen=True)
class EngineSettings:
    """What the alert engine runs on: ``[alerts]``, the receivers, and the folder of its
    attempts' result files (next to the journal; fixed while the router runs); the rules
    (which alert rules are new or changed, which fire only to end an incident) and
    ``[cluster]`` (which hosts an incident involves)."""

    alerts: AlertSettings
    receivers: Mapping[str, Receiver]
    result_dir: str
    rules: tuple[Rule, ...] = ()
    cluster: ClusterSettings = field(default_factory=ClusterSettings)


def _templates(t: Table, base: render.Templates) -> render.Templates:
    found: dict[str, str | None] = {}
    for key in ("title", "body", "line"):
        text = t.opt_text(key)
        if text is not None:
            try:
                render.template(text)
            except TemplateError as exc:
                raise t.error(key, str(exc)) from None
        found[key] = text
    return base.over(found)


def parse_settings(top: Table) -> AlertSettings:
    a = top.table("alerts")
    group_by = tuple(a.strings("group_by", ["incident"]))
    for name in group_by:
        if name not in GROUP_FIELDS:
            raise a.error("group_by", f"unknown field {name!r}; expected some of "
                          + ", ".join(GROUP_FIELDS))
    states = a.strings("repeat_states", sorted(render.BAD_STATES))
    max_parallel = a.integer("max_parallel", 4, lo=1, hi=64)
    settings = AlertSettings(
        group_wait=a.duration("group_wait", "2s"),
        group_by=group_by,
        fold_after=a.integer("fold_after", 12, lo=0, hi=100_000),
        flap=FlapPolicy(
            threshold=a.integer("flap_threshold", 5, lo=0, hi=10_000),
            window_s=a.duration("flap_window", "2m"),
            stable_s=a.duration("flap_stable", "5m"),
        ),
        repeat=RepeatPolicy(
            interval_s=a.duration("repeat_interval", "4h"),
            states=frozenset(s.upper() for s in states),
        ),
        retry_initial=a.duration("retry_initial", "5s"),
        retry_max=a.duration("retry_max", "5m"),
        max_age=a.duration("max_age", "24h"),
        timeout=a.duration("timeout", "30s"),
        max_parallel=max_parallel,
        max_parallel_per_receiver=a.integer("max_parallel_per_receiver", min(2, max_parallel),
                                            lo=1, hi=64),
        worker_idle=a.duration("worker_idle", "1m"),
        inhibit=parse_rules(a),
    )
    if settings.retry_initial <= 0:
        raise a.error("retry_initial", "must be more than 0")
    if settings.retry_max < settings.retry_initial:
        raise a.error("retry_max", "must be at least retry_initial")
    if settings.timeout <= 0:
        raise a.error("timeout", "must be more than 0")
    if settings.max_parallel_per_receiver > settings.max_parallel:
        raise a.error("max_parallel_per_receiver",
                      f"must be at most max_parallel ({settings.max_parallel}), found "
                      f"{settings.max_parallel_per_receiver}")
    a.done()
    return settings


def parse_receivers(top: Table, settings: AlertSettings,
                    check: bool = True) -> dict[str, Receiver]:
    """Every ``[receivers.NAME]``; with ``check``, apprise validates the URLs."""
    table = top.table("receivers")
    found: dict[str, Receiver] = {}
    for name in list(table.data):
        r = table.table(name)
        if not name or not set(name) <= _NAME_CHARS:
            raise table.error(name, "a receiver name is letters, digits, '-', '_' or '.'")
        if r.text("type", "apprise", choices=RECEIVER_TYPES) == alertmanager.KIND:
            found[name] = _alertmanager(top, r, name, settings)
            continue
        urls = tuple(r.strings("urls", []))
        config_file = r.opt_text("config")
        if config_file is not None and not os.path.isabs(config_file):
            base = os.path.dirname(os.path.abspath(top.path)) if os.path.exists(top.path) else ""
            if not base:
                raise r.error("config", f"must be an absolute path, found {config_file!r}")
            config_file = os.path.join(base, config_file)
        tags = tuple(r.strings("tags", [], allow_str=True))
        if tags and config_file is None:
            raise r.error("tags", "tags select entries of an apprise config file; set config")
        receiver = Receiver(
            name=name, urls=urls, config=config_file, tags=tags,
            templates=_templates(r, render.Templates()),
            format=r.text("format", "text", choices=render.FORMATS),
            timeout=r.duration("timeout", settings.timeout),
            fallback=r.opt_text("fallback"),
            fallback_after=r.duration("fallback_after", "5m"),
        )
        if receiver.timeout <= 0:
            raise r.error("timeout", "must be more than 0")
        r.done()
        if not urls and config_file is None:
            raise r.error("urls", "a receiver needs urls = [...] or config = FILE (or both)")
        found[name] = receiver
    table.done()
    for name, receiver in found.items():
        seen = [name]
        step: Receiver | None = receiver
        while step is not None and step.fallback is not None:
            if step.fallback not in found:
                raise table.error(f"{step.name}.fallback",
                                  f"no receiver {step.fallback!r}; known: "
                                  + (", ".join(sorted(found)) or "none"))
            if step.fallback in seen:
                raise table.error(f"{name}.fallback", "fallbacks go round in a circle: "
                                  + " -> ".join([*seen, step.fallback]))
            seen.append(step.fallback)
            step = found[step.fallback]
    apprise_ones = {n: r for n, r in found.items() if r.alertmanager is None}
    if check and apprise_ones:
        found.update(_checked(table, apprise_ones))
    return found


def _alertmanager(top: Table, r: Table, name: str, settings: AlertSettings) -> Receiver:
    """A ``type = "alertmanager"`` receiver: knotify posts to Alertmanager's API itself."""
    base = os.path.dirname(os.path.abspath(top.path)) if os.path.exists(top.path) else None
    am = alertmanager.parse(r, base)
    receiver = Receiver(
        name=name, urls=am.urls, templates=_templates(r, render.Templates()),
        timeout=r.duration("timeout", settings.timeout), fallback=r.opt_text("fallback"),
        fallback_after=r.duration("fallback_after", "5m"), shown=am.shown(),
        secrets=am.secrets(), alertmanager=am,
    )
    if receiver.timeout <= 0:
        raise r.error("timeout", "must be more than 0")
    r.done()
    return receiver


def _checked(table: Table, receivers: dict[str, Receiver]) -> dict[str, Receiver]:
    """Ask apprise (in a child process) about every URL; ConfigError for what it refuses."""
    request = {"receivers": {n: {"urls": list(r.urls), "config": r.config, "tags": list(r.tags)}
                             for n, r in receivers.items()}}
    try:
        proc = subprocess.run([sys.executable, "-m", "knotify.alerts.sender", "--check"],
                              input=json.dumps(request), capture_output=True, text=True,
                              timeout=CHECK_TIMEOUT, start_new_session=True)
        answer: dict[str, Any] = json.loads(proc.stdout)
    except (OSError, ValueError, subprocess.SubprocessError) as exc:
        raise ConfigError(table.path, "receivers",
                          f"cannot check the URLs with apprise: {exc}") from None
    out: dict[str, Receiver] = {}
    for name, receiver in receivers.items():
        verdict = answer.get(name, {})
        shown: list[str] = []
        secrets: set[str] = set()
        for i, url in enumerate(verdict.get("urls", [])):
            if not url.get("ok"):
                raise table.error(f"{name}.urls[{i}]", f"apprise refuses this URL "
                                  f"({url.get('url', '?')}): {url.get('error', 'unknown error')}")
            shown.append(str(url["url"]))
            secrets.update(url.get("secrets", []))
        config = verdict.get("config")
        if config and config.get("problems"):
            raise table.error(f"{name}.config", "; ".join(config["problems"]))
        out[name] = Receiver(
            name=receiver.name, urls=receiver.urls, config=receiver.config, tags=receiver.tags,
            templates=receiver.templates, format=receiver.format, timeout=receiver.timeout,
            fallback=receiver.fallback, fallback_after=receiver.fallback_after,
            shown=tuple(shown), config_shown=tuple((config or {}).get("services", [])),
            secrets=frozenset(secrets),
        )
    return out
