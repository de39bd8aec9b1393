"""Measure what the httpx transports add to a request, beside interlock-cb.

Three sections, each a median over interleaved repeats taken in one run
(every repeat measures every contender once, in an order that rotates from
repeat to repeat, so slow drift of the machine hits all alike):

1. closed requests: µs per ``client.get(url)`` through
   ``httpx.Client(transport=httpx.MockTransport(handler))`` bare, through
   ``CircuitBreakerTransport`` around the same mock, and through interlock-cb's
   httpx transport; the same with ``httpx.AsyncClient`` under asyncio;
2. short-circuited requests: µs per request whose breaker is forced open
   (raising ``CircuitOpenError``, or answering a ``FallbackResponse``), against
   the bare request of section 1;
3. keying: ns per ``transport._gate._key_of(request)`` for ``by_host`` and
   ``by_route``, and per ``_gate.route(request)`` for context.

The mock handler answers ``200 ok`` at once, so section 1 shows the whole
cost of the breaker against the cheapest request httpx can make: on a real
network the share is far smaller. interlock-cb is measured when importable
and skipped with a note otherwise. ``--profile`` adds a cProfile of the
transport path. Run ``python benchmarks/bench_httpx.py --help`` for the
options; ``benchmarks/README.md`` explains each figure.

This is a benchmark that prints, not a test: it asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import functools
import gc
import importlib
import io
import json
import logging
import os
import platform
import pstats
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from itertools import repeat
from typing import Any, TypeVar

import httpx
from _common import Loop, call_loop, call_loop_rejected, rotated, summary, version_of

from circuitbreaker_http import CircuitOpenError, FallbackResponse, by_route
from circuitbreaker_http.httpx import AsyncCircuitBreakerTransport, CircuitBreakerTransport

OURS = "circuitbreaker-http"
PEER = "interlock-cb"

ORIGIN = "http://bench.test"
URL = ORIGIN + "/users/42"
ROUTES = ("/users/{id}", "/users/me", "/orders/{id}/items")

# The aims, printed beside the figures.
AIM_ADDED_PCT = 5.0  # a closed request through our transport, over a bare one
AIM_SHORT_RATIO = 0.5  # a short-circuited request, against a bare one
AIM_KEY_NS = 500.0  # one keying call

CHUNK_REQUESTS = 50  # requests between two looks at the time budget
CHUNK_KEYS = 10_000  # keying calls between two looks at the time budget
CHUNK_TRANSPORT = 200  # transport calls between two looks at the time budget

"""Runs its operation ``n`` times in a tight loop."""

AsyncLoop = Callable[[int], Awaitable[None]]
"""The async twin of :data:`Loop`."""


@dataclass(frozen=True)
class Mode:
    """How long to measure: repeat count and the time budget of one sample."""

    name: str
    repeats: int
    request_s: float  # one sample of sections 1 and 2
    key_s: float  # one sample of section 3


MODES = {
    "default": Mode("default", repeats=15, request_s=0.2, key_s=0.05),
    "quick": Mode("quick", repeats=5, request_s=0.07, key_s=0.02),
}


def handler(request: httpx.Request) -> httpx.Response:
    """The upstream: ``200 ok`` at once."""
    return httpx.Response(200, content=b"ok")


# -- tight loops ----------------------------------------------------------------


def sync_get(client: httpx.Client) -> Loop:
    """Loop over ``client.get(URL)``."""

    def loop(n: int) -> None:
        get, url = client.get, URL
        for _ in repeat(None, n):
            get(url)

    return loop


def sync_get_rejected(client: httpx.Client, error: type[BaseException]) -> Loop:
    """Loop over a short-circuited ``client.get(URL)``, catching ``error``."""

    def loop(n: int) -> None:
        get, url, exc = client.get, URL, error
        for _ in repeat(None, n):
            try:  # noqa: SIM105 - contextlib.suppress would cost more than what is measured
                get(url)
            except exc:
                pass

    return loop


def async_get(client: httpx.AsyncClient) -> AsyncLoop:
    """Loop over ``await client.get(URL)``."""

    async def loop(n: int) -> None:
        get, url = client.get, URL
        for _ in repeat(None, n):
            await get(url)

    return loop


def async_get_rejected(client: httpx.AsyncClient, error: type[BaseException]) -> AsyncLoop:
    """Loop over a short-circuited ``await client.get(URL)``, catching ``error``."""

    async def loop(n: int) -> None:
        get, url, exc = client.get, URL, error
        for _ in repeat(None, n):
            try:  # noqa: SIM105 - contextlib.suppress would cost more than what is measured
                await get(url)
            except exc:
                pass

    return loop


def time_loop(loop: Loop, chunk: int, budget_s: float) -> float:
    """Return ns per iteration of ``loop``, run in chunks until ``budget_s`` has passed.

    The garbage collector is off meanwhile, as in ``timeit``; it runs between
    samples instead.
    """
    gc.collect()
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        done = 0
        start = time.perf_counter_ns()
        deadline = start + int(budget_s * 1e9)
        while True:
            loop(chunk)
            done += chunk
            if time.perf_counter_ns() >= deadline:
                break
        elapsed = time.perf_counter_ns() - start
    finally:
        if gc_was_enabled:
            gc.enable()
    return elapsed / done


async def _time_async(loop: AsyncLoop, chunk: int, budget_s: float) -> float:
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        done = 0
        start = time.perf_counter_ns()
        deadline = start + int(budget_s * 1e9)
        while True:
            await loop(chunk)
            done += chunk
            if time.perf_counter_ns() >= deadline:
                break
        elapsed = time.perf_counter_ns() - start
    finally:
        if gc_was_enabled:
            gc.enable()
    return elapsed / done


T = TypeVar("T")


class LoopRunner:
    """One asyncio event loop for the whole run (``asyncio.Runner`` needs Python 3.11)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()

    def run(self, awaitable: Awaitable[T]) -> T:
        """Run ``awaitable`` to completion on the loop."""
        return self.loop.run_until_complete(awaitable)

    def time_async(self, loop: AsyncLoop, chunk: int, budget_s: float) -> float:
        """The async twin of :func:`time_loop`, timed inside the event loop."""
        return self.run(_time_async(loop, chunk, budget_s))

    def close_client(self, client: httpx.AsyncClient) -> None:
        """Close an async client on the loop."""
        self.run(client.aclose())

    def close(self) -> None:
        """Close the loop."""
        self.run(self.loop.shutdown_asyncgens())
        self.loop.close()


