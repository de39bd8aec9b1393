"""docs/: the Grafana dashboard and the Prometheus alert rules use only metrics the collector
exports, and the rules pass promtool (checked and unit-tested) when it is installed."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from circuitbreaker_http import BreakerRegistry
from circuitbreaker_http.prometheus import BreakerCollector

DOCS = Path(__file__).resolve().parents[2] / "docs"
DASHBOARD = DOCS / "grafana-dashboard.json"
ALERTS = DOCS / "prometheus-alerts.yml"
ALERT_TESTS = DOCS / "prometheus-alerts.test.yml"
# A metric name in PromQL: our namespace, then name characters.
METRIC = re.compile(r"\bcircuitbreaker_http_[a-zA-Z0-9_]+")
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


def exported_names() -> set[str]:
    """Every sample name the collector can export, the storage's included."""
    registry = BreakerRegistry()
    registry.storage = object()  # type: ignore[attr-defined]  # describe() lists its families
    names = set()
    for family in BreakerCollector(registry).describe():
        for suffix in SUFFIXES[family.type]:
            names.add(family.name + suffix)
    return names


def test_the_exported_names_are_api_md_s() -> None:
    assert exported_names() == {
        "circuitbreaker_http_state",
        "circuitbreaker_http_calls_total",
        "circuitbreaker_http_slow_calls_total",
        "circuitbreaker_http_rejected_total",
        "circuitbreaker_http_shadow_rejected_total",
        "circuitbreaker_http_transitions_total",
        "circuitbreaker_http_open_seconds_total",
        "circuitbreaker_http_window_calls",
        "circuitbreaker_http_failure_ratio",
        "circuitbreaker_http_slow_call_ratio",
        "circuitbreaker_http_retry_after_seconds",
        "circuitbreaker_http_storage_up",
        "circuitbreaker_http_storage_errors_total",
        "circuitbreaker_http_storage_sync_seconds_bucket",
        "circuitbreaker_http_storage_sync_seconds_sum",
        "circuitbreaker_http_storage_sync_seconds_count",
    }


def dashboard_queries(node: Any) -> list[str]:
    """Every PromQL string in the dashboard: panel targets and template variable queries."""
    found: list[str] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("expr", "definition", "query") and isinstance(value, str):
                found.append(value)
            else:
                found.extend(dashboard_queries(value))
    elif isinstance(node, list):
        for item in node:
            found.extend(dashboard_queries(item))
    return found


def test_the_dashboard_parses_and_queries_only_exported_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    queries = dashboard_queries(dashboard)
    used = {name for query in queries for name in METRIC.findall(query)}
    assert used, "the dashboard queries no metric"
    assert used <= exported_names()
    titles = " ".join(panel["title"].lower() for panel in dashboard["panels"])
    for topic in ("state", "outcome", "rejections", "failure", "slow", "not closed", "transitions"):
        assert topic in titles, topic
    # Every breaker metric but the storage's appears on it.
    assert {n for n in exported_names() if "storage" not in n} - used == {
        "circuitbreaker_http_slow_calls_total"
    }
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            assert target["expr"].count("(") == target["expr"].count(")"), target["expr"]


def test_the_alert_rules_use_only_exported_metrics() -> None:
    text = ALERTS.read_text(encoding="utf-8")
    exprs = re.findall(r"^\s*expr: (.+)$", text, flags=re.MULTILINE)
    assert len(exprs) == 4
    used = {name for expr in exprs for name in METRIC.findall(expr)}
    assert used == {"circuitbreaker_http_state", "circuitbreaker_http_storage_up"}
    for name in ("CircuitBreakerOpen", "CircuitBreakerFlapping", "CircuitBreakerForcedOpen"):
        assert f"alert: {name}" in text
    assert "alert: CircuitBreakerStorageDown" in text


promtool = pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not on PATH")


@promtool
def test_promtool_checks_the_rules() -> None:
    result = subprocess.run(
        ["promtool", "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 4 rules found" in result.stdout + result.stderr


@promtool
def test_promtool_unit_tests_the_alerts() -> None:
    # Among them: flapping fires at five opens in fifteen minutes and not at four.
    result = subprocess.run(
        ["promtool", "test", "rules", str(ALERT_TESTS)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=DOCS,
    )
    assert result.returncode == 0, result.stdout + result.stderr
