"""Measure what the httpx transports add to a request, over a do-nothing wrapper.

Four sections, each a median over paired repeats taken in one run (every
repeat measures every contender once, in an order that rotates from repeat to
repeat, and the contenders compared with one another take turns chunk by
chunk inside one sample, so slow drift of the machine hits all alike):

1. closed requests: µs per ``client.get(url)`` on ``httpx.Client``,
   ``httpx.AsyncClient`` (asyncio), and the same two of httpx2, each through a
   bare ``MockTransport(handler)``, through a do-nothing wrapping transport
   around it (its ``handle_request`` only calls the inner one: the floor of
   any transport that wraps another), and through ``CircuitBreakerTransport``
   around it; interlock-cb's httpx transport beside them when importable. The
   key figure is ``(cb - noop) / bare``: what the breaker adds over the floor,
   as a share of a bare request;
2. short-circuited requests: µs per request whose breaker is forced open
   (raising ``CircuitOpenError``, or answering a ``FallbackResponse``), against
   a bare request of the same sample;
3. keying: ns per ``transport._gate.key_of(request)`` for ``by_host`` and
   ``by_route``, and per ``_gate.route(request)`` for context;
4. the transports alone: ``transport.handle_request(request)`` on a prebuilt
   request, the do-nothing wrapper included.

``--instructions`` counts instructions instead of timing (valgrind's callgrind,
one subprocess per contender and loop count): deterministic, and unaffected by
a loaded machine. ``--profile`` adds a cProfile of the sync paths. Run
``python benchmarks/bench_httpx.py --help`` for the options;
``benchmarks/README.md`` explains each figure.

This is a benchmark that prints, not a test: it asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
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
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from itertools import repeat
from types import ModuleType
from typing import Any, TypeVar

import httpx
from _common import (
    Loop,
    call_loop,
    call_loop_rejected,
    callgrind_instructions,
    rotated,
    summary,
    valgrind_missing,
    version_of,
)

from circuitbreaker_http import CircuitOpenError, FallbackResponse, by_route
from circuitbreaker_http import httpx as cb_httpx

httpx2: ModuleType | None
cb_httpx2: ModuleType | None
try:
    import httpx2

    from circuitbreaker_http import httpx2 as cb_httpx2
except ImportError as _exc:  # skipped with a note
    httpx2 = cb_httpx2 = None
    HTTPX2_MISSING = f"not importable: {_exc}"
else:
    HTTPX2_MISSING = ""

OURS = "circuitbreaker-http"
PEER = "interlock-cb"
BARE = "bare MockTransport"
NOOP = "do-nothing wrapper"

ORIGIN = "http://bench.test"
URL = ORIGIN + "/users/42"
ROUTES = ("/users/{id}", "/users/me", "/orders/{id}/items")

# The aims, printed beside the figures.
AIM_OVER_NOOP_PCT = 2.0  # (ours - do-nothing wrapper) / bare request, closed
AIM_SHORT_RATIO = 0.5  # a short-circuited request, against a bare one
AIM_KEY_NS = 500.0  # one key_of call

CHUNK_REQUESTS = 25  # requests of one contender before the next takes its turn
CHUNK_KEYS = 10_000  # keying calls per turn
CHUNK_TRANSPORT = 200  # transport calls per turn
MIN_ROUNDS = 3  # turns of every contender in a sample, whatever the budget

# --instructions: requests per child run (the figure is the difference / their gap).
INSTRUCTION_LOOPS = (500, 1500)
INSTRUCTION_LOOPS_QUICK = (100, 400)
INSTRUCTION_WARM = 50  # requests before either loop count, in every child
INSTRUCTION_ENV = {"PYTHONHASHSEED": "0"}

AsyncLoop = Callable[[int], Awaitable[None]]
"""The async twin of :data:`Loop`."""


@dataclass(frozen=True)
class Mode:
    """How long to measure: repeat count and the time budget of one sample."""

    name: str
    repeats: int
    request_s: float  # per contender, in one sample of sections 1 and 2
    key_s: float  # per contender, in one sample of sections 3 and 4


MODES = {
    "default": Mode("default", repeats=21, request_s=0.1, key_s=0.03),
    "quick": Mode("quick", repeats=11, request_s=0.04, key_s=0.012),
}


# -- the client modules -----------------------------------------------------------


@dataclass(frozen=True)
class Family:
    """One client module (httpx or httpx2): its clients and the transports built on it."""

    name: str
    hx: Any
    cb: Any  # circuitbreaker_http.httpx or .httpx2
    handler: Callable[[Any], Any]
    noop: type[Any]
    anoop: type[Any]

    def title(self, asynchronous: bool) -> str:
        """The name of one section-1 group: ``httpx.Client``, ``httpx2.AsyncClient``, ..."""
        return f"{self.name}.{'AsyncClient' if asynchronous else 'Client'}"


def make_family(hx: Any, cb: Any) -> Family:
    """The handler and the do-nothing wrapping transports of one client module."""

    def handler(request: Any) -> Any:
        """The upstream: ``200 ok`` at once."""
        return hx.Response(200, content=b"ok")

    class NoopTransport(hx.BaseTransport):  # type: ignore[misc]
        """A wrapping transport that does nothing: the floor of any wrapper."""

        def __init__(self, transport: Any) -> None:
            self.transport = transport

        def handle_request(self, request: Any) -> Any:
            return self.transport.handle_request(request)

    class AsyncNoopTransport(hx.AsyncBaseTransport):  # type: ignore[misc]
        """The async twin of ``NoopTransport``."""

        def __init__(self, transport: Any) -> None:
            self.transport = transport

        async def handle_async_request(self, request: Any) -> Any:
            return await self.transport.handle_async_request(request)

    return Family(hx.__name__, hx, cb, handler, NoopTransport, AsyncNoopTransport)


FAMILIES = [make_family(httpx, cb_httpx)]
if httpx2 is not None:
    FAMILIES.append(make_family(httpx2, cb_httpx2))
HX = FAMILIES[0]
GROUPS = {f.title(a): (f, a) for f in FAMILIES for a in (False, True)}


def peer_module() -> tuple[Any, Any] | str:
    """interlock-cb and its httpx integration, or why not."""
    try:
        return importlib.import_module("interlock"), importlib.import_module(
            "interlock.integrations.httpx"
        )
    except ImportError as exc:
        return f"not importable: {exc}"


def closed_transport(family: Family, contender: str, asynchronous: bool) -> Any:
    """The transport of one section-1 contender, ending in a fresh ``MockTransport``."""
    mock = family.hx.MockTransport(family.handler)
    if contender == BARE:
        return mock
    if contender == NOOP:
        return (family.anoop if asynchronous else family.noop)(mock)
    if contender == OURS:
        cb = family.cb
        return (cb.AsyncCircuitBreakerTransport if asynchronous else cb.CircuitBreakerTransport)(
            mock
        )
    if contender == PEER and family is HX:
        found = peer_module()
        if isinstance(found, str):
            raise RuntimeError(found)
        ilx = found[1]
        return (ilx.AsyncCircuitBreakerTransport if asynchronous else ilx.CircuitBreakerTransport)(
            mock
        )
    raise ValueError(f"no contender {contender!r} for {family.title(asynchronous)}")


def closed_client(family: Family, contender: str, asynchronous: bool) -> Any:
    """A client whose transport is that contender."""
    transport = closed_transport(family, contender, asynchronous)
    return (family.hx.AsyncClient if asynchronous else family.hx.Client)(transport=transport)


# -- tight loops ----------------------------------------------------------------


def sync_get(client: Any) -> Loop:
    """Loop over ``client.get(URL)``."""

    def loop(n: int) -> None:
        get, url = client.get, URL
        for _ in repeat(None, n):
            get(url)

    return loop


def sync_get_rejected(client: Any, error: type[BaseException]) -> Loop:
    """Loop over a short-circuited ``client.get(URL)``, catching ``error``."""

    def loop(n: int) -> None:
        get, url, exc = client.get, URL, error
        for _ in repeat(None, n):
            try:  # noqa: SIM105 - contextlib.suppress would cost more than what is measured
                get(url)
            except exc:
                pass

    return loop


def async_get(client: Any) -> AsyncLoop:
    """Loop over ``await client.get(URL)``."""

    async def loop(n: int) -> None:
        get, url = client.get, URL
        for _ in repeat(None, n):
            await get(url)

    return loop


def async_get_rejected(client: Any, error: type[BaseException]) -> AsyncLoop:
    """Loop over a short-circuited ``await client.get(URL)``, catching ``error``."""

    async def loop(n: int) -> None:
        get, url, exc = client.get, URL, error
        for _ in repeat(None, n):
            try:  # noqa: SIM105 - contextlib.suppress would cost more than what is measured
                await get(url)
            except exc:
                pass

    return loop


Rounds = dict[str, list[float]]
"""ns per iteration of each contender of a sample, one value per round, rounds aligned."""


def _per_iteration(chunks: dict[str, list[int]], chunk: int) -> Rounds:
    return {name: [ns / chunk for ns in times] for name, times in chunks.items()}


def paired(rounds: Rounds, figure: Callable[..., float], *names: str) -> float:
    """The median over the rounds of one sample of ``figure(a, b, ...)``, of that round's ns."""
    return statistics.median(map(figure, *(rounds[name] for name in names)))