# -- contenders -------------------------------------------------------------------


@dataclass
class Setup:
    """Every client and loop of one run, and what to close afterwards."""

    runner: LoopRunner
    sync: dict[str, Loop] = field(default_factory=dict)  # section 1, sync
    aio: dict[str, AsyncLoop] = field(default_factory=dict)  # section 1, async
    short_sync: dict[str, Loop] = field(default_factory=dict)  # section 2, sync
    short_aio: dict[str, AsyncLoop] = field(default_factory=dict)  # section 2, async
    keys: dict[str, Loop] = field(default_factory=dict)  # section 3
    transport: dict[str, Loop] = field(default_factory=dict)  # section 4
    via: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    closers: list[Callable[[], object]] = field(default_factory=list)
    profile_targets: dict[str, Loop] = field(default_factory=dict)


BARE = "bare MockTransport"
RAISE = f"{OURS}, raise"
FALLBACK = f"{OURS}, FallbackResponse"
PEER_RAISE = f"{PEER}, raise"
KEY_HOST = "_key_of, by_host"
KEY_ROUTE = "_key_of, by_route"
ROUTE_HOST = "route(), by_host"
ROUTE_ROUTE = "route(), by_route"


def expect(ok: bool, what: str) -> None:
    """Stop the run when a contender is not set up as the figures assume."""
    if not ok:
        raise RuntimeError(f"bench_httpx set-up check failed: {what}")


