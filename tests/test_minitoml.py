"""The hook's small config reader agrees with tomllib whenever it answers."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from knotify import minitoml

ROOT = Path(__file__).resolve().parent.parent


def wanted(data: dict[str, object]) -> dict[str, object]:
    out: dict[str, object] = {}
    for name in ("paths", "hook"):
        if isinstance(data.get(name), dict):
            out[name] = data[name]
    return out


def test_the_shipped_configs_take_the_fast_path_and_agree() -> None:
    for path in [ROOT / "config" / "knotify.toml", ROOT / "knotify" / "default.toml"]:
        text = path.read_text()
        fast = minitoml.read(text)
        assert fast is not None, path
        assert fast == wanted(tomllib.loads(text))


def test_header_lookalikes_inside_other_values_are_skipped() -> None:
    text = '''
[[rule]]
argv = ["a",
  "[hook]",
  ["nested"]]
message = """
[hook]
ack_timeout = 9
"""
other = \'\'\'
[paths]\'\'\'
[hook]
ack_timeout = "1s" # trailing comment
endpoints = ["ipc:///a", 'tcp://b:1']
[hook.curve]
server_key = "/k"
secret_key = "/s\\u00e9"
'''
    assert minitoml.read(text) == wanted(tomllib.loads(text)) == {
        "hook": {"ack_timeout": "1s", "endpoints": ["ipc:///a", "tcp://b:1"],
                 "curve": {"server_key": "/k", "secret_key": "/s\u00e9"}}}


def test_what_it_cannot_be_sure_of_is_left_to_tomllib() -> None:
    for text in ['hook = {ack_timeout = "1s"}\n', '[hook]\nack_timeout = """1s"""\n',
                 '[hook]\nendpoints = [\n"ipc:///a"]\n', '[hook]\na.b = 1\n',
                 '[hook]\n"quoted" = 1\n', '[hook]\nx = 1979-05-27\n', '[hook]\nx = 1\nx = 2\n',
                 '[[hook]]\nx = 1\n', '["hook"]\nx = 1\n', '[hook]\nx = {a = 1}\n',
                 '[hook]\nx = 1e3\n', '[hook]\nx = "unterminated\n']:
        assert minitoml.read(text) is None, text


KEYS = ["runtime_dir", "state_dir", "group", "ack_timeout", "spool_dir", "host", "endpoints",
        "server_key", "secret_key", "x"]
scalars = (st.text(max_size=8) | st.integers(-10**6, 10**6) | st.booleans()
           | st.floats(allow_nan=False, allow_infinity=False, width=32)
           | st.sampled_from(["250ms", "[hook]", '"""', "# no", "a\\b", "é", "\t"]))
values = scalars | st.lists(scalars, max_size=3)


def toml(value: object) -> st.SearchStrategy[str]:
    if isinstance(value, str):
        return st.sampled_from([json.dumps(value), json.dumps(value, ensure_ascii=False)]
                               + ([f"'{value}'"] if "'" not in value and "\n" not in value
                                  and all(c >= " " or c == "\t" for c in value) else []))
    if isinstance(value, bool):
        return st.just("true" if value else "false")
    if isinstance(value, int | float):
        return st.just(repr(value))
    assert isinstance(value, list)
    return st.tuples(*[toml(v) for v in value]).map(
        lambda parts: "[" + ", ".join(parts) + "]")


@st.composite
def documents(draw: st.DrawFn) -> str:
    out = []
    for section in draw(st.lists(st.sampled_from(["paths", "hook", "hook.curve", "router",
                                                  "[rule]", "rule.action", "log"]),
                                 max_size=5)):
        out.append(f"[{section}]")
        for key in draw(st.lists(st.sampled_from(KEYS), max_size=4)):
            value = draw(values)
            text = draw(toml(value))
            if draw(st.booleans()) and text.startswith("["):
                text = text.replace(", ", ",\n  ")  # multi-line arrays
            out.append(f"{key} = {text}" + draw(st.sampled_from(["", "  # note"])))
    return "\n".join(out) + "\n"


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents())
def test_agrees_with_tomllib_whenever_it_answers(text: str) -> None:
    fast = minitoml.read(text)
    try:
        real = tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return  # the hook then complains and uses defaults either way
    if fast is not None:
        assert fast == wanted(real)