def time_interleaved(loops: dict[str, Loop], chunk: int, budget_s: float, turn: int) -> Rounds:
    """ns per iteration of each loop, per round, its chunks interleaved with the others'.

    Rounds run one chunk of every loop, in an order that rotates from round
    to round (starting at ``turn``), until ``budget_s`` per loop has passed
    and at least :data:`MIN_ROUNDS` rounds are done. Figures are then taken
    per round (a difference between neighbouring chunks) and their median
    over the rounds is the sample's (:func:`paired`): a chunk hit by a
    preemption counts as one odd round, not as time added to one loop. The
    garbage collector is off meanwhile, as in ``timeit``; it runs between
    samples instead.
    """
    names = rotated(list(loops), turn)
    chunks: dict[str, list[int]] = {name: [] for name in names}
    clock = time.perf_counter_ns
    gc.collect()
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        deadline = clock() + int(budget_s * len(names) * 1e9)
        rounds = 0
        while rounds < MIN_ROUNDS or clock() < deadline:
            for name in rotated(names, rounds):
                loop = loops[name]
                began = clock()
                loop(chunk)
                chunks[name].append(clock() - began)
            rounds += 1
    finally:
        if gc_was_enabled:
            gc.enable()
    return _per_iteration(chunks, chunk)


async def _time_interleaved_async(
    loops: dict[str, AsyncLoop], chunk: int, budget_s: float, turn: int
) -> Rounds:
    names = rotated(list(loops), turn)
    chunks: dict[str, list[int]] = {name: [] for name in names}
    clock = time.perf_counter_ns
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        deadline = clock() + int(budget_s * len(names) * 1e9)
        rounds = 0
        while rounds < MIN_ROUNDS or clock() < deadline:
            for name in rotated(names, rounds):
                loop = loops[name]
                began = clock()
                await loop(chunk)
                chunks[name].append(clock() - began)
            rounds += 1
    finally:
        if gc_was_enabled:
            gc.enable()
    return _per_iteration(chunks, chunk)