def build_ours(s: Setup) -> None:
    """Bare clients, our transports (closed, forced open, with a fallback), and keying."""
    runner = s.runner
    mock = httpx.MockTransport(handler)

    bare = httpx.Client(transport=mock)
    abare = httpx.AsyncClient(transport=mock)
    closed_t = CircuitBreakerTransport(httpx.MockTransport(handler))
    closed = httpx.Client(transport=closed_t)
    aclosed = httpx.AsyncClient(
        transport=AsyncCircuitBreakerTransport(httpx.MockTransport(handler))
    )

    expect(bare.get(URL).status_code == 200, "bare request")
    response = closed.get(URL)
    expect(response.status_code == 200, "closed request through our transport")
    expect(response.extensions["circuit_breaker"]["state"] == "closed", "the breaker saw it")
    expect(runner.run(aclosed.get(URL)).status_code == 200, "closed async request")

    # Forced open via the registry: raising, and answering a FallbackResponse.
    raising_t = CircuitBreakerTransport(httpx.MockTransport(handler))
    raising_t.registry.get(ORIGIN).force_open()
    raising = httpx.Client(transport=raising_t)
    araising_t = AsyncCircuitBreakerTransport(httpx.MockTransport(handler))
    araising_t.registry.get(ORIGIN).force_open()
    araising = httpx.AsyncClient(transport=araising_t)
    busy = FallbackResponse(503, content=b"busy")
    fallback_t = CircuitBreakerTransport(httpx.MockTransport(handler), fallback=busy)
    fallback_t.registry.get(ORIGIN).force_open()
    fallback = httpx.Client(transport=fallback_t)
    afallback_t = AsyncCircuitBreakerTransport(httpx.MockTransport(handler), fallback=busy)
    afallback_t.registry.get(ORIGIN).force_open()
    afallback = httpx.AsyncClient(transport=afallback_t)

    try:
        raising.get(URL)
        expect(False, "a forced-open breaker raises")
    except CircuitOpenError:
        pass
    answer = fallback.get(URL)
    expect(answer.status_code == 503, "the fallback answers 503")
    expect(answer.headers.get("X-Circuit-Breaker") == "open", "the fallback is marked")
    expect(runner.run(afallback.get(URL)).status_code == 503, "the async fallback answers")

    s.sync.update({BARE: sync_get(bare), OURS: sync_get(closed)})
    s.aio.update({BARE: async_get(abare), OURS: async_get(aclosed)})
    s.short_sync.update(
        {RAISE: sync_get_rejected(raising, CircuitOpenError), FALLBACK: sync_get(fallback)}
    )
    s.short_aio.update(
        {RAISE: async_get_rejected(araising, CircuitOpenError), FALLBACK: async_get(afallback)}
    )

    # Keying, on a request built once.
    request = closed.build_request("GET", URL)
    route_t = CircuitBreakerTransport(httpx.MockTransport(handler), key=by_route(*ROUTES))
    expect(closed_t._gate._key_of(request) == ORIGIN, "by_host key")
    expect(route_t._gate._key_of(request) == ORIGIN + "/users/{id}", "by_route key")
    s.keys.update(
        {
            KEY_HOST: call_loop(closed_t._gate._key_of, request),
            KEY_ROUTE: call_loop(route_t._gate._key_of, request),
            ROUTE_HOST: call_loop(closed_t._gate.route, request),
            ROUTE_ROUTE: call_loop(route_t._gate.route, request),
        }
    )

    # The transports alone, on the same prebuilt request.
    s.transport.update(
        {
            BARE: call_loop(mock.handle_request, request),
            OURS: call_loop(closed_t.handle_request, request),
            RAISE: call_loop_rejected(raising_t.handle_request, request, CircuitOpenError),
            FALLBACK: call_loop(fallback_t.handle_request, request),
        }
    )

    s.via[OURS] = (
        "httpx.Client(transport=CircuitBreakerTransport(httpx.MockTransport(handler))); "
        "forced open by transport.registry.get(origin).force_open()"
    )
    s.profile_targets.update(
        {
            "closed request through CircuitBreakerTransport": sync_get(closed),
            "bare MockTransport request": sync_get(bare),
            "short-circuited request (raise)": sync_get_rejected(raising, CircuitOpenError),
        }
    )
    for client in (bare, closed, raising, fallback):
        s.closers.append(client.close)
    for aclient in (abare, aclosed, araising, afallback):
        s.closers.append(functools.partial(runner.close_client, aclient))


