"""What an action run ended with: the value an action returns and the journal keeps."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class Outcome:
    status: str
    exit_code: int | None = None
    output: str = ""
    detail: str = ""
