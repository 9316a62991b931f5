"""Small value parsers shared by the hook and the config loader (standard library only)."""

from __future__ import annotations

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: object) -> float:
    """Seconds from ``250ms``, ``2s``, ``5m``, ``1h``, ``1d`` or a plain number of seconds.

    Raises ValueError with the accepted forms when the value is none of them.
    """
    if isinstance(value, bool):
        raise ValueError(f"expected a duration such as '250ms', '2s', '5m', found {value!r}")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"a duration cannot be negative, found {value!r}")
        return float(value)
    if isinstance(value, str):
        text = value.strip().lower()
        for suffix in ("ms", "s", "m", "h", "d"):
            if text.endswith(suffix):
                number = text[: -len(suffix)].strip()
                try:
                    amount = float(number)
                except ValueError:
                    break
                if amount < 0 or amount != amount or amount == float("inf"):
                    break
                return amount * _UNITS[suffix]
        else:
            try:
                amount = float(text)
            except ValueError:
                pass
            else:
                if amount >= 0 and amount == amount and amount != float("inf"):
                    return amount
    raise ValueError(f"expected a duration such as '250ms', '2s', '5m', '1h', found {value!r}")


def format_duration(seconds: float) -> str:
    """A short human form: ``850ms``, ``12s``, ``3m04s``, ``2h05m``, ``3d04h``."""
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.1f}s" if seconds < 10 else f"{seconds:.0f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"