def build_peer(s: Setup) -> None:
    """interlock-cb's httpx transports, closed and forced open."""
    try:
        il: Any = importlib.import_module("interlock")
        ilx: Any = importlib.import_module("interlock.integrations.httpx")
    except ImportError as exc:
        s.skipped[PEER] = f"not importable: {exc}"
        return
    runner = s.runner
    closed = httpx.Client(transport=ilx.CircuitBreakerTransport(httpx.MockTransport(handler)))
    aclosed = httpx.AsyncClient(
        transport=ilx.AsyncCircuitBreakerTransport(httpx.MockTransport(handler))
    )
    expect(closed.get(URL).status_code == 200, f"closed request through {PEER}")
    expect(runner.run(aclosed.get(URL)).status_code == 200, f"closed async request, {PEER}")

    raising_t = ilx.CircuitBreakerTransport(httpx.MockTransport(handler))
    raising_t.registry.get("bench.test").force_open()  # its default key is the host
    raising = httpx.Client(transport=raising_t)
    araising_t = ilx.AsyncCircuitBreakerTransport(httpx.MockTransport(handler))
    araising_t.registry.get("bench.test").force_open()
    araising = httpx.AsyncClient(transport=araising_t)
    error: type[BaseException] = il.CircuitOpenError
    try:
        raising.get(URL)
        expect(False, f"a forced-open {PEER} breaker raises")
    except error:
        pass

    s.sync[PEER] = sync_get(closed)
    s.aio[PEER] = async_get(aclosed)
    s.short_sync[PEER_RAISE] = sync_get_rejected(raising, error)
    s.short_aio[PEER_RAISE] = async_get_rejected(araising, error)
    request = closed.build_request("GET", URL)
    s.transport[PEER] = call_loop(closed._transport.handle_request, request)
    s.transport[PEER_RAISE] = call_loop_rejected(raising_t.handle_request, request, error)
    s.via[PEER] = (
        "httpx.Client(transport=interlock.integrations.httpx.CircuitBreakerTransport("
        "httpx.MockTransport(handler))); forced open by transport.registry.get(host).force_open()"
    )
    for client in (closed, raising):
        s.closers.append(client.close)
    for aclient in (aclosed, araising):
        s.closers.append(functools.partial(runner.close_client, aclient))


# -- measuring --------------------------------------------------------------------


Samples = dict[str, list[float]]
"""Per-repeat samples, by figure name."""


def measure(s: Setup, mode: Mode, progress: bool) -> Samples:
    """Run every repeat of all three sections; return the raw per-repeat figures."""
    runner = s.runner
    out: Samples = {}

    def add(name: str, value: float) -> None:
        out.setdefault(name, []).append(value)

    # Warm up every loop once before anything counts.
    for loop in [*s.sync.values(), *s.short_sync.values()]:
        loop(200)
    for aloop in [*s.aio.values(), *s.short_aio.values()]:
        runner.run(aloop(200))
    for loop in s.keys.values():
        loop(5_000)
    for loop in s.transport.values():
        loop(1_000)

    # One flat list of samples per repeat, rotated as a whole.
    jobs: dict[str, Callable[[], float]] = {}
    for name, loop in {**s.sync, **{f"short {k}": v for k, v in s.short_sync.items()}}.items():
        jobs[f"sync {name}"] = functools.partial(time_loop, loop, CHUNK_REQUESTS, mode.request_s)
    for name, aloop in {**s.aio, **{f"short {k}": v for k, v in s.short_aio.items()}}.items():
        jobs[f"async {name}"] = functools.partial(
            runner.time_async, aloop, CHUNK_REQUESTS, mode.request_s
        )
    for name, loop in s.keys.items():
        jobs[f"key {name}"] = functools.partial(time_loop, loop, CHUNK_KEYS, mode.key_s)
    for name, loop in s.transport.items():
        jobs[f"transport {name}"] = functools.partial(time_loop, loop, CHUNK_TRANSPORT, mode.key_s)

    for r in range(mode.repeats):
        if progress:
            print(f"  repeat {r + 1}/{mode.repeats}", file=sys.stderr, flush=True)
        got = {name: jobs[name]() for name in rotated(list(jobs), r)}
        for flavour in ("sync", "async"):
            bare = got[f"{flavour} {BARE}"]
            add(f"{flavour} {BARE} us", bare / 1000)
            for name in s.sync if flavour == "sync" else s.aio:
                if name == BARE:
                    continue
                ns = got[f"{flavour} {name}"]
                add(f"{flavour} {name} us", ns / 1000)
                add(f"{flavour} {name} added us", (ns - bare) / 1000)
                add(f"{flavour} {name} added pct", (ns / bare - 1) * 100)
            for name in s.short_sync if flavour == "sync" else s.short_aio:
                ns = got[f"{flavour} short {name}"]
                add(f"{flavour} short {name} us", ns / 1000)
                add(f"{flavour} short {name} ratio", ns / bare)
            if OURS in s.sync and PEER in s.sync:
                ours, peer = got[f"{flavour} {OURS}"], got[f"{flavour} {PEER}"]
                add(f"{flavour} ours minus peer us", (ours - peer) / 1000)
        for name in s.keys:
            add(f"key {name} ns", got[f"key {name}"])
        bare_t, bare_c = got[f"transport {BARE}"], got[f"sync {BARE}"]
        for name in s.transport:
            ns = got[f"transport {name}"]
            add(f"transport {name} us", ns / 1000)
            add(f"transport {name} added us", (ns - bare_t) / 1000)
            add(f"transport {name} ratio", ns / bare_t)
            add(f"transport {name} client ratio", ns / bare_c)
    return out