T = TypeVar("T")


class LoopRunner:
    """One asyncio event loop for the whole run (``asyncio.Runner`` needs Python 3.11)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()

    def run(self, awaitable: Awaitable[T]) -> T:
        """Run ``awaitable`` to completion on the loop."""
        return self.loop.run_until_complete(awaitable)

    def time_interleaved(
        self, loops: dict[str, AsyncLoop], chunk: int, budget_s: float, turn: int
    ) -> Rounds:
        """The async twin of :func:`time_interleaved`, timed inside the event loop."""
        gc.collect()
        return self.run(_time_interleaved_async(loops, chunk, budget_s, turn))

    def close_client(self, client: Any) -> None:
        """Close an async client on the loop."""
        self.run(client.aclose())

    def close(self) -> None:
        """Close the loop."""
        self.run(self.loop.shutdown_asyncgens())
        self.loop.close()


# -- contenders -------------------------------------------------------------------


@dataclass
class Group:
    """Contenders timed against one another in one interleaved sample."""

    asynchronous: bool
    loops: dict[str, Any] = field(default_factory=dict)  # Loop, or AsyncLoop when asynchronous


@dataclass
class Setup:
    """Every client and loop of one run, and what to close afterwards."""

    runner: LoopRunner
    closed: dict[str, Group] = field(default_factory=dict)  # section 1, by client
    short: dict[str, Group] = field(default_factory=dict)  # section 2, "sync" / "async"
    keys: dict[str, Loop] = field(default_factory=dict)  # section 3
    transport: dict[str, Loop] = field(default_factory=dict)  # section 4
    via: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    closers: list[Callable[[], object]] = field(default_factory=list)
    profile_targets: dict[str, Loop] = field(default_factory=dict)

    def keep(self, client: Any, asynchronous: bool) -> Any:
        """Close ``client`` at the end of the run; return it."""
        if asynchronous:
            self.closers.append(functools.partial(self.runner.close_client, client))
        else:
            self.closers.append(client.close)
        return client


RAISE = f"{OURS}, raise"
FALLBACK = f"{OURS}, FallbackResponse"
PEER_RAISE = f"{PEER}, raise"
KEY_HOST = "key_of, by_host"
KEY_ROUTE = "key_of, by_route"
ROUTE_HOST = "route(), by_host"
ROUTE_ROUTE = "route(), by_route"
FLAVOURS = ("sync", "async")


def expect(ok: bool, what: str) -> None:
    """Stop the run when a contender is not set up as the figures assume."""
    if not ok:
        raise RuntimeError(f"bench_httpx set-up check failed: {what}")


def check_closed(family: Family, contender: str, response: Any) -> None:
    """A section-1 contender's answer: ``200 ok``, and ours saw it closed."""
    expect(response.status_code == 200, f"{contender} on {family.name}: 200")
    if contender == OURS:
        state = response.extensions["circuit_breaker"]["state"]
        expect(state == "closed", f"{contender} on {family.name}: the breaker saw it")


def build_closed(s: Setup, with_peer: bool) -> None:
    """Section 1: every client module, sync and async, bare / do-nothing / ours (/ peer)."""
    for title, (family, asynchronous) in GROUPS.items():
        group = Group(asynchronous)
        names = [BARE, NOOP, OURS] + ([PEER] if with_peer and family is HX else [])
        for name in names:
            client = s.keep(closed_client(family, name, asynchronous), asynchronous)
            if asynchronous:
                check_closed(family, name, s.runner.run(client.get(URL)))
                group.loops[name] = async_get(client)
            else:
                check_closed(family, name, client.get(URL))
                group.loops[name] = sync_get(client)
        s.closed[title] = group
    if HTTPX2_MISSING:
        s.skipped["httpx2"] = HTTPX2_MISSING
    for family in FAMILIES:
        s.via[f"{OURS} on {family.name}"] = (
            f"{family.name}.Client(transport=circuitbreaker_http.{family.name}."
            f"CircuitBreakerTransport({family.name}.MockTransport(handler)))"
        )
    s.via[NOOP] = (
        "a BaseTransport whose handle_request(request) is "
        "return self.transport.handle_request(request) (async: the same, awaited)"
    )


