"""instrument(): OpenTelemetry instruments read by the SDK's in-memory reader, span events
exported by its in-memory exporter, through every client over loopback."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import aiohttp
import anyio
import httpx
import pytest
import requests
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from circuitbreaker_http import BreakerConfig, BreakerRegistry, BreakerSnapshot, CircuitOpenError
from circuitbreaker_http.aiohttp import CircuitBreakerMiddleware
from circuitbreaker_http.httpx import AsyncCircuitBreakerTransport, CircuitBreakerTransport
from circuitbreaker_http.otel import instrument
from circuitbreaker_http.requests import CircuitBreakerAdapter
from circuitbreaker_http.testing import FlakyServer, ManualClock

TRIP2 = BreakerConfig(consecutive_failures=2, failure_rate=None, open_duration=10.0)
Points = dict[tuple[str, frozenset[tuple[str, Any]]], float]


@pytest.fixture
def reader() -> InMemoryMetricReader:
    return InMemoryMetricReader()


@pytest.fixture
def meters(reader: InMemoryMetricReader) -> Iterator[MeterProvider]:
    provider = MeterProvider(metric_readers=[reader])
    yield provider
    provider.shutdown()


@pytest.fixture
def spans() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


def points(reader: InMemoryMetricReader) -> Points:
    """Every data point of our instruments: (instrument, attributes) -> value."""
    out: Points = {}
    data = reader.get_metrics_data()
    if data is None:
        return out
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            if scope.scope.name != "circuitbreaker_http":
                continue
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    key = (metric.name, frozenset((point.attributes or {}).items()))
                    out[key] = point.value  # type: ignore[union-attr]
    return out


def expected(snaps: list[BreakerSnapshot]) -> Points:
    out: Points = {}
    for s in snaps:
        name = ("circuit_breaker.name", s.name)
        for state in ("closed", "open", "half_open", "forced_open", "disabled"):
            attrs = frozenset({name, ("circuit_breaker.state", state)})
            out[("circuit_breaker.state", attrs)] = 1 if s.state.value == state else 0
        for outcome, value in (
            ("success", s.total_calls - s.total_failures),
            ("failure", s.total_failures),
            ("ignored", s.total_ignored),
        ):
            out[
                ("circuit_breaker.calls", frozenset({name, ("circuit_breaker.outcome", outcome)}))
            ] = value
        out[("circuit_breaker.rejections", frozenset({name}))] = s.total_rejected
        out[("circuit_breaker.shadow_rejections", frozenset({name}))] = s.total_shadow_rejected
        out[("circuit_breaker.transitions", frozenset({name}))] = s.total_transitions
    return out


def path_key(method: str, url: str) -> str:
    return url.split("?")[0]


def test_instruments_report_the_snapshots_after_real_requests(
    flaky_server: FlakyServer, reader: InMemoryMetricReader, meters: MeterProvider
) -> None:
    clock = ManualClock()
    rules = {f"127.0.0.1:{flaky_server.port}/shadow": TRIP2.replace(enforce=False)}
    registry = BreakerRegistry(TRIP2, rules=rules, key=path_key, clock=clock)
    handle = instrument(registry, meter_provider=meters)
    with httpx.Client(
        transport=CircuitBreakerTransport(registry=registry), base_url=flaky_server.url
    ) as client:
        client.get("/status/200")
        client.get("/status/503")
        client.get("/status/503")
        for _ in range(3):
            with pytest.raises(httpx.TransportError):
                client.get("/status/503")
        for _ in range(3):
            client.get("/shadow?status=503")
    got = points(reader)
    assert got == expected(registry.snapshot())
    tripped = ("circuit_breaker.name", f"{flaky_server.url}/status/503")
    assert got[("circuit_breaker.rejections", frozenset({tripped}))] == 3
    assert got[("circuit_breaker.state", frozenset({tripped, ("circuit_breaker.state", "open")}))]
    shadow = ("circuit_breaker.name", f"{flaky_server.url}/shadow")
    assert got[("circuit_breaker.shadow_rejections", frozenset({shadow}))] == 1

    handle.close()
    assert handle.closed
    assert points(reader) == {}
    handle.close()  # again: nothing happens


def test_one_snapshot_serves_every_instrument_of_a_collection(
    reader: InMemoryMetricReader, meters: MeterProvider
) -> None:
    registry = BreakerRegistry()
    registry.get("x")
    taken: list[int] = []
    real = registry.snapshot

    def counting() -> list[BreakerSnapshot]:
        taken.append(1)
        return real()

    registry.snapshot = counting  # type: ignore[method-assign]
    instrument(registry, meter_provider=meters)
    for collections in (1, 2, 3):
        assert len(points(reader)) == 5 + 3 + 3
        assert len(taken) == collections


def rejected_events(exporter: InMemorySpanExporter) -> dict[str, list[dict[str, Any]]]:
    """Span name -> the attributes of its ``circuit_breaker.rejected`` events."""
    out: dict[str, list[dict[str, Any]]] = {}
    span: ReadableSpan
    for span in exporter.get_finished_spans():
        out[span.name] = [
            dict(event.attributes or {})
            for event in span.events
            if event.name == "circuit_breaker.rejected"
        ]
    return out


def tripped_registry(server: FlakyServer) -> BreakerRegistry:
    """Two failures trip ``server``'s breaker (open for 10 s on a clock that stays put);
    ``http://localhost:1`` is forced open."""
    registry = BreakerRegistry(TRIP2, clock=ManualClock())
    registry.get("http://localhost:1").force_open()
    return registry