# -- reporting ----------------------------------------------------------------------


def to_json(s: Setup, samples: Samples, mode: Mode, seconds: float) -> dict[str, Any]:
    """Collect the run into plain data."""
    figures = {name: summary(values) for name, values in samples.items()}
    data: dict[str, Any] = {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "mode": mode.name,
        "repeats": mode.repeats,
        "request_sample_s": mode.request_s,
        "key_sample_s": mode.key_s,
        "seconds": round(seconds, 1),
        "url": URL,
        "versions": {
            "httpx": version_of("httpx"),
            OURS: version_of(OURS),
            **({PEER: version_of(PEER)} if PEER in s.via else {}),
        },
        "via": s.via,
        "skipped": s.skipped,
        "aims": {
            "closed_added_pct_max": AIM_ADDED_PCT,
            "closed_added_vs_peer": f"no more than {PEER} adds",
            "short_circuit_ratio_max": AIM_SHORT_RATIO,
            "key_ns_max": AIM_KEY_NS,
        },
        "closed": {},
        "short_circuit": {},
        "keying_ns": {},
        "transport_alone": {},
    }
    for flavour in ("sync", "async"):
        closed: dict[str, Any] = {"bare_us": figures[f"{flavour} {BARE} us"]}
        for name in s.sync if flavour == "sync" else s.aio:
            if name != BARE:
                closed[name] = {
                    "us": figures[f"{flavour} {name} us"],
                    "added_us": figures[f"{flavour} {name} added us"],
                    "added_pct": figures[f"{flavour} {name} added pct"],
                }
        if f"{flavour} ours minus peer us" in figures:
            closed["ours_minus_peer_us"] = figures[f"{flavour} ours minus peer us"]
        data["closed"][flavour] = closed
        data["short_circuit"][flavour] = {
            name: {
                "us": figures[f"{flavour} short {name} us"],
                "ratio_to_bare": figures[f"{flavour} short {name} ratio"],
            }
            for name in (s.short_sync if flavour == "sync" else s.short_aio)
        }
    data["keying_ns"] = {name: figures[f"key {name} ns"] for name in s.keys}
    data["transport_alone"] = {
        name: {
            "us": figures[f"transport {name} us"],
            "added_us": figures[f"transport {name} added us"],
            "ratio_to_bare_transport": figures[f"transport {name} ratio"],
            "ratio_to_bare_client_request": figures[f"transport {name} client ratio"],
        }
        for name in s.transport
    }
    data["verdicts"] = verdicts(data)
    return data