def build_ours(s: Setup) -> None:
    """Sections 2 to 4 for our transports: forced open, with a fallback, and keying."""
    runner = s.runner
    cb = HX.cb
    mock = httpx.MockTransport(HX.handler)
    bare = s.keep(httpx.Client(transport=mock), False)
    abare = s.keep(httpx.AsyncClient(transport=httpx.MockTransport(HX.handler)), True)

    # Forced open via the registry: raising, and answering a FallbackResponse.
    busy = FallbackResponse(503, content=b"busy")
    raising_t = cb.CircuitBreakerTransport(httpx.MockTransport(HX.handler))
    araising_t = cb.AsyncCircuitBreakerTransport(httpx.MockTransport(HX.handler))
    fallback_t = cb.CircuitBreakerTransport(httpx.MockTransport(HX.handler), fallback=busy)
    afallback_t = cb.AsyncCircuitBreakerTransport(httpx.MockTransport(HX.handler), fallback=busy)
    for t in (raising_t, araising_t, fallback_t, afallback_t):
        t.registry.get(ORIGIN).force_open()
    raising = s.keep(httpx.Client(transport=raising_t), False)
    araising = s.keep(httpx.AsyncClient(transport=araising_t), True)
    fallback = s.keep(httpx.Client(transport=fallback_t), False)
    afallback = s.keep(httpx.AsyncClient(transport=afallback_t), True)

    try:
        raising.get(URL)
        expect(False, "a forced-open breaker raises")
    except CircuitOpenError:
        pass
    answer = fallback.get(URL)
    expect(answer.status_code == 503, "the fallback answers 503")
    expect(answer.headers.get("X-Circuit-Breaker") == "open", "the fallback is marked")
    expect(runner.run(afallback.get(URL)).status_code == 503, "the async fallback answers")

    s.short["sync"] = Group(
        False,
        {
            BARE: sync_get(bare),
            RAISE: sync_get_rejected(raising, CircuitOpenError),
            FALLBACK: sync_get(fallback),
        },
    )
    s.short["async"] = Group(
        True,
        {
            BARE: async_get(abare),
            RAISE: async_get_rejected(araising, CircuitOpenError),
            FALLBACK: async_get(afallback),
        },
    )

    # Keying, on a request built once.
    closed_t = cb.CircuitBreakerTransport(httpx.MockTransport(HX.handler))
    route_t = cb.CircuitBreakerTransport(httpx.MockTransport(HX.handler), key=by_route(*ROUTES))
    request = bare.build_request("GET", URL)
    expect(closed_t._gate.key_of(request) == ORIGIN, "by_host key")
    expect(route_t._gate.key_of(request) == ORIGIN + "/users/{id}", "by_route key")
    expect(closed_t._gate.route(request).name == ORIGIN, "by_host route")
    expect(route_t._gate.route(request).name == ORIGIN + "/users/{id}", "by_route route")
    s.keys.update(
        {
            KEY_HOST: call_loop(closed_t._gate.key_of, request),
            KEY_ROUTE: call_loop(route_t._gate.key_of, request),
            ROUTE_HOST: call_loop(closed_t._gate.route, request),
            ROUTE_ROUTE: call_loop(route_t._gate.route, request),
        }
    )

    # The transports alone, on the same prebuilt request.
    noop_t = HX.noop(httpx.MockTransport(HX.handler))
    expect(closed_t.handle_request(request).status_code == 200, "our transport alone")
    expect(noop_t.handle_request(request).status_code == 200, "the do-nothing wrapper alone")
    s.transport.update(
        {
            BARE: call_loop(mock.handle_request, request),
            NOOP: call_loop(noop_t.handle_request, request),
            OURS: call_loop(closed_t.handle_request, request),
            RAISE: call_loop_rejected(raising_t.handle_request, request, CircuitOpenError),
            FALLBACK: call_loop(fallback_t.handle_request, request),
        }
    )
    s.via[RAISE] = "forced open by transport.registry.get(origin).force_open()"

    closed = s.keep(closed_client(HX, OURS, False), False)
    noop = s.keep(closed_client(HX, NOOP, False), False)
    s.profile_targets.update(
        {
            "closed request through CircuitBreakerTransport": sync_get(closed),
            "request through the do-nothing wrapper": sync_get(noop),
            "bare MockTransport request": sync_get(bare),
            "short-circuited request (raise)": sync_get_rejected(raising, CircuitOpenError),
        }
    )


def build_peer(s: Setup) -> None:
    """interlock-cb's httpx transports, closed and forced open, for sections 2 and 4."""
    found = peer_module()
    assert not isinstance(found, str)
    il, ilx = found
    closed_t = ilx.CircuitBreakerTransport(httpx.MockTransport(HX.handler))
    raising_t = ilx.CircuitBreakerTransport(httpx.MockTransport(HX.handler))
    raising_t.registry.get("bench.test").force_open()  # its default key is the host
    raising = s.keep(httpx.Client(transport=raising_t), False)
    araising_t = ilx.AsyncCircuitBreakerTransport(httpx.MockTransport(HX.handler))
    araising_t.registry.get("bench.test").force_open()
    araising = s.keep(httpx.AsyncClient(transport=araising_t), True)
    error: type[BaseException] = il.CircuitOpenError
    try:
        raising.get(URL)
        expect(False, f"a forced-open {PEER} breaker raises")
    except error:
        pass

    s.short["sync"].loops[PEER_RAISE] = sync_get_rejected(raising, error)
    s.short["async"].loops[PEER_RAISE] = async_get_rejected(araising, error)
    request = raising.build_request("GET", URL)
    s.transport[PEER] = call_loop(closed_t.handle_request, request)
    s.transport[PEER_RAISE] = call_loop_rejected(raising_t.handle_request, request, error)
    s.via[PEER] = (
        "httpx.Client(transport=interlock.integrations.httpx.CircuitBreakerTransport("
        "httpx.MockTransport(handler))); forced open by transport.registry.get(host).force_open()"
    )


