"""BreakerCollector: a real prometheus_client exposition, parsed back, checked against snapshots."""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from circuitbreaker_http import BreakerConfig, BreakerRegistry, BreakerSnapshot, CircuitState
from circuitbreaker_http.httpx import CircuitBreakerTransport
from circuitbreaker_http.prometheus import BreakerCollector
from circuitbreaker_http.testing import FlakyServer, ManualClock

NS = "circuitbreaker_http"
TRIP2 = BreakerConfig(consecutive_failures=2, failure_rate=None, open_duration=10.0)
STATES = [state.value for state in CircuitState]

# Family name (as the parser gives it: counters without ``_total``) -> type.
FAMILIES = {
    f"{NS}_state": "gauge",
    f"{NS}_calls": "counter",
    f"{NS}_slow_calls": "counter",
    f"{NS}_rejected": "counter",
    f"{NS}_shadow_rejected": "counter",
    f"{NS}_transitions": "counter",
    f"{NS}_open_seconds": "counter",
    f"{NS}_window_calls": "gauge",
    f"{NS}_failure_ratio": "gauge",
    f"{NS}_slow_call_ratio": "gauge",
    f"{NS}_retry_after_seconds": "gauge",
}

Series = dict[tuple[str, frozenset[tuple[str, str]]], float]


def path_key(method: str, url: str) -> str:
    """One breaker per path (the query left out), so one server gives many keys."""
    return url.split("?")[0]


