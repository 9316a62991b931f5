"""Config loading: defaults, the embedded default, and errors that name file, key and reason."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from conftest import KEnv, need

from knotify import config as configmod
from knotify import paths
from knotify.actions.alert import AlertAction
from knotify.actions.exec import ExecAction
from knotify.actions.log import LogAction
from knotify.config import EMBEDDED, FifoSource
from knotify.errors import ConfigError
from knotify.event import Event
from knotify.tracker import Transition
from knotify.vocab import NOTICE, REPEAT, TRANSITION

FILE = "/etc/knotify/test.toml"
LOG_ACTION = '[[rule.action]]\ntype = "log"\n'


def error(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        configmod.parse(text, FILE)
    exc = info.value
    assert str(exc).startswith(FILE + ": "), str(exc)
    return exc


def rule(body: str, action: str = LOG_ACTION) -> str:
    return '[[rule]]\nid = "r"\n' + body + "\n" + action


# --------------------------------------------------------------------------- defaults


def test_empty_config_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KNOTIFY_RUNTIME_DIR", "/run/kt")
    monkeypatch.setenv("KNOTIFY_STATE_DIR", "/var/lib/kt")
    cfg = configmod.parse("", FILE)
    assert cfg.path == FILE
    assert (cfg.runtime_dir, cfg.state_dir) == ("/run/kt", "/var/lib/kt")
    assert cfg.listen == () and cfg.fifos == () and cfg.rules == ()
    assert cfg.journal == "/var/lib/kt/journal.db"
    assert (cfg.drain_timeout, cfg.spool_interval) == (10.0, 1.0)
    assert (cfg.synchronous, cfg.keep_events, cfg.max_message) == ("full", 1_000_000, 262144)
    assert (cfg.hook.ack_timeout, cfg.hook.spool_dir, cfg.hook.host, cfg.hook.endpoints) == (
        0.25, "/var/lib/kt/spool", "", ())
    assert (cfg.log_format, cfg.log_level) == ("auto", "info")
    assert (cfg.defaults.exec_timeout, cfg.defaults.service_timeout,
            cfg.defaults.systemctl) == (30.0, 90.0, "systemctl")
    assert cfg.control_endpoint == "ipc:///run/kt/knotify.sock"
    assert cfg.pub_endpoint == "ipc:///run/kt/events.sock"
    assert cfg.client_endpoints == ["ipc:///run/kt/knotify.sock"]


def test_paths_drive_journal_spool_and_socket() -> None:
    cfg = configmod.parse('[paths]\nruntime_dir = "/r"\nstate_dir = "/s"\n', FILE)
    assert cfg.journal == "/s/journal.db"
    assert cfg.hook.spool_dir == "/s/spool"
    assert cfg.control_endpoint == "ipc:///r/knotify.sock"


def test_full_config_values_are_read() -> None:
    cfg = configmod.parse(
        '[paths]\nruntime_dir = "/r"\nstate_dir = "/s"\n'
        '[router]\nlisten = ["ipc:///r/extra.sock"]\njournal = "/j.db"\n'
        'drain_timeout = "1m"\nspool_interval = "250ms"\nsynchronous = "normal"\n'
        'keep_events = 5000\nmax_message = 8192\n'
        '[hook]\nack_timeout = 2\nspool_dir = "/sp"\nhost = "kb9"\n'
        'endpoints = ["ipc:///x.sock", "ipc:///y.sock"]\n'
        '[log]\nformat = "json"\nlevel = "debug"\n'
        '[defaults]\nexec_timeout = "5s"\nservice_timeout = "2m"\nsystemctl = "/bin/true"\n',
        FILE)
    assert cfg.listen == ("ipc:///r/extra.sock",) and cfg.journal == "/j.db"
    assert (cfg.drain_timeout, cfg.spool_interval, cfg.synchronous) == (60.0, 0.25, "normal")
    assert (cfg.keep_events, cfg.max_message) == (5000, 8192)
    assert (cfg.hook.ack_timeout, cfg.hook.spool_dir, cfg.hook.host) == (2.0, "/sp", "kb9")
    assert cfg.client_endpoints == ["ipc:///x.sock", "ipc:///y.sock"]
    assert (cfg.log_format, cfg.log_level) == ("json", "debug")
    assert (cfg.defaults.exec_timeout, cfg.defaults.service_timeout) == (5.0, 120.0)


def test_embedded_default_config_loads() -> None:
    cfg = configmod.load(None)
    assert cfg.path == EMBEDDED
    [r] = cfg.rules
    assert r.id == "log-transitions" and r.on == {TRANSITION}
    assert isinstance(r.actions[0], LogAction)


def test_shipped_example_config_is_valid_if_present() -> None:
    example = Path(__file__).resolve().parent.parent / "config" / "knotify.toml"
    need(example.exists(), "no config/knotify.toml in this checkout")
    cfg = configmod.parse(example.read_text(), str(example))
    assert cfg.rules


def test_rule_defaults_and_options() -> None:
    [r] = configmod.parse(
        '[[rule]]\nid = "x"\ndescription = "d"\ndelay = "2s"\nskip_if_superseded = true\n'
        'max_age = "1m"\non = ["repeat", "notice"]\n' + LOG_ACTION, FILE).rules
    assert (r.id, r.description, r.delay, r.skip_if_superseded, r.max_age) == (
        "x", "d", 2.0, True, 60.0)
    assert r.on == {REPEAT, NOTICE}
    [r2] = configmod.parse("[[rule]]\n" + LOG_ACTION, FILE).rules
    assert (r2.id, r2.delay, r2.skip_if_superseded, r2.max_age, r2.on) == (
        "rule-0", 0.0, False, None, frozenset({TRANSITION}))


def test_rule_without_id_gets_its_position() -> None:
    rules = configmod.parse(("[[rule]]\n" + LOG_ACTION) * 3, FILE).rules
    assert [r.id for r in rules] == ["rule-0", "rule-1", "rule-2"]


def test_fifos_as_strings_and_tables() -> None:
    cfg = configmod.parse(
        '[router]\nfifos = ["/run/keepalived.fifo", {path = "/run/b.fifo", host = "kb2"},'
        ' {path = "/run/c.fifo"}]\n', FILE)
    assert cfg.fifos == (FifoSource("/run/keepalived.fifo"), FifoSource("/run/b.fifo", "kb2"),
                         FifoSource("/run/c.fifo", ""))


def test_exec_action_resolves_bare_names_through_safe_path() -> None:
    [r] = configmod.parse(rule("", '[[rule.action]]\ntype = "exec"\n'
                               'argv = ["true", "{name}"]\ntimeout = "3s"\n'), FILE).rules
    action = r.actions[0]
    assert isinstance(action, ExecAction)
    assert os.path.isabs(action.argv[0].text) and action.argv[0].text.endswith("/true")
    assert action.timeout == 3.0


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("text", ["a = ", "[rule", "x = 'unterminated", "[a]\n[a]\n",
                                  "a = 1\na = 2"])
def test_bad_toml(text: str) -> None:
    exc = error(text)
    assert exc.key == ""
    assert exc.reason.startswith("not valid TOML: ")


@pytest.mark.parametrize(("text", "key"), [
    ("colour = 1", "colour"),
    ("[paths]\nrun_dir = '/x'", "paths.run_dir"),
    ("[router]\nlisten_on = []", "router.listen_on"),
    ("[hook]\ntimeout = 1", "hook.timeout"),
    ("[log]\nlvl = 'info'", "log.lvl"),
    ("[defaults]\ntimeout = 1", "defaults.timeout"),
    (rule("states = 'MASTER'"), "rule[0].states"),
    (rule("", LOG_ACTION + "msg = 'x'"), "rule[0].action[0].msg"),
    (rule("", '[[rule.action]]\ntype = "exec"\nargv = ["true"]\nargs = []'),
     "rule[0].action[0].args"),
    ('[router]\nfifos = [{path = "/x", hots = "a"}]', "router.fifos[0].hots"),
])
def test_unknown_keys_are_named(text: str, key: str) -> None:
    exc = error(text)
    assert (exc.key, exc.reason) == (key, "unknown key")


def test_several_unknown_keys_are_all_named() -> None:
    exc = error("a = 1\nb = 2\nc = 3")
    assert exc.key == "a" and exc.reason == "unknown key (also unknown: b, c)"


@pytest.mark.parametrize(("text", "key", "reason"), [
    ("paths = 1", "paths", "expected a table, found an integer"),
    ("[paths]\nruntime_dir = 5", "paths.runtime_dir", "expected a string, found an integer"),
    ("[router]\nlisten = 'ipc:///x'", "router.listen", "expected a list of strings, found a "
     "string"),
    ("[router]\nlisten = [1]", "router.listen", "found an item that is not a string"),
    ("[router]\nkeep_events = 'many'", "router.keep_events", "expected an integer, found a "
     "string"),
    ("[router]\nkeep_events = true", "router.keep_events", "expected an integer, found "
     "true/false"),
    ("[router]\nkeep_events = 10", "router.keep_events", "expected 1000..None, found 10"),
    ("[router]\nmax_message = 1", "router.max_message", "expected 4096..67108864, found 1"),
    ("[router]\nsynchronous = 'off'", "router.synchronous", "expected one of full, normal, "
     "found 'off'"),
    ("[log]\nformat = 'xml'", "log.format", "expected one of auto, json, console"),
    ("[log]\nlevel = 'loud'", "log.level", "expected one of debug, info, warning, error"),
    ("[hook]\nhost = 1", "hook.host", "expected a string, found an integer"),
    ("[hook]\nendpoints = 'ipc:///x'", "hook.endpoints", "expected a list of strings"),
    (rule("skip_if_superseded = 'yes'"), "rule[0].skip_if_superseded",
     "expected true or false, found a string"),
    (rule("name = 5"), "rule[0].name", "expected a list of strings, found an integer"),
    (rule("description = []"), "rule[0].description", "expected a string, found a list"),
    ("rule = 1", "rule", "expected [[rule]] tables"),
    ("rule = [1, 2]", "rule", "expected [[rule]] tables"),
    (rule("action = 'log'", ""), "rule[0].action", "expected [[rule[0].action]] tables"),
])
def test_wrong_types_are_named(text: str, key: str, reason: str) -> None:
    exc = error(text)
    assert exc.key == key
    assert reason in exc.reason, exc.reason


@pytest.mark.parametrize(("text", "key"), [
    ("[paths]\nruntime_dir = 'run'", "paths.runtime_dir"),
    ("[paths]\nstate_dir = './state'", "paths.state_dir"),
])
def test_relative_paths_are_refused(text: str, key: str) -> None:
    exc = error(text)
    assert exc.key == key and "must be an absolute path" in exc.reason


@pytest.mark.parametrize("endpoint", ["udp://x:1", "knotify.sock", "inproc://x"])
def test_listen_endpoint_scheme(endpoint: str) -> None:
    exc = error(f'[router]\nlisten = ["ipc:///ok.sock", "{endpoint}"]')
    assert exc.key == "router.listen[1]"
    assert "expected tcp://HOST:PORT or ipc://PATH" in exc.reason and endpoint in exc.reason


def test_unknown_action_type() -> None:
    exc = error(rule("", '[[rule.action]]\ntype = "email"'))
    assert exc.key == "rule[0].action[0].type"
    assert exc.reason == "expected one of exec, service, log, alert, found 'email'"


def test_action_without_type() -> None:
    exc = error(rule("", '[[rule.action]]\nmessage = "x"'))
    assert (exc.key, exc.reason) == ("rule[0].action[0].type", "is required (a string)")


@pytest.mark.parametrize(("key", "word"), [("state", "MASTR"), ("state", "UPP"),
                                           ("from", "BAKUP"), ("from", "!INITT"),
                                           ("kind", "INSTANCES"), ("kind", "VRRP")])
def test_typo_in_state_from_kind_is_an_error(key: str, word: str) -> None:
    exc = error(rule(f'{key} = ["{word}"]'))
    assert exc.key == f"rule[0].{key}"
    assert f"unknown value {word.lstrip('!')!r}" in exc.reason
    assert "expected one of" in exc.reason


def test_state_wildcards_and_synthetic_states_are_accepted() -> None:
    cfg = configmod.parse(rule('state = ["MASTER*", "?AULT", "SPLIT_BRAIN", "!STOP"]\n'
                               'kind = ["INSTANCE", "CLUSTER", "PEER"]'), FILE)
    [r] = cfg.rules
    assert (r.match.state.positive, r.match.state.negative) == (
        ("MASTER*", "?AULT", "SPLIT_BRAIN"), ("STOP",))
    assert (r.match.kind.positive, r.match.kind.negative) == (("INSTANCE", "CLUSTER", "PEER"), ())
    # What the patterns mean for events.
    for kind, state, fires in [("INSTANCE", "MASTER", True), ("INSTANCE", "FAULT", True),
                               ("CLUSTER", "SPLIT_BRAIN", True), ("INSTANCE", "STOP", False),
                               ("INSTANCE", "BACKUP", False), ("GROUP", "MASTER", False)]:
        ev = Event(id="e" * 16, host="h", kind=kind, name="VI_1", state=state)
        assert r.fires(ev, Transition(TRANSITION, state, "INIT", None, 1)) is fires, (kind, state)


def test_rule_with_no_actions() -> None:
    exc = error('[[rule]]\nid = "lonely"\nstate = "MASTER"\n')
    assert (exc.key, exc.reason) == ("rule[0].action", "the rule has no [[rule.action]]")


def test_duplicate_rule_ids() -> None:
    exc = error(rule("") + rule("") .replace('id = "r"', 'id = "other"') + rule(""))
    assert exc.key == "rule[2].id" and exc.reason == "rule id 'r' is used twice"


@pytest.mark.parametrize("state", ["MASTER_PRIORITY", "BACKUP_PRIORITY", "MASTER_RX_LOWER_PRI",
                                   "{UNKNOWN}"])
def test_notice_only_state_with_transition_never_fires(state: str) -> None:
    exc = error(rule(f'state = "{state}"'))
    assert exc.key == "rule[0].state"
    assert "never changes the state" in exc.reason and 'on = "every"' in exc.reason
    exc2 = error(rule(f'state = "{state}"\non = ["transition"]'))
    assert exc2.key == "rule[0].state"


@pytest.mark.parametrize(("on", "classes"), [('"every"', {TRANSITION, REPEAT, NOTICE}),
                                             ('"notice"', {NOTICE}),
                                             ('["transition", "notice"]', {TRANSITION, NOTICE})])
def test_notice_only_state_with_notice_class_is_fine(on: str, classes: set[str]) -> None:
    [r] = configmod.parse(rule(f'state = "MASTER_PRIORITY"\non = {on}'), FILE).rules
    assert r.on == classes
    assert (r.match.state.positive, r.match.state.negative) == (("MASTER_PRIORITY",), ())


def test_mixed_notice_only_and_real_state_is_fine() -> None:
    [r] = configmod.parse(rule('state = ["MASTER", "MASTER_PRIORITY"]'), FILE).rules
    assert r.on == {TRANSITION}
    assert r.match.state.positive == ("MASTER", "MASTER_PRIORITY")


def test_bad_on() -> None:
    exc = error(rule('on = "always"'))
    assert exc.key == "rule[0].on"
    assert exc.reason == "expected transition, repeat, notice or every, found 'always'"


@pytest.mark.parametrize("prio", ["5", "[1]", "[1, 2, 3]", "['a', 'b']", "[1.5, 2]",
                                  "[true, false]"])
def test_bad_prio_shape(prio: str) -> None:
    exc = error(rule(f"prio = {prio}"))
    assert exc.key == "rule[0].prio" and "expected [MIN, MAX]" in exc.reason


@pytest.mark.parametrize("prio", ["[200, 100]", "[0, 256]", "[-1, 100]"])
def test_prio_range_that_can_never_match_is_refused(prio: str) -> None:
    exc = error(rule(f"prio = {prio}"))
    assert exc.key == "rule[0].prio" and "0 <= MIN <= MAX <= 255" in exc.reason


def test_exec_argv0_templated() -> None:
    exc = error(rule("", '[[rule.action]]\ntype = "exec"\nargv = ["/usr/bin/{name}"]'))
    assert exc.key == "rule[0].action[0].argv"
    assert "argv[0]) cannot contain a template" in exc.reason


@pytest.mark.parametrize("program", ["bin/true", "./true", "../bin/true"])
def test_exec_relative_program_refused(program: str) -> None:
    exc = error(rule("", f'[[rule.action]]\ntype = "exec"\nargv = ["{program}"]'))
    assert exc.key == "rule[0].action[0].argv"
    assert f"program {program!r} not found" in exc.reason
    assert "relative paths are refused" in exc.reason


def test_exec_bare_name_not_found() -> None:
    exc = error(rule("", '[[rule.action]]\ntype = "exec"\nargv = ["no-such-program-zz9"]'))
    assert exc.key == "rule[0].action[0].argv"
    assert "program 'no-such-program-zz9' not found" in exc.reason
    assert "/usr/bin" in exc.reason


def test_exec_absolute_program_missing_is_refused_as_root() -> None:
    need(os.geteuid() == 0, "only root checks the program's path at load time")
    exc = error(rule("", '[[rule.action]]\ntype = "exec"\nargv = ["/no/such/prog"]'))
    assert exc.key == "rule[0].action[0].argv" and "/no/such/prog" in exc.reason


def test_exec_empty_argv() -> None:
    exc = error(rule("", '[[rule.action]]\ntype = "exec"\nargv = []'))
    assert (exc.key, exc.reason) == ("rule[0].action[0].argv",
                                     "must name at least the program to run")


def test_exec_bad_template_names_the_argument() -> None:
    exc = error(rule("", '[[rule.action]]\ntype = "exec"\nargv = ["/bin/true", "ok", "{nme}"]'))
    assert exc.key == "rule[0].action[0].argv[2]"
    assert exc.reason.startswith("unknown field {nme}")


def test_exec_env_values_are_checked() -> None:
    exc = error(rule("", '[[rule.action]]\ntype = "exec"\nargv = ["/bin/true"]\n'
                     'env = { A = 1 }'))
    assert exc.key == "rule[0].action[0].env.A" and "expected a string" in exc.reason
    exc = error(rule("", '[[rule.action]]\ntype = "exec"\nargv = ["/bin/true"]\n'
                     'env = { A = "{bogus}" }'))
    assert exc.key == "rule[0].action[0].env.A" and "unknown field {bogus}" in exc.reason


def test_exec_unknown_user() -> None:
    exc = error(rule("", '[[rule.action]]\ntype = "exec"\nargv = ["/bin/true"]\n'
                     'user = "no-such-user-zz9"'))
    assert (exc.key, exc.reason) == ("rule[0].action[0].user", "no such user 'no-such-user-zz9'")


def test_log_message_template_error() -> None:
    exc = error(rule("", LOG_ACTION + 'message = "{state} {oops"'))
    assert exc.key == "rule[0].action[0].message" and "unclosed '{'" in exc.reason


def test_service_action_needs_unit() -> None:
    exc = error(rule("", '[[rule.action]]\ntype = "service"'))
    assert (exc.key, exc.reason) == ("rule[0].action[0].unit", "is required (a string)")
    exc = error(rule("", '[[rule.action]]\ntype = "service"\nunit = "x"\ncommand = "kill"'))
    assert exc.key == "rule[0].action[0].command" and "expected one of restart" in exc.reason


@pytest.mark.parametrize(("text", "key"), [
    ('[router]\ndrain_timeout = "10 parsecs"', "router.drain_timeout"),
    ('[router]\nspool_interval = "fast"', "router.spool_interval"),
    ('[hook]\nack_timeout = "-1s"', "hook.ack_timeout"),
    ('[hook]\nack_timeout = true', "hook.ack_timeout"),
    ('[defaults]\nexec_timeout = "1w"', "defaults.exec_timeout"),
    (rule('delay = "soon"'), "rule[0].delay"),
    (rule('max_age = "nan s"'), "rule[0].max_age"),
    (rule("", LOG_ACTION.replace('"log"', '"exec"') + 'argv = ["/bin/true"]\ntimeout = "x"'),
     "rule[0].action[0].timeout"),
])
def test_bad_durations(text: str, key: str) -> None:
    exc = error(text)
    assert exc.key == key
    assert "expected a duration such as '250ms', '2s', '5m'" in exc.reason


def test_negative_duration_number() -> None:
    exc = error("[router]\ndrain_timeout = -1")
    assert exc.key == "router.drain_timeout" and "cannot be negative" in exc.reason


def test_zero_spool_interval() -> None:
    exc = error("[router]\nspool_interval = 0")
    assert (exc.key, exc.reason) == ("router.spool_interval", "must be more than 0")


@pytest.mark.parametrize(("fifos", "key", "reason"), [
    ('"/run/k.fifo"', "router.fifos", "expected a list of paths or {path = ..., host = ...}"),
    ('["relative.fifo"]', "router.fifos[0]", "must be an absolute path, found 'relative.fifo'"),
    ('["/ok", 5]', "router.fifos[1]", "expected a path or a {path = ..., host = ...} table"),
    ('[{host = "kb2"}]', "router.fifos[0].path", "is required (a string)"),
    ('[{path = "/x", host = 2}]', "router.fifos[0].host", "expected a string"),
    ('[{path = "x"}]', "router.fifos[0]", "must be an absolute path"),
])
def test_bad_fifos(fifos: str, key: str, reason: str) -> None:
    exc = error(f"[router]\nfifos = {fifos}")
    assert exc.key == key and reason in exc.reason, str(exc)


def test_error_names_the_right_rule_and_action_index() -> None:
    text = rule("") + '[[rule]]\nid = "second"\n' + LOG_ACTION + LOG_ACTION + 'level = "x"\n'
    exc = error(text)
    assert exc.key == "rule[1].action[1].level"


# --------------------------------------------------------------------------- load()


def test_load_missing_file(tmp_path: Path) -> None:
    path = str(tmp_path / "nope.toml")
    with pytest.raises(ConfigError) as info:
        configmod.load(path)
    assert str(info.value) == f"{path}: file not found"


def test_load_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        configmod.load(str(tmp_path))
    assert str(info.value).startswith(f"{tmp_path}: cannot read: ")


def test_load_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'# caf\xe9\n')
    with pytest.raises(ConfigError) as info:
        configmod.load(str(path))
    assert str(info.value).startswith(f"{path}: not UTF-8")


def test_load_reads_the_file(tmp_path: Path) -> None:
    path = tmp_path / "k.toml"
    path.write_text('[hook]\nhost = "from-file"\n')
    os.chmod(path, stat.S_IRUSR | stat.S_IWUSR)
    cfg = configmod.load(str(path))
    assert cfg.path == str(path) and cfg.hook.host == "from-file"


def test_load_error_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "k.toml"
    path.write_text("[router]\nkeep_events = 'x'\n")
    with pytest.raises(ConfigError) as info:
        configmod.load(str(path))
    assert str(info.value) == (f"{path}: router.keep_events: expected an integer, "
                               "found a string")


def test_find_config_order(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("KNOTIFY_CONFIG", str(tmp_path / "env.toml"))
    assert paths.find_config("/explicit.toml") == "/explicit.toml"
    assert paths.find_config(None) == str(tmp_path / "env.toml")  # even if missing
    monkeypatch.delenv("KNOTIFY_CONFIG")
    found = paths.find_config(None)
    assert found is None or os.path.exists(found)


# --------------------------------------------------------------------------- CLI


def test_check_config_valid(kenv: KEnv) -> None:
    kenv.write_config(rule('state = "MASTER"\nfrom = "!INIT"') +
                      '\n[router]\nfifos = ["/run/k.fifo", {path = "/run/b.fifo", host = "b"}]\n')
    proc = kenv.cli("check-config")
    assert proc.returncode == 0
    assert proc.stdout.startswith(f"OK: {kenv.config}: 1 rule(s)")
    assert "rule r: on transition when state=MASTER from=!INIT" in proc.stdout
    assert "fifo     /run/b.fifo (host b)" in proc.stdout
    assert proc.stderr == ""


def test_check_config_quiet_and_explicit_file(kenv: KEnv, tmp_path: Path) -> None:
    other = tmp_path / "other.toml"
    other.write_text(rule(""))
    proc = kenv.cli("check-config", "-q", str(other))
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")


def test_check_config_embedded_default(kenv: KEnv) -> None:
    need(not os.path.exists(paths.SYSTEM_CONFIG), f"{paths.SYSTEM_CONFIG} exists on this machine")
    kenv.env.pop("KNOTIFY_CONFIG")
    kenv.env["HOME"] = str(kenv.root)  # no ~/.config/knotify/knotify.toml
    kenv.env.pop("XDG_CONFIG_HOME", None)
    proc = kenv.cli("check-config", check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("OK: <embedded default>: 1 rule(s)")


@pytest.mark.parametrize(("body", "key", "reason"), [
    ("[router]\nkeep_events = 'x'\n", "router.keep_events", "expected an integer"),
    ("[router]\nbogus = 1\n", "router.bogus", "unknown key"),
    (rule('state = "MASTR"'), "rule[0].state", "unknown value 'MASTR'"),
    (rule("", '[[rule.action]]\ntype = "mail"'), "rule[0].action[0].type",
     "found 'mail'"),
])
def test_check_config_invalid_names_file_key_reason(kenv: KEnv, body: str, key: str,
                                                    reason: str) -> None:
    kenv.write_config(body)
    proc = kenv.cli("check-config", check=False)
    assert proc.returncode != 0
    assert proc.stdout == ""
    [line] = proc.stderr.splitlines()
    assert line.startswith(f"knotify: {kenv.config}: {key}: ")
    assert reason in line
    assert "Traceback" not in proc.stderr


def test_check_config_bad_toml(kenv: KEnv) -> None:
    kenv.config.write_text("[paths\n")
    proc = kenv.cli("check-config", check=False)
    assert proc.returncode != 0
    assert proc.stderr.startswith(f"knotify: {kenv.config}: not valid TOML")


def test_check_config_missing_file(kenv: KEnv) -> None:
    proc = kenv.cli("check-config", str(kenv.root / "missing.toml"), check=False)
    assert proc.returncode != 0
    assert proc.stderr.strip() == f"knotify: {kenv.root / 'missing.toml'}: file not found"


def test_router_refuses_a_broken_config_with_exit_2(kenv: KEnv) -> None:
    kenv.write_config("[router]\nsynchronous = 'off'\n")
    proc = kenv.cli("run", check=False, timeout=30)
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"knotify: {kenv.config}: router.synchronous: ")
    assert "Traceback" not in proc.stderr


def test_program_path_with_a_closing_brace_is_a_path_not_a_template(tmp_path: Path) -> None:
    import os

    folder = tmp_path / "odd}dir"
    folder.mkdir()
    prog = folder / "run}me"
    prog.write_text("#!/bin/sh\n")
    prog.chmod(0o755)
    os.chmod(tmp_path, 0o755)
    config = configmod.parse(
        f'[[rule]]\nid = "x"\n[[rule.action]]\ntype = "exec"\nargv = ["{prog}", "{{name}}"]\n',
        "/etc/knotify/t.toml")
    action = config.rules[0].actions[0]
    assert action.describe().startswith(f"exec {prog} {{name}}")
    with pytest.raises(ConfigError, match=r"the program \(argv\[0\]\) cannot contain"):
        configmod.parse(f'[[rule]]\nid = "x"\n[[rule.action]]\ntype = "exec"\n'
                        f'argv = ["{folder}/{{name}}"]\n', "/etc/knotify/t.toml")


# --------------------------------------------------------------------------- frozen, reload

RELOAD_A = """
[paths]
runtime_dir = "/r"
state_dir = "/s"
[router]
listen = ["ipc:///r/extra.sock"]
max_keys = 100
spool_interval = "1s"
[cluster]
silent_after = "30s"
[[rule]]
id = "one"
[[rule.action]]
type = "log"
"""
RELOAD_B = RELOAD_A.replace('"ipc:///r/extra.sock"', '"ipc:///r/other.sock"').replace(
    "max_keys = 100", 'max_keys = 200\njournal = "/elsewhere.db"').replace(
    '"30s"', '"45s"').replace('id = "one"', 'id = "two"')


def test_the_config_is_frozen() -> None:
    import dataclasses

    cfg = configmod.parse(RELOAD_A, FILE)
    assert isinstance(cfg.rules, tuple) and isinstance(cfg.listen, tuple)
    assert isinstance(cfg.rules[0].actions, tuple) and isinstance(cfg.hook.endpoints, tuple)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.max_keys = 1  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.hook.host = "x"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.rules[0].match.prio_min = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        cfg.receivers["x"] = cfg.receivers.get("y")  # type: ignore[index]


def test_a_reload_keeps_what_needs_a_restart_and_names_it() -> None:
    old, new = configmod.parse(RELOAD_A, FILE), configmod.parse(RELOAD_B, FILE)
    assert configmod.restart_needed(old, new) == ["listen", "journal"]
    assert configmod.restart_needed(old, old) == []
    live = configmod.reloaded(old, new)
    assert (live.listen, live.journal) == (old.listen, old.journal)  # as started
    assert [r.id for r in live.rules] == ["two"] and live.max_keys == 200
    assert live.cluster.silent_after == 45.0
    assert live.alert_engine.result_dir == old.alert_engine.result_dir == "/s/outbox"
    assert old.max_keys == 100 and [r.id for r in old.rules] == ["one"]  # untouched


def test_the_alert_features_settings_are_frozen_too() -> None:
    """An Alertmanager receiver, [[alerts.inhibit]], fold_after, severity and send_resolved
    are parsed into frozen values like the rest, and reach the engine in one value."""
    import dataclasses

    cfg = configmod.parse("""