def check_span_events(
    exporter: InMemorySpanExporter, server: FlakyServer, registry: BreakerRegistry
) -> None:
    events = rejected_events(exporter)
    assert events["passed"] == []
    assert events["failed"] == []
    assert events["rejected"] == [
        {
            "circuit_breaker.name": server.url,
            "circuit_breaker.state": "open",
            "circuit_breaker.retry_after": 10.0,
        }
    ]
    assert events["forced"] == [
        {"circuit_breaker.name": "http://localhost:1", "circuit_breaker.state": "forced_open"}
    ]
    assert registry.get(server.url).snapshot().total_rejected == 1


def test_span_event_through_httpx(
    flaky_server: FlakyServer, spans: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    provider, exporter = spans
    tracer = provider.get_tracer("test")
    registry = tripped_registry(flaky_server)
    handle = instrument(registry, meter_provider=MeterProvider())
    with httpx.Client(transport=CircuitBreakerTransport(registry=registry)) as client:
        with tracer.start_as_current_span("passed"):
            client.get(f"{flaky_server.url}/status/200")
        with tracer.start_as_current_span("failed"):
            client.get(f"{flaky_server.url}/status/503")
            client.get(f"{flaky_server.url}/status/503")
        with tracer.start_as_current_span("rejected"), pytest.raises(CircuitOpenError):
            client.get(f"{flaky_server.url}/status/200")
        with tracer.start_as_current_span("forced"), pytest.raises(CircuitOpenError):
            client.get("http://localhost:1/")
        check_span_events(exporter, flaky_server, registry)
        # No span: nothing to add to, and nothing breaks.
        with pytest.raises(CircuitOpenError):
            client.get(f"{flaky_server.url}/status/200")
        handle.close()
        with tracer.start_as_current_span("after close"), pytest.raises(CircuitOpenError):
            client.get(f"{flaky_server.url}/status/200")
    assert rejected_events(exporter)["after close"] == []


def test_span_event_through_requests(
    flaky_server: FlakyServer, spans: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    provider, exporter = spans
    tracer = provider.get_tracer("test")
    registry = tripped_registry(flaky_server)
    instrument(registry, meter_provider=MeterProvider())
    with requests.Session() as session:
        session.mount("http://", CircuitBreakerAdapter(registry=registry))
        with tracer.start_as_current_span("passed"):
            session.get(f"{flaky_server.url}/status/200")
        with tracer.start_as_current_span("failed"):
            session.get(f"{flaky_server.url}/status/503")
            session.get(f"{flaky_server.url}/status/503")
        with tracer.start_as_current_span("rejected"), pytest.raises(CircuitOpenError):
            session.get(f"{flaky_server.url}/status/200")
        with tracer.start_as_current_span("forced"), pytest.raises(CircuitOpenError):
            session.get("http://localhost:1/")
    check_span_events(exporter, flaky_server, registry)


@pytest.mark.anyio
async def test_span_event_through_httpx_async(
    flaky_server: FlakyServer, spans: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    provider, exporter = spans
    tracer = provider.get_tracer("test")
    registry = tripped_registry(flaky_server)
    instrument(registry, meter_provider=MeterProvider())
    async with httpx.AsyncClient(transport=AsyncCircuitBreakerTransport(registry=registry)) as c:
        with tracer.start_as_current_span("passed"):
            await c.get(f"{flaky_server.url}/status/200")
        with tracer.start_as_current_span("failed"):
            await c.get(f"{flaky_server.url}/status/503")
            await c.get(f"{flaky_server.url}/status/503")

        async def rejected_in_its_own_task() -> None:
            # A task of its own: the span must be the one current in that task.
            with tracer.start_as_current_span("rejected"), pytest.raises(CircuitOpenError):
                await c.get(f"{flaky_server.url}/status/200")

        async with anyio.create_task_group() as tg:
            tg.start_soon(rejected_in_its_own_task)
            with tracer.start_as_current_span("forced"), pytest.raises(CircuitOpenError):
                await c.get("http://localhost:1/")
    check_span_events(exporter, flaky_server, registry)


def test_span_event_through_aiohttp(
    flaky_server: FlakyServer, spans: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    provider, exporter = spans
    tracer = provider.get_tracer("test")
    registry = tripped_registry(flaky_server)
    instrument(registry, meter_provider=MeterProvider())

    async def main() -> None:
        middleware = CircuitBreakerMiddleware(registry=registry)
        async with aiohttp.ClientSession(middlewares=(middleware,)) as session:
            with tracer.start_as_current_span("passed"):
                async with session.get(f"{flaky_server.url}/status/200") as r:
                    await r.read()
            with tracer.start_as_current_span("failed"):
                for _ in range(2):
                    async with session.get(f"{flaky_server.url}/status/503") as r:
                        await r.read()
            with tracer.start_as_current_span("rejected"), pytest.raises(CircuitOpenError):
                await session.get(f"{flaky_server.url}/status/200")
            with tracer.start_as_current_span("forced"), pytest.raises(CircuitOpenError):
                await session.get("http://localhost:1/")

    anyio.run(main)
    check_span_events(exporter, flaky_server, registry)


def test_a_shadow_rejection_adds_no_span_event(
    flaky_server: FlakyServer, spans: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    provider, exporter = spans
    tracer = provider.get_tracer("test")
    registry = BreakerRegistry(TRIP2.replace(enforce=False), clock=ManualClock())
    instrument(registry, meter_provider=MeterProvider())
    with httpx.Client(transport=CircuitBreakerTransport(registry=registry)) as client:
        for _ in range(2):
            client.get(f"{flaky_server.url}/status/503")
        with tracer.start_as_current_span("shadow"):
            assert client.get(f"{flaky_server.url}/status/200").status_code == 200
    assert registry.get(flaky_server.url).snapshot().total_shadow_rejected == 1
    assert rejected_events(exporter) == {"shadow": []}


def test_span_events_can_be_left_out(
    flaky_server: FlakyServer, spans: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    provider, exporter = spans
    registry = BreakerRegistry(TRIP2, clock=ManualClock())
    registry.get("x").force_open()
    instrument(registry, meter_provider=MeterProvider(), span_events=False)
    with provider.get_tracer("test").start_as_current_span("off"), pytest.raises(CircuitOpenError):
        registry.get("x").call(lambda: None)
    assert rejected_events(exporter) == {"off": []}