# -- measuring --------------------------------------------------------------------


def _minus_us(a: float, b: float) -> float:
    return (a - b) / 1000


def _ratio(a: float, b: float) -> float:
    return a / b


def _over_pct(a: float, b: float) -> float:
    return (a / b - 1) * 100


def _share_pct(a: float, b: float, base: float) -> float:
    return (a - b) / base * 100


Samples = dict[str, list[float]]
"""Per-repeat samples, by figure name."""


def measure(s: Setup, mode: Mode, progress: bool) -> Samples:
    """Run every repeat of all four sections; return the raw per-repeat figures."""
    runner = s.runner
    out: Samples = {}

    def add(name: str, value: float) -> None:
        out.setdefault(name, []).append(value)

    def sampler(group: Group, chunk: int, budget: float) -> Callable[[int], Rounds]:
        if group.asynchronous:
            return functools.partial(runner.time_interleaved, group.loops, chunk, budget)
        return functools.partial(time_interleaved, group.loops, chunk, budget)

    # Warm up every loop once before anything counts.
    for group in [*s.closed.values(), *s.short.values()]:
        for loop in group.loops.values():
            if group.asynchronous:
                runner.run(loop(200))
            else:
                loop(200)
    for loop in [*s.keys.values(), *s.transport.values()]:
        loop(5_000)

    jobs: dict[str, Callable[[int], Rounds]] = {}
    for title, group in s.closed.items():
        jobs[f"closed {title}"] = sampler(group, CHUNK_REQUESTS, mode.request_s)
    for flavour, group in s.short.items():
        jobs[f"short {flavour}"] = sampler(group, CHUNK_REQUESTS, mode.request_s)
    jobs["keys"] = sampler(Group(False, s.keys), CHUNK_KEYS, mode.key_s)
    jobs["transport"] = sampler(Group(False, s.transport), CHUNK_TRANSPORT, mode.key_s)

    for r in range(mode.repeats):
        if progress:
            print(f"  repeat {r + 1}/{mode.repeats}", file=sys.stderr, flush=True)
        got = {name: jobs[name](r) for name in rotated(list(jobs), r)}
        for title in s.closed:
            rounds = got[f"closed {title}"]
            add(f"closed {title} {BARE} us", statistics.median(rounds[BARE]) / 1000)
            for name in rounds:
                if name == BARE:
                    continue
                fig = f"closed {title} {name}"
                add(f"{fig} us", statistics.median(rounds[name]) / 1000)
                add(f"{fig} added us", paired(rounds, _minus_us, name, BARE))
                add(f"{fig} added pct", paired(rounds, _over_pct, name, BARE))
                if name != NOOP:
                    add(f"{fig} over noop us", paired(rounds, _minus_us, name, NOOP))
                    add(f"{fig} over noop pct", paired(rounds, _share_pct, name, NOOP, BARE))
            if PEER in rounds:
                add(f"closed {title} ours minus peer us", paired(rounds, _minus_us, OURS, PEER))
        for flavour in s.short:
            rounds = got[f"short {flavour}"]
            for name in rounds:
                add(f"short {flavour} {name} us", statistics.median(rounds[name]) / 1000)
                add(f"short {flavour} {name} ratio", paired(rounds, _ratio, name, BARE))
        for name, ns in got["keys"].items():
            add(f"key {name} ns", statistics.median(ns))
        rounds = got["transport"]
        bare_c = statistics.median(got[f"closed {HX.title(False)}"][BARE])
        for name in rounds:
            add(f"transport {name} us", statistics.median(rounds[name]) / 1000)
            add(f"transport {name} added us", paired(rounds, _minus_us, name, BARE))
            add(f"transport {name} ratio", paired(rounds, _ratio, name, BARE))
            add(f"transport {name} client ratio", statistics.median(rounds[name]) / bare_c)
            if name in (OURS, PEER):
                add(f"transport {name} over noop us", paired(rounds, _minus_us, name, NOOP))
    return out


# -- reporting ----------------------------------------------------------------------


def versions() -> dict[str, str]:
    """The versions of the client modules and of the libraries measured."""
    out = {family.name: version_of(family.name) for family in FAMILIES}
    out[OURS] = version_of(OURS)
    if not isinstance(peer_module(), str):
        out[PEER] = version_of(PEER)
    return out


def about() -> dict[str, Any]:
    """What every JSON document starts with: the machine and the versions."""
    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "url": URL,
        "versions": versions(),
    }