def verdicts(data: dict[str, Any]) -> dict[str, bool]:
    """Whether each aim was met, by the medians."""
    out: dict[str, bool] = {}
    for flavour in ("sync", "async"):
        closed = data["closed"][flavour]
        out[f"{flavour} closed <= {AIM_ADDED_PCT:.0f}%"] = (
            closed[OURS]["added_pct"]["median"] <= AIM_ADDED_PCT
        )
        if PEER in closed:
            out[f"{flavour} closed <= {PEER}"] = closed["ours_minus_peer_us"]["median"] <= 0
        for name in (RAISE, FALLBACK):
            ratio = data["short_circuit"][flavour][name]["ratio_to_bare"]["median"]
            out[f"{flavour} short-circuit ({name.split(', ')[1]}) < {AIM_SHORT_RATIO}x"] = (
                ratio < AIM_SHORT_RATIO
            )
    for name in (KEY_HOST, KEY_ROUTE):
        out[f"{name} < {AIM_KEY_NS:.0f} ns"] = data["keying_ns"][name]["median"] < AIM_KEY_NS
    return out


def iqr(s: dict[str, float], digits: int = 2, sign: str = "") -> str:
    """Format the quartiles of a summary as ``[p25..p75]``."""
    return f"[{s['p25']:{sign}.{digits}f}..{s['p75']:{sign}.{digits}f}]"


def render(data: dict[str, Any]) -> str:
    """Render the JSON data as text tables."""
    lines = [
        f"circuitbreaker-http bench_httpx: {data['implementation']} {data['python']}, "
        f"httpx {data['versions']['httpx']}, {data['cpus']} CPUs, mode {data['mode']}: "
        f"medians of {data['repeats']} interleaved repeats [p25..p75], {data['seconds']} s",
        f"every request: client.get({data['url']!r}); the mock answers 200 'ok' at once",
        "",
        "1. closed requests: us per request, and what the breaker adds over the bare client",
    ]
    w = 40  # the longest row name, indented
    lines.append(
        f"   {'':{w}} {'us':>7} {'+us':>7} {'p25..p75':^15} {'+%':>7}   (aim: +% <= "
        f"{AIM_ADDED_PCT:.0f}, and +us no more than {PEER})"
    )
    for flavour, title in (("sync", "httpx.Client"), ("async", "httpx.AsyncClient, asyncio")):
        closed = data["closed"][flavour]
        lines.append(f"   {title}")
        lines.append(f"   {'  ' + BARE:{w}} {closed['bare_us']['median']:>7.2f}")
        for name, c in closed.items():
            if name in ("bare_us", "ours_minus_peer_us"):
                continue
            lines.append(
                f"   {'  ' + name:{w}} {c['us']['median']:>7.2f} {c['added_us']['median']:>+7.2f} "
                f"{iqr(c['added_us'], 2, '+'):^15} {c['added_pct']['median']:>+6.1f}%"
            )
        if "ours_minus_peer_us" in closed:
            d = closed["ours_minus_peer_us"]
            lines.append(
                f"   {'  ' + OURS + ' - ' + PEER:{w}} {'':>7} {d['median']:>+7.2f} "
                f"{iqr(d, 2, '+'):^15}"
            )
    lines += [
        "",
        "2. short-circuited requests (breaker forced open): us per request, x the bare request",
        f"   {'':{w}} {'us':>7} {'x bare':>7} {'p25..p75':^13}   (aim: x bare < {AIM_SHORT_RATIO})",
    ]
    for flavour, title in (("sync", "httpx.Client"), ("async", "httpx.AsyncClient, asyncio")):
        lines.append(f"   {title}")
        for name, c in data["short_circuit"][flavour].items():
            lines.append(
                f"   {'  ' + name:{w}} {c['us']['median']:>7.2f} "
                f"{c['ratio_to_bare']['median']:>6.3f}x {iqr(c['ratio_to_bare'], 3):^13}"
            )
    lines += [
        "",
        "3. keying one request: ns per call on a prebuilt httpx.Request",
        f"   {'':{w}} {'ns':>7} {'p25..p75':^13}   (aim: _key_of < {AIM_KEY_NS:.0f} ns)",
    ]
    for name, k in data["keying_ns"].items():
        lines.append(f"   {'  ' + name:{w}} {k['median']:>7.0f} {iqr(k, 0):^13}")
    lines.append(
        "   (route() = options lookup + key + registry.get: the whole per-request routing)"
    )
    lines += [
        "",
        "4. the transports alone: transport.handle_request(request) on a prebuilt request, sync",
        f"   {'':{w}} {'us':>7} {'+us':>7} {'p25..p75':^15} {'x bare':>7} {'x client':>8}",
    ]
    for name, t in data["transport_alone"].items():
        added = (
            ""
            if name == BARE
            else f"{t['added_us']['median']:>+7.2f} {iqr(t['added_us'], 2, '+'):^15}"
        )
        lines.append(
            f"   {'  ' + name:{w}} {t['us']['median']:>7.2f} {added:<23} "
            f"{t['ratio_to_bare_transport']['median']:>6.3f}x "
            f"{t['ratio_to_bare_client_request']['median']:>7.3f}x"
        )
    lines.append(
        "   (x bare: over the bare MockTransport's handle_request; x client: over a whole"
        " bare client.get)"
    )
    lines += ["", f"{OURS} against the aims:"]
    for what, ok in data["verdicts"].items():
        lines.append(f"  {'met   ' if ok else 'MISSED'} {what}")
    lines.append("")
    for name, via in data["via"].items():
        lines.append(f"  {name} {data['versions'].get(name, '?')}: {via}")
    for name, reason in data["skipped"].items():
        lines.append(f"  {name}: skipped ({reason})")
    return "\n".join(lines)


