"""The Grafana dashboard and the alert rules use exactly the documented metric names."""

from __future__ import annotations

import json
import re

import yaml

from tests.support.contract import METRICS
from tests.support.paths import ROOT

DOCUMENTED = set(METRICS)


def names(text: str) -> set[str]:
    return set(re.findall(r"message_bus_[a-z_]+", text))


def test_dashboard_queries_only_documented_metrics_and_covers_them_all():
    dashboard = json.loads((ROOT / "deploy" / "grafana-dashboard.json").read_text())
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    assert names(exprs) == DOCUMENTED


def test_alert_rules_are_valid_yaml_and_use_documented_metrics():
    rules = yaml.safe_load((ROOT / "deploy" / "prometheus-alerts.yml").read_text())
    exprs = [r["expr"] for g in rules["groups"] for r in g["rules"]]
    assert exprs and names(" ".join(exprs)) <= DOCUMENTED