def to_json(s: Setup, samples: Samples, mode: Mode, seconds: float) -> dict[str, Any]:
    """Collect the run into plain data."""
    figures = {name: summary(values) for name, values in samples.items()}
    data: dict[str, Any] = {
        **about(),
        "mode": mode.name,
        "repeats": mode.repeats,
        "request_sample_s": mode.request_s,
        "key_sample_s": mode.key_s,
        "seconds": round(seconds, 1),
        "via": s.via,
        "skipped": s.skipped,
        "aims": {
            "closed_over_noop_pct_of_bare_max": AIM_OVER_NOOP_PCT,
            "closed_added_vs_peer": f"no more than {PEER} adds",
            "short_circuit_ratio_max": AIM_SHORT_RATIO,
            "key_of_ns_max": AIM_KEY_NS,
        },
        "closed": {},
        "short_circuit": {},
        "keying_ns": {},
        "transport_alone": {},
    }
    for title, group in s.closed.items():
        closed: dict[str, Any] = {
            "bare_us": figures[f"closed {title} {BARE} us"],
            "floor_us": figures[f"closed {title} {NOOP} added us"],
            "contenders": {},
        }
        for name in group.loops:
            if name == BARE:
                continue
            c = {
                "us": figures[f"closed {title} {name} us"],
                "added_us": figures[f"closed {title} {name} added us"],
                "added_pct": figures[f"closed {title} {name} added pct"],
            }
            if name != NOOP:
                c["over_noop_us"] = figures[f"closed {title} {name} over noop us"]
                c["over_noop_pct_of_bare"] = figures[f"closed {title} {name} over noop pct"]
            closed["contenders"][name] = c
        if f"closed {title} ours minus peer us" in figures:
            closed["ours_minus_peer_us"] = figures[f"closed {title} ours minus peer us"]
        data["closed"][title] = closed
    for flavour, group in s.short.items():
        data["short_circuit"][flavour] = {
            name: {
                "us": figures[f"short {flavour} {name} us"],
                "ratio_to_bare": figures[f"short {flavour} {name} ratio"],
            }
            for name in group.loops
            if name != BARE
        }
        data["short_circuit"][flavour]["bare_us"] = figures[f"short {flavour} {BARE} us"]
    data["keying_ns"] = {name: figures[f"key {name} ns"] for name in s.keys}
    for name in s.transport:
        t = {
            "us": figures[f"transport {name} us"],
            "added_us": figures[f"transport {name} added us"],
            "ratio_to_bare_transport": figures[f"transport {name} ratio"],
            "ratio_to_bare_client_request": figures[f"transport {name} client ratio"],
        }
        if f"transport {name} over noop us" in figures:
            t["over_noop_us"] = figures[f"transport {name} over noop us"]
        data["transport_alone"][name] = t
    data["verdicts"] = verdicts(data)
    return data


def verdicts(data: dict[str, Any]) -> dict[str, bool]:
    """Whether each aim was met, by the medians."""
    out: dict[str, bool] = {}
    for title, closed in data["closed"].items():
        ratio = closed["contenders"][OURS]["over_noop_pct_of_bare"]["median"]
        out[f"{title}: (cb - noop) / bare <= {AIM_OVER_NOOP_PCT:g}%"] = ratio <= AIM_OVER_NOOP_PCT
        if "ours_minus_peer_us" in closed:
            out[f"{title}: adds no more than {PEER}"] = closed["ours_minus_peer_us"]["median"] <= 0
    for flavour, short in data["short_circuit"].items():
        for name in (RAISE, FALLBACK):
            ratio = short[name]["ratio_to_bare"]["median"]
            how = name.split(", ")[1]
            out[f"{flavour} short-circuit ({how}) < {AIM_SHORT_RATIO}x bare"] = (
                ratio < AIM_SHORT_RATIO
            )
    for name in (KEY_HOST, KEY_ROUTE):
        out[f"{name} < {AIM_KEY_NS:.0f} ns"] = data["keying_ns"][name]["median"] < AIM_KEY_NS
    return out


def iqr(s: dict[str, float], digits: int = 2, sign: str = "") -> str:
    """Format the quartiles of a summary as ``[p25..p75]``."""
    return f"[{s['p25']:{sign}.{digits}f}..{s['p75']:{sign}.{digits}f}]"


def mark(ok: bool) -> str:
    """How a verdict is printed."""
    return "met" if ok else "MISSED"


W = 40  # the longest row name, indented