def profile(s: Setup, requests: int = 20_000, top: int = 14) -> str:
    """cProfile each sync path over ``requests`` requests.

    For each path: the heaviest functions by cumulative time (where the
    request's time goes, httpx included), then the package's own functions by
    own time (what the breaker itself costs). Profiling inflates every
    function call, so read shares, not absolute times.
    """
    out = io.StringIO()
    for title, loop in s.profile_targets.items():
        profiler = cProfile.Profile()
        profiler.enable()
        loop(requests)
        profiler.disable()
        stats = pstats.Stats(profiler, stream=out)
        total = stats.total_tt  # type: ignore[attr-defined]
        table: dict[tuple[str, int, str], tuple[Any, ...]] = stats.stats  # type: ignore[attr-defined]
        own = sum(row[2] for (path, _, _), row in table.items() if "circuitbreaker_http" in path)
        out.write(
            f"\n=== cProfile: {title}: {requests} requests, {total:.2f} s profiled; "
            f"circuitbreaker_http's own functions {own:.2f} s = {100 * own / total:.1f}% ===\n"
        )
        out.write(f"--- top {top} by cumulative time ---")
        stats.sort_stats(pstats.SortKey.CUMULATIVE).print_stats(top)
        out.write("--- circuitbreaker_http's own functions, by own time ---")
        stats.sort_stats(pstats.SortKey.TIME).print_stats("circuitbreaker_http", top)
    return out.getvalue()


def main(argv: list[str] | None = None) -> int:
    """Parse the options, measure, print."""
    parser = argparse.ArgumentParser(
        description="What the httpx transports add to a request (closed, short-circuited) "
        f"and to keying it, beside a bare client and {PEER}."
    )
    parser.add_argument("--quick", action="store_true", help="fewer, shorter repeats (< 20 s)")
    parser.add_argument(
        "--json", action="store_true", help="print the numbers as JSON instead of the tables"
    )
    parser.add_argument(
        "--repeats", type=int, default=None, help="override the mode's repeat count"
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also print a cProfile of the sync transport paths (after the tables)",
    )
    args = parser.parse_args(argv)
    mode = MODES["quick" if args.quick else "default"]
    if args.repeats is not None:
        if args.repeats < 1:
            parser.error("--repeats must be >= 1")
        mode = Mode(mode.name, args.repeats, mode.request_s, mode.key_s)

    # Forcing breakers open logs the transitions; keep them off stderr.
    for library in ("circuitbreaker_http", "interlock", "httpx"):
        logging.getLogger(library).addHandler(logging.NullHandler())

    with contextlib.closing(LoopRunner()) as runner:
        setup = Setup(runner)
        build_ours(setup)
        build_peer(setup)
        try:
            started = time.perf_counter()
            samples = measure(setup, mode, progress=True)
            data = to_json(setup, samples, mode, time.perf_counter() - started)
            print(json.dumps(data, indent=2) if args.json else render(data))
            if args.profile:
                print(profile(setup), file=sys.stderr if args.json else sys.stdout)
        finally:
            for close in setup.closers:
                with contextlib.suppress(Exception):
                    close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
