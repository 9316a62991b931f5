"""``[metrics]``: where the router serves Prometheus metrics (settings only: reading the
config never loads the HTTP side, :mod:`knotify.metrics`)."""

from __future__ import annotations

from dataclasses import dataclass

from knotify.schema import Table


@dataclass(slots=True, frozen=True)
class MetricsSettings:
    #: ``HOST:PORT`` (``[::1]:9650`` for IPv6); empty: no metrics server.
    listen: str = ""

    @property
    def address(self) -> tuple[str, int]:
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]"), int(port)


def parse_settings(top: Table) -> MetricsSettings:
    m = top.table("metrics")
    listen = m.text("listen", "")
    if listen:
        host, sep, port = listen.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise m.error("listen", f"expected HOST:PORT such as \"127.0.0.1:9650\", found "
                          f"{listen!r}")
    m.done()
    return MetricsSettings(listen)
