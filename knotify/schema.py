"""Typed reading of TOML tables with errors that name the file, the key and the reason."""

from __future__ import annotations

from typing import Any

from knotify.errors import ConfigError
from knotify.units import parse_duration


def _type_name(value: object) -> str:
    return {
        str: "a string", int: "an integer", float: "a number", bool: "true/false",
        list: "a list", dict: "a table",
    }.get(type(value), type(value).__name__)


class Table:
    """One TOML table; every read is checked and remembered, so leftovers are reported."""

    def __init__(self, data: dict[str, Any], path: str, where: str) -> None:
        self.data = data
        self.path = path
        self.where = where
        self._seen: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.where}.{name}" if self.where else name

    def error(self, name: str, reason: str) -> ConfigError:
        return ConfigError(self.path, self.key(name), reason)

    def has(self, name: str) -> bool:
        return name in self.data

    def raw(self, name: str, default: Any = None) -> Any:
        self._seen.add(name)
        return self.data.get(name, default)

    def text(self, name: str, default: str | None = None, *, choices: tuple[str, ...] = ()) -> str:
        value = self.raw(name, default)
        if value is None:
            raise self.error(name, "is required (a string)")
        if not isinstance(value, str):
            raise self.error(name, f"expected a string, found {_type_name(value)}")
        if choices and value not in choices:
            raise self.error(name, f"expected one of {', '.join(choices)}, found {value!r}")
        return value

    def opt_text(self, name: str) -> str | None:
        if self.raw(name) is None:
            return None
        return self.text(name)

    def flag(self, name: str, default: bool) -> bool:
        value = self.raw(name, default)
        if not isinstance(value, bool):
            raise self.error(name, f"expected true or false, found {_type_name(value)}")
        return value

    def integer(self, name: str, default: int | None, *, lo: int | None = None,
            hi: int | None = None) -> int:
        value = self.raw(name, default)
        if value is None:
            raise self.error(name, "is required (an integer)")
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(name, f"expected an integer, found {_type_name(value)}")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise self.error(name, f"expected {lo}..{hi}, found {value}")
        return value

    def duration(self, name: str, default: float | str | None) -> float:
        value = self.raw(name, default)
        if value is None:
            raise self.error(name, "is required (a duration such as '2s')")
        try:
            return parse_duration(value)
        except ValueError as exc:
            raise self.error(name, str(exc)) from None

    def opt_duration(self, name: str) -> float | None:
        if self.raw(name) is None:
            return None
        return self.duration(name, None)

    def strings(self, name: str, default: list[str] | None = None, *,
                 allow_str: bool = False) -> list[str]:
        value = self.raw(name, default)
        if value is None:
            raise self.error(name, "is required (a list of strings)")
        if allow_str and isinstance(value, str):
            return [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.error(name, f"expected a list of strings, found {_type_name(value)}"
                             if not isinstance(value, list) else "expected a list of strings, "
                             "found an item that is not a string")
        return list(value)

    def table(self, name: str, default: dict[str, Any] | None = None) -> Table:
        value = self.raw(name, default if default is not None else {})
        if not isinstance(value, dict):
            raise self.error(name, f"expected a table, found {_type_name(value)}")
        return Table(value, self.path, self.key(name))

    def tables(self, name: str) -> list[Table]:
        value = self.raw(name, [])
        if isinstance(value, dict):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise self.error(name, f"expected [[{self.key(name)}]] tables")
        return [Table(v, self.path, f"{self.key(name)}[{i}]") for i, v in enumerate(value)]

    def done(self) -> None:
        """Refuse keys nobody read: a typo must not pass silently."""
        unknown = sorted(set(self.data) - self._seen)
        if unknown:
            raise self.error(unknown[0], "unknown key" + (
                f" (also unknown: {', '.join(unknown[1:])})" if len(unknown) > 1 else ""))
