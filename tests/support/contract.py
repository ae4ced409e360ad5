"""Public names as the README documents them to users: the MCP tool profiles and the
Prometheus metrics. Read from the README, not imported from the product, so a test that
compares the product against them fails when either drifts from the other."""

from __future__ import annotations

import re

from tests.support.paths import ROOT

README = (ROOT / "README.md").read_text()


def _names(start: str, end: str, pattern: str = r"[a-z_]+") -> tuple[str, ...]:
    """The backticked names of the README between `start` and the next `end`."""
    text = README.split(start, 1)[1].split(end, 1)[0]
    return tuple(re.findall(rf"`({pattern})`", text))


CORE_TOOLS = _names("Tools, `core` profile (default, 8):", "`--profile full` adds")
FULL_TOOLS = CORE_TOOLS + _names("`--profile full` adds", "Every tool")
# A duration (`_seconds`) is a histogram: scraped and queried as its `_bucket` series.
METRICS = tuple(
    f"{name}_bucket" if name.endswith("_seconds") else name
    for name in _names(
        "`MESSAGE_BUS_METRICS_PORT`, default 9808):", "Grafana", r"message_bus_[a-z_]+"
    )
)