def render(data: dict[str, Any]) -> str:
    """Render the JSON data as text tables."""
    v = data["versions"]
    lines = [
        f"circuitbreaker-http bench_httpx: {data['implementation']} {data['python']}, "
        + ", ".join(f"{name} {v[name]}" for name in v if name != OURS)
        + f", {data['cpus']} CPUs, mode {data['mode']}: "
        f"medians of {data['repeats']} paired repeats [p25..p75], {data['seconds']} s",
        f"every request: client.get({data['url']!r}); the mock answers 200 'ok' at once",
        "",
        "1. closed requests: us per request, and what each transport adds over the bare client",
        f"   {'':{W}} {'us':>7} {'+us':>7} {'p25..p75':^15} {'+%':>7}",
    ]
    for title, closed in data["closed"].items():
        lines.append(f"   {title}")
        lines.append(f"   {'  ' + BARE:{W}} {closed['bare_us']['median']:>7.2f}")
        for name, c in closed["contenders"].items():
            label = f"{name} (floor)" if name == NOOP else name
            lines.append(
                f"   {'  ' + label:{W}} {c['us']['median']:>7.2f} {c['added_us']['median']:>+7.2f} "
                f"{iqr(c['added_us'], 2, '+'):^15} {c['added_pct']['median']:>+6.1f}%"
            )
        ours = closed["contenders"][OURS]
        over = ours["over_noop_pct_of_bare"]
        lines.append(
            f"   {'  => (cb - noop) / bare':{W}} {'':>7} {ours['over_noop_us']['median']:>+7.2f} "
            f"{iqr(ours['over_noop_us'], 2, '+'):^15} {over['median']:>+6.2f}% "
            f"{iqr(over, 2, '+')}  aim <= {AIM_OVER_NOOP_PCT:g}%: "
            f"{mark(over['median'] <= AIM_OVER_NOOP_PCT)}"
        )
        if "ours_minus_peer_us" in closed:
            d = closed["ours_minus_peer_us"]
            lines.append(
                f"   {'  ' + OURS + ' - ' + PEER:{W}} {'':>7} {d['median']:>+7.2f} "
                f"{iqr(d, 2, '+'):^15}"
            )
    lines.append(
        "   (+us of the floor: what any wrapping transport costs; => cb - noop: what the"
        " breaker adds over it, us and % of a bare request, per repeat)"
    )
    lines += [
        "",
        "2. short-circuited requests (breaker forced open), httpx: us per request, x bare",
        f"   {'':{W}} {'us':>7} {'x bare':>7} {'p25..p75':^13}   (aim: x bare < {AIM_SHORT_RATIO})",
    ]
    for flavour, short in data["short_circuit"].items():
        title = HX.title(flavour == "async")
        lines.append(f"   {title} (bare request {short['bare_us']['median']:.2f} us)")
        for name, c in short.items():
            if name == "bare_us":
                continue
            lines.append(
                f"   {'  ' + name:{W}} {c['us']['median']:>7.2f} "
                f"{c['ratio_to_bare']['median']:>6.3f}x {iqr(c['ratio_to_bare'], 3):^13}"
            )
    lines += [
        "",
        "3. keying one request: ns per call on a prebuilt httpx.Request",
        f"   {'':{W}} {'ns':>7} {'p25..p75':^13}   (aim: key_of < {AIM_KEY_NS:.0f} ns)",
    ]
    for name, k in data["keying_ns"].items():
        lines.append(f"   {'  ' + name:{W}} {k['median']:>7.0f} {iqr(k, 0):^13}")
    lines.append(
        "   (route() = options lookup + key + registry.get: the whole per-request routing)"
    )
    lines += [
        "",
        "4. the transports alone: transport.handle_request(request) on a prebuilt request, sync",
        f"   {'':{W}} {'us':>7} {'+us':>7} {'p25..p75':^15} {'x bare':>7} {'x client':>8}"
        f" {'- noop':>7}",
    ]
    for name, t in data["transport_alone"].items():
        added = (
            ""
            if name == BARE
            else f"{t['added_us']['median']:>+7.2f} {iqr(t['added_us'], 2, '+'):^15}"
        )
        over = f"{t['over_noop_us']['median']:>+7.2f}" if "over_noop_us" in t else ""
        lines.append(
            f"   {'  ' + name:{W}} {t['us']['median']:>7.2f} {added:<23} "
            f"{t['ratio_to_bare_transport']['median']:>6.3f}x "
            f"{t['ratio_to_bare_client_request']['median']:>7.3f}x {over}"
        )
    lines.append(
        "   (x bare: over the bare MockTransport's handle_request; x client: over a whole"
        " bare client.get; - noop: us over the do-nothing wrapper)"
    )
    lines += ["", f"{OURS} against the aims (by the medians; read the spread first):"]
    for what, ok in data["verdicts"].items():
        lines.append(f"  {mark(ok):6} {what}")
    lines.append("")
    for name, via in data["via"].items():
        lines.append(f"  {name}: {via}")
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


# -- instruction counts -------------------------------------------------------------


def child(title: str, contender: str, n: int) -> int:
    """One ``--instructions`` subprocess: warm up, then ``n`` requests through one contender."""
    family, asynchronous = GROUPS[title]
    client = closed_client(family, contender, asynchronous)
    gc.disable()
    if asynchronous:

        async def run() -> None:
            for _ in range(INSTRUCTION_WARM):
                check_closed(family, contender, await client.get(URL))
            await async_get(client)(n)
            await client.aclose()

        loop = asyncio.new_event_loop()
        loop.run_until_complete(run())
        loop.close()
    else:
        for _ in range(INSTRUCTION_WARM):
            check_closed(family, contender, client.get(URL))
        sync_get(client)(n)
        client.close()
    return 0


