"""What /metrics shows when the HTTP server runs in several processes.

Each process is told a shared directory (PROMETHEUS_MULTIPROC_DIR, set by
mcp_server.processes before any process imports prometheus_client), where prometheus_client
keeps every metric's value per process. /metrics then sums the counters and histograms of
all the processes (messages sent through any of them), and serves the gauges of the process
that answers: each one reads them from Redis and the broker alike, so summing them would
count an inbox once per process.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

from prometheus_client import REGISTRY
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector, CollectorRegistry

DIRECTORY_ENV = "PROMETHEUS_MULTIPROC_DIR"


class _AcrossProcesses(Collector):
    def __init__(self, directory: str) -> None:
        self.files = MultiProcessCollector(None, path=directory)

    def collect(self) -> Iterator[Metric]:
        summed = [f for f in self.files.collect() if f.type in ("counter", "histogram")]
        yield from summed
        names = {f.name for f in summed}
        for family in REGISTRY.collect():
            if family.name not in names:
                yield family


def registry() -> Any:
    """The registry /metrics serves: the default one for a server alone in its process."""
    directory = os.environ.get(DIRECTORY_ENV)
    if not directory:
        return REGISTRY
    shared = CollectorRegistry(auto_describe=False)
    shared.register(_AcrossProcesses(directory))
    return shared
