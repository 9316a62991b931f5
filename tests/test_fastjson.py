"""fastjson (the hook's JSON encoder, no ``import json``) writes what :mod:`json` writes."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from knotify import fastjson

#: Every code point, lone surrogates included (an argv byte that is not UTF-8 becomes one).
_text = st.text(st.characters(codec=None, categories=None), max_size=20)
_scalars = (st.none() | st.booleans() | st.integers() | st.integers(-2**70, 2**70)
            | st.floats(allow_nan=False, allow_infinity=False) | _text)
json_values = st.recursive(
    _scalars,
    lambda inner: (st.lists(inner, max_size=5) | st.tuples(inner, inner)
                   | st.dictionaries(_text, inner, max_size=5)),
    max_leaves=40,
)
#: Values JSON has no form for, or that fastjson refuses on purpose (non-string keys).
_other = (st.floats() | st.binary(max_size=4) | st.sets(st.integers(), max_size=2)
          | st.complex_numbers() | st.dictionaries(st.integers() | st.none() | st.booleans(),
                                                   st.integers(), min_size=1, max_size=2))
any_values = st.recursive(
    _scalars | _other,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_text, inner, max_size=4),
    max_leaves=20,
)


def reference(value: object) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


@settings(max_examples=400)
@given(json_values)
def test_every_json_value_is_written_exactly_as_json_dumps_writes_it(value: object) -> None:
    assert fastjson.dumps(value) == reference(value)


@settings(max_examples=400)
@given(any_values)
def test_whatever_it_accepts_it_writes_as_json_dumps_and_the_rest_it_refuses(
    value: object
) -> None:
    try:
        out = fastjson.dumps(value)
    except (TypeError, ValueError):
        return  # refused: the caller hears why (the hook spools nothing it cannot write)
    assert out == reference(value)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, [1.0, math.nan]])
def test_nan_and_infinity_are_refused_not_written_as_javascript(value: object) -> None:
    with pytest.raises(ValueError, match="NaN and infinity are not JSON"):
        fastjson.dumps(value)


@pytest.mark.parametrize("value", [{1: "a"}, {None: 1}, b"x", {1, 2}, object()])
def test_what_json_has_no_form_for_is_a_type_error(value: object) -> None:
    with pytest.raises(TypeError):
        fastjson.dumps(value)


def test_subclasses_of_the_json_types_are_written_as_their_base() -> None:
    import enum

    class Level(enum.IntEnum):
        HIGH = 2

    class Name(str):
        pass

    value = {"level": Level.HIGH, "name": Name("é"), "flag": True}
    assert fastjson.dumps(value) == reference(value) == '{"level":2,"name":"\\u00e9","flag":true}'