[alerts]
fold_after = 5
[[alerts.inhibit]]
source_matchers = ["kind=PEER", "state=PEER_SILENT"]
equal = ["host"]
[receivers.am]
type = "alertmanager"
urls = ["http://127.0.0.1:9093"]
labels = {env = "prod"}
[[rule]]
id = "page"
state = "FAULT"
[[rule.action]]
type = "alert"
receiver = "am"
severity = "warning"
""", FILE)
    am = cfg.receivers["am"].alertmanager
    assert am is not None and am.labels == (("env", "prod"),)
    assert cfg.alerts.fold_after == 5 and isinstance(cfg.alerts.inhibit, tuple)
    assert isinstance(cfg.alerts.inhibit[0].source, tuple)
    action = cfg.rules[0].actions[0]
    assert isinstance(action, AlertAction)
    assert cfg.rules[0].send_resolved and action.spec["severity"] == "warning"
    for value, name in ((am, "repost_interval"), (cfg.alerts, "fold_after"),
                        (cfg.alerts.inhibit[0], "equal"), (cfg.rules[0], "send_resolved")):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(value, name, None)
    engine = cfg.alert_engine
    assert (engine.alerts, engine.receivers, engine.rules, engine.cluster) == (
        cfg.alerts, cfg.receivers, cfg.rules, cfg.cluster)
    # No alert action: nothing to page the end of an incident to.
    quiet = configmod.parse('[[rule]]\nstate = "FAULT"\n' + LOG_ACTION, FILE)
    assert not quiet.rules[0].send_resolved
