"""`msgbus bench` runs every workload and reports what the issue asks for (figures are
never asserted: speed is measured by the benchmark, not by tests)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bench.run import HEADLINE
from tests.support.paths import ROOT

pytestmark = pytest.mark.timeout(900)


def test_bench_smoke_run_reports_every_figure_beside_its_baseline(services, tmp_path):
    out = tmp_path / "results.json"
    done = subprocess.run(
        [sys.executable, "-m", "msgbus", "bench", "--smoke", "--json", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=840,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert json.loads(out.read_text()) == result
    for key in HEADLINE:
        assert isinstance(result[key], int | float) and result[key] > 0, (key, result.get(key))
    assert result["raw_drain_msgs_per_s"]["median"] > 0  # the baseline the ratios divide by
    assert {"bus", "raw"} <= set(result["latency_200"])
    assert result["producer"]["kombu_confirm_per_s"]["median"] > 0
    assert "confirm" in result["producer"]["confirms"]
    assert result["footprint"]["worker_rss_after_mb"] > 0
    assert result["mcp"]["one_client"]["calls_per_s"] > 0
    for backend in ("socket", "pool"):  # the script runner's A/B, both sides measured
        assert result["scripts"][backend]["deliver"]["cpu_us"] > 0