def count_instructions(loops: tuple[int, int], jobs: int, progress: bool) -> dict[str, Any]:
    """Instructions per request of every section-1 contender, by callgrind."""
    with_peer = not isinstance(peer_module(), str)
    runs = [
        (title, name, n)
        for title, (family, _) in GROUPS.items()
        for name in [BARE, NOOP, OURS] + ([PEER] if with_peer and family is HX else [])
        for n in loops
    ]
    script = os.path.abspath(__file__)

    def one(run: tuple[str, str, int]) -> int:
        title, name, n = run
        ir = callgrind_instructions(
            [sys.executable, script, "--child", title, name, str(n)], INSTRUCTION_ENV
        )
        if progress:
            print(f"  {title}, {name}, {n} requests: {ir:,} Ir", file=sys.stderr, flush=True)
        return ir

    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
        counted = dict(zip(runs, pool.map(one, runs), strict=True))
    gap = loops[1] - loops[0]
    data: dict[str, Any] = {
        **about(),
        "mode": "instructions",
        "loops": list(loops),
        "warm_requests": INSTRUCTION_WARM,
        "env": INSTRUCTION_ENV,
        "seconds": round(time.perf_counter() - started, 1),
        "skipped": {"httpx2": HTTPX2_MISSING} if HTTPX2_MISSING else {},
        "aims": {"closed_over_noop_pct_of_bare_max": AIM_OVER_NOOP_PCT},
        "closed": {},
    }
    if not with_peer:
        data["skipped"][PEER] = peer_module()
    for title, name, n in runs:
        if n != loops[0]:
            continue
        low, high = counted[(title, name, loops[0])], counted[(title, name, loops[1])]
        group = data["closed"].setdefault(title, {"contenders": {}})
        group["contenders"][name] = {"ir": [low, high], "per_request": (high - low) / gap}
    for group in data["closed"].values():
        c = group["contenders"]
        bare, noop = c[BARE]["per_request"], c[NOOP]["per_request"]
        for name, figures in c.items():
            figures["added"] = figures["per_request"] - bare
            figures["added_pct"] = (figures["per_request"] / bare - 1) * 100
            if name not in (BARE, NOOP):
                figures["over_noop"] = figures["per_request"] - noop
                figures["over_noop_pct_of_bare"] = (figures["per_request"] - noop) / bare * 100
        group["floor"] = noop - bare
    data["verdicts"] = {
        f"{title}: (cb - noop) / bare <= {AIM_OVER_NOOP_PCT:g}% (instructions)": (
            group["contenders"][OURS]["over_noop_pct_of_bare"] <= AIM_OVER_NOOP_PCT
        )
        for title, group in data["closed"].items()
    }
    return data


def render_instructions(data: dict[str, Any]) -> str:
    """Render the ``--instructions`` data as a table."""
    low, high = data["loops"]
    v = data["versions"]
    lines = [
        f"circuitbreaker-http bench_httpx --instructions: {data['implementation']} "
        f"{data['python']}, " + ", ".join(f"{name} {v[name]}" for name in v if name != OURS),
        f"instructions per request: callgrind Ir of {high} requests minus Ir of {low}, over "
        f"{high - low}; one subprocess each, PYTHONHASHSEED=0, gc off; {data['seconds']} s",
        f"every request: client.get({data['url']!r}); the mock answers 200 'ok' at once",
        "",
        f"   {'':{W}} {'Ir/request':>11} {'+Ir':>9} {'+%':>7}",
    ]
    for title, group in data["closed"].items():
        lines.append(f"   {title}")
        for name, c in group["contenders"].items():
            label = f"{name} (floor)" if name == NOOP else name
            added = "" if name == BARE else f"{c['added']:>+9,.0f} {c['added_pct']:>+6.2f}%"
            lines.append(f"   {'  ' + label:{W}} {c['per_request']:>11,.0f} {added}")
        ours = group["contenders"][OURS]
        ok = ours["over_noop_pct_of_bare"] <= AIM_OVER_NOOP_PCT
        lines.append(
            f"   {'  => (cb - noop) / bare':{W}} {'':>11} {ours['over_noop']:>+9,.0f} "
            f"{ours['over_noop_pct_of_bare']:>+6.2f}%  aim <= {AIM_OVER_NOOP_PCT:g}%: {mark(ok)}"
        )
    lines.append("")
    for name, reason in data["skipped"].items():
        lines.append(f"  {name}: skipped ({reason})")
    return "\n".join(lines)


# -- main ---------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Parse the options, measure, print."""
    parser = argparse.ArgumentParser(
        description="What the httpx (and httpx2) transports add to a request (closed, "
        "short-circuited) and to keying it, over a bare client and a do-nothing wrapper."
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
    parser.add_argument(
        "--instructions",
        action="store_true",
        help="count instructions per request under valgrind's callgrind instead of timing "
        f"(section 1 only; {INSTRUCTION_LOOPS[0]} and {INSTRUCTION_LOOPS[1]} requests per "
        f"contender, {INSTRUCTION_LOOPS_QUICK[0]} and {INSTRUCTION_LOOPS_QUICK[1]} with --quick)",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=os.cpu_count() or 1,
        help="--instructions: valgrind runs at once (default: the CPU count)",
    )
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    # Forcing breakers open logs the transitions; keep them off stderr.
    for library in ("circuitbreaker_http", "interlock", "httpx", "httpx2"):
        logging.getLogger(library).addHandler(logging.NullHandler())

    if args.child:
        title, contender, n = args.child
        return child(title, contender, int(n))

    if args.instructions:
        missing = valgrind_missing()
        if missing:
            parser.error(f"--instructions needs valgrind: {missing}")
        if args.jobs < 1:
            parser.error("--jobs must be >= 1")
        loops = INSTRUCTION_LOOPS_QUICK if args.quick else INSTRUCTION_LOOPS
        data = count_instructions(loops, args.jobs, progress=True)
        print(json.dumps(data, indent=2) if args.json else render_instructions(data))
        return 0

    mode = MODES["quick" if args.quick else "default"]
    if args.repeats is not None:
        if args.repeats < 1:
            parser.error("--repeats must be >= 1")
        mode = Mode(mode.name, args.repeats, mode.request_s, mode.key_s)

    with contextlib.closing(LoopRunner()) as runner:
        setup = Setup(runner)
        try:
            found = peer_module()
            with_peer = not isinstance(found, str)
            if isinstance(found, str):
                setup.skipped[PEER] = found
            build_closed(setup, with_peer)
            build_ours(setup)
            if with_peer:
                build_peer(setup)
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