def scrape(metrics: CollectorRegistry) -> tuple[dict[str, str], Series]:
    """The exposition text parsed back: family types and every sample's value."""
    text = generate_latest(metrics).decode()
    types: dict[str, str] = {}
    series: Series = {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for sample in family.samples:
            key = (sample.name, frozenset(sample.labels.items()))
            assert key not in series, f"duplicate series {key}"
            series[key] = sample.value
    return types, series


def expected(snaps: list[BreakerSnapshot]) -> Series:
    """What API.md says the series are, computed from snapshots."""
    out: Series = {}

    def put(name: str, snap: BreakerSnapshot, value: float, **extra: str) -> None:
        out[(f"{NS}_{name}", frozenset({"breaker": snap.name, **extra}.items()))] = value

    for s in snaps:
        for state in STATES:
            put("state", s, 1.0 if s.state.value == state else 0.0, state=state)
        put("calls_total", s, s.total_calls - s.total_failures, outcome="success")
        put("calls_total", s, s.total_failures, outcome="failure")
        put("calls_total", s, s.total_ignored, outcome="ignored")
        put("slow_calls_total", s, s.total_slow_calls)
        put("rejected_total", s, s.total_rejected)
        put("shadow_rejected_total", s, s.total_shadow_rejected)
        put("transitions_total", s, s.total_transitions)
        put("open_seconds_total", s, s.open_seconds)
        put("window_calls", s, s.calls)
        put("failure_ratio", s, s.failures / s.calls if s.calls else math.nan)
        put("slow_call_ratio", s, s.slow_calls / s.calls if s.calls else math.nan)
        retry = s.retry_after if s.state is CircuitState.OPEN and s.retry_after else 0.0
        put("retry_after_seconds", s, retry)
    return out


def same(actual: Series, wanted: Series) -> None:
    assert set(actual) == set(wanted)
    for key, value in wanted.items():
        got = actual[key]
        if math.isnan(value):
            assert math.isnan(got), key
        else:
            assert got == pytest.approx(value), key


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(1000.0)


@pytest.fixture
def setup(
    flaky_server: FlakyServer, clock: ManualClock
) -> Iterator[tuple[BreakerRegistry, httpx.Client, CollectorRegistry]]:
    rules = {f"127.0.0.1:{flaky_server.port}/shadow": TRIP2.replace(enforce=False)}
    registry = BreakerRegistry(
        TRIP2.replace(slow_call_duration=0.5), rules=rules, key=path_key, clock=clock
    )
    metrics = CollectorRegistry()
    metrics.register(BreakerCollector(registry))
    with httpx.Client(
        transport=CircuitBreakerTransport(registry=registry), base_url=flaky_server.url
    ) as client:
        yield registry, client, metrics


def test_the_exposition_is_the_snapshots_after_real_requests(
    setup: tuple[BreakerRegistry, httpx.Client, CollectorRegistry], clock: ManualClock
) -> None:
    registry, client, metrics = setup
    base = str(client.base_url).rstrip("/")
    for _ in range(3):
        assert client.get("/status/200").status_code == 200
    # /status/503 trips after two failures, then rejects.
    for _ in range(2):
        assert client.get("/status/503").status_code == 503
    for _ in range(3):
        with pytest.raises(httpx.TransportError):
            client.get("/status/503")
    # Shadow mode: trips too, but lets calls through and counts them.
    for _ in range(2):
        assert client.get("/shadow?status=503").status_code == 503
    assert client.get("/shadow?status=200").status_code == 200
    registry.get(f"{base}/json").force_open()
    clock.advance(4.0)

    types, series = scrape(metrics)
    assert types == FAMILIES
    snaps = registry.snapshot()
    assert {s.name for s in snaps} == {
        f"{base}/status/200",
        f"{base}/status/503",
        f"{base}/shadow",
        f"{base}/json",
    }
    same(series, expected(snaps))

    # The numbers an on-call engineer reads, spelled out.
    tripped = {"breaker": f"{base}/status/503"}
    assert series[(f"{NS}_state", frozenset({**tripped, "state": "open"}.items()))] == 1.0
    assert series[(f"{NS}_rejected_total", frozenset(tripped.items()))] == 3.0
    assert series[(f"{NS}_retry_after_seconds", frozenset(tripped.items()))] == pytest.approx(6.0)
    assert series[(f"{NS}_open_seconds_total", frozenset(tripped.items()))] == pytest.approx(4.0)
    assert series[(f"{NS}_failure_ratio", frozenset(tripped.items()))] == 1.0
    shadow = frozenset({"breaker": f"{base}/shadow"}.items())
    assert series[(f"{NS}_shadow_rejected_total", shadow)] == 1.0
    assert series[(f"{NS}_rejected_total", shadow)] == 0.0
    forced = {"breaker": f"{base}/json"}
    assert series[(f"{NS}_state", frozenset({**forced, "state": "forced_open"}.items()))] == 1.0
    assert series[(f"{NS}_retry_after_seconds", frozenset(forced.items()))] == 0.0
    ok = frozenset({"breaker": f"{base}/status/200"}.items())
    assert series[(f"{NS}_calls_total", ok | {("outcome", "success")})] == 3.0


def test_a_second_scrape_shows_what_changed_since_the_first(
    setup: tuple[BreakerRegistry, httpx.Client, CollectorRegistry], clock: ManualClock
) -> None:
    registry, client, metrics = setup
    base = str(client.base_url).rstrip("/")
    client.get("/status/200")
    client.get("/status/503")
    same(scrape(metrics)[1], expected(registry.snapshot()))
    unchanged = scrape(metrics)[1]
    same(unchanged, expected(registry.snapshot()))
    # Every kind of change: calls, a trip, a rejection, time passing while open,
    # then half-open and closed again.
    client.get("/status/200")
    client.get("/status/503")
    with pytest.raises(httpx.TransportError):
        client.get("/status/503")
    clock.advance(2.5)
    same(scrape(metrics)[1], expected(registry.snapshot()))
    clock.advance(10.0)
    assert registry.get(f"{base}/status/503").state is CircuitState.HALF_OPEN
    same(scrape(metrics)[1], expected(registry.snapshot()))
    registry.get(f"{base}/status/503").reset()
    registry.get(f"{base}/status/200").disable()
    after = scrape(metrics)[1]
    same(after, expected(registry.snapshot()))
    disabled = frozenset({"breaker": f"{base}/status/200", "state": "disabled"}.items())
    assert after[(f"{NS}_state", disabled)] == 1.0


def test_ratios_are_nan_with_no_calls_and_slow_calls_are_counted(
    setup: tuple[BreakerRegistry, httpx.Client, CollectorRegistry], clock: ManualClock
) -> None:
    registry, _, metrics = setup
    registry.get("idle")
    breaker = registry.get("slow")
    breaker.call(clock.advance, 0.75)  # slower than slow_call_duration=0.5
    series = scrape(metrics)[1]
    idle = frozenset({"breaker": "idle"}.items())
    assert math.isnan(series[(f"{NS}_failure_ratio", idle)])
    assert math.isnan(series[(f"{NS}_slow_call_ratio", idle)])
    assert series[(f"{NS}_window_calls", idle)] == 0.0
    slow = frozenset({"breaker": "slow"}.items())
    assert series[(f"{NS}_slow_calls_total", slow)] == 1.0
    assert series[(f"{NS}_slow_call_ratio", slow)] == 1.0
    assert series[(f"{NS}_failure_ratio", slow)] == 0.0
    same(series, expected(registry.snapshot()))


def test_evicted_breakers_series_disappear(clock: ManualClock) -> None:
    registry = BreakerRegistry(TRIP2, max_breakers=3, clock=clock)
    metrics = CollectorRegistry()
    metrics.register(BreakerCollector(registry))
    for name in ("a", "b", "c"):
        registry.get(name).call(lambda: None)
    assert {dict(labels)["breaker"] for _, labels in scrape(metrics)[1]} == {"a", "b", "c"}
    clock.advance(60.0)  # every breaker idle past its window
    for name in ("d", "e"):
        registry.get(name).call(lambda: None)
    held = {breaker.name for breaker in registry}
    assert len(held) <= 4 and {"d", "e"} <= held and not {"a", "b", "c"} <= held
    series = scrape(metrics)[1]
    assert {dict(labels)["breaker"] for _, labels in series} == held
    same(series, expected(registry.snapshot()))


def test_a_namespace_prefixes_every_name() -> None:
    registry = BreakerRegistry()
    registry.get("x")
    metrics = CollectorRegistry()
    metrics.register(BreakerCollector(registry, namespace="myapp_cb"))
    types = scrape(metrics)[0]
    assert types == {name.replace(NS, "myapp_cb", 1): kind for name, kind in FAMILIES.items()}


@pytest.mark.parametrize("bad", ["", "9lives", "has space", "dash-ed", None])
def test_a_bad_namespace_is_a_value_error(bad: Any) -> None:
    with pytest.raises(ValueError, match="namespace"):
        BreakerCollector(BreakerRegistry(), namespace=bad)


def test_registering_takes_no_snapshot_and_describes_every_family() -> None:
    calls: list[int] = []

    class Source:
        def snapshot(self) -> list[BreakerSnapshot]:
            calls.append(1)
            return []

    collector = BreakerCollector(Source())
    CollectorRegistry().register(collector)
    assert calls == []
    assert {family.name: family.type for family in collector.describe()} == FAMILIES
    assert all(family.samples == [] for family in collector.describe())
    # No breaker: every family, none with a sample.
    assert {f.name: f.samples for f in collector.collect()} == {name: [] for name in FAMILIES}
    assert calls == [1]


class FakeStorage:
    """A storage as the collector's hook reads it (the real one is not built yet)."""

    def __init__(self, up: bool) -> None:
        self.up = up

    def stats(self) -> dict[str, Any]:
        return {
            "up": self.up,
            "errors": 3,
            "sync_buckets": [(0.005, 5), (0.05, 9), (math.inf, 10)],
            "sync_sum": 0.25,
        }


def test_storage_metrics_only_with_a_storage() -> None:
    registry = BreakerRegistry()
    registry.get("x")
    metrics = CollectorRegistry()
    collector = BreakerCollector(registry)
    metrics.register(collector)
    assert not any("storage" in name for name in scrape(metrics)[0])

    registry.storage = FakeStorage(up=False)  # type: ignore[attr-defined]
    types, series = scrape(metrics)
    assert {name: kind for name, kind in types.items() if "storage" in name} == {
        f"{NS}_storage_up": "gauge",
        f"{NS}_storage_errors": "counter",
        f"{NS}_storage_sync_seconds": "histogram",
    }
    none: frozenset[tuple[str, str]] = frozenset()
    assert series[(f"{NS}_storage_up", none)] == 0.0
    assert series[(f"{NS}_storage_errors_total", none)] == 3.0
    assert series[(f"{NS}_storage_sync_seconds_bucket", frozenset({("le", "+Inf")}))] == 10.0
    assert series[(f"{NS}_storage_sync_seconds_bucket", frozenset({("le", "0.005")}))] == 5.0
    assert series[(f"{NS}_storage_sync_seconds_count", none)] == 10.0
    assert series[(f"{NS}_storage_sync_seconds_sum", none)] == 0.25
    assert {f.name for f in collector.describe()} >= {f"{NS}_storage_up"}

    registry.storage = object()  # type: ignore[attr-defined]  # a storage without stats()
    assert not any("storage" in name for name in scrape(metrics)[0])


@pytest.mark.parametrize(
    ("module", "extra", "blocked"),
    [("prometheus", "prometheus", "prometheus_client"), ("otel", "otel", "opentelemetry")],
)
def test_a_missing_extra_names_it(module: str, extra: str, blocked: str) -> None:
    code = textwrap.dedent(
        f"""
        import sys
        sys.modules[{blocked!r}] = None
        try:
            import circuitbreaker_http.{module}
        except ImportError as exc:
            print(exc)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert f'pip install "circuitbreaker-http[{extra}]"' in result.stdout, result.stderr
