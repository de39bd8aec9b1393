"""Streamed bodies through the httpx transports: one outcome, where it happens; half-open trials.

Every test runs with httpx and with httpx2 (the ``flavour`` fixture of ``conftest.py``),
over ``MockTransport`` with bodies served chunk by chunk (``hx_support.chunks``) and a
``ManualClock`` moved inside each read.
"""

from __future__ import annotations

import contextlib
import gc

import pytest
from hx_support import (
    CLOSED,
    COUNT_ONLY,
    HALF_OPEN,
    KEY,
    OPEN,
    SLOW1,
    Flavour,
    Upstream,
    chunks,
    make_async_client,
    make_client,
    make_error,
    open_then_half_open,
    snap,
)

from circuitbreaker_http import (
    BreakerConfig,
    CircuitOpenError,
)
from circuitbreaker_http.testing import ManualClock

# -- streamed bodies: one outcome, where it happens -------------------------------------------


def test_streamed_body_settles_when_it_ends(flavour: Flavour) -> None:
    hx = flavour.hx
    upstream = Upstream(hx)
    client, registry = make_client(flavour, upstream, COUNT_ONLY)
    stream = upstream.next_stream = chunks(hx, count=3)
    with client, client.stream("GET", "/stream") as response:
        assert response.status_code == 200
        assert snap(registry).calls == 0
        assert response.read() == stream.body
        assert snap(registry).calls == 1
    s = snap(registry)
    assert (s.calls, s.failures) == (1, 0)
    assert stream.closed


def test_streamed_body_partly_read_then_closed_is_a_success(flavour: Flavour) -> None:
    hx = flavour.hx
    upstream = Upstream(hx)
    client, registry = make_client(flavour, upstream, COUNT_ONLY)
    stream = upstream.next_stream = chunks(hx, count=5)
    with client:
        with client.stream("GET", "/stream") as response:
            raw = response.iter_raw()
            assert next(raw) == b"aaaa"
            assert snap(registry).calls == 0  # read in part and still open: nothing yet
            # Abandoned: httpx2 closes the response now (iter_raw closes it in a
            # finally), httpx when the block ends. Either way the close settles it.
            del raw
        s = snap(registry)
        assert (s.calls, s.failures) == (1, 0)
    assert stream.closed and stream.served == 1


def test_streamed_body_never_read_but_closed_is_a_success(flavour: Flavour) -> None:
    hx = flavour.hx
    upstream = Upstream(hx)
    client, registry = make_client(flavour, upstream, COUNT_ONLY)
    stream = upstream.next_stream = chunks(hx)
    with client:
        response = client.send(client.build_request("GET", "/stream"), stream=True)
        assert snap(registry).calls == 0
        response.close()
        s = snap(registry)
        assert (s.calls, s.failures) == (1, 0)
        response.close()  # closing twice settles once
        assert snap(registry).calls == 1
    assert stream.closed and stream.served == 0


def test_streamed_body_garbage_collected_unclosed_is_a_success(flavour: Flavour) -> None:
    hx = flavour.hx
    upstream = Upstream(hx)
    client, registry = make_client(flavour, upstream, COUNT_ONLY)
    upstream.next_stream = chunks(hx)
    with client:
        response = client.send(client.build_request("GET", "/stream"), stream=True)
        assert snap(registry).calls == 0
        del response
        gc.collect()
        s = snap(registry)
        assert (s.calls, s.failures) == (1, 0)


def test_garbage_collected_half_open_trial_closes_the_breaker_at_the_next_look(
    flavour: Flavour,
) -> None:
    hx = flavour.hx
    clock = ManualClock()
    upstream = Upstream(hx)
    client, registry = make_client(flavour, upstream, clock=clock)
    with client:
        open_then_half_open(client, clock, registry)
        upstream.next_stream = chunks(hx)
        response = client.send(client.build_request("GET", "/stream"), stream=True)
        assert response.extensions["circuit_breaker"]["state"] == "half_open"
        del response
        gc.collect()
        assert registry.get(KEY).state is CLOSED


@pytest.mark.parametrize("name", ["read_error", "remote_protocol", "read_timeout"])
def test_error_mid_body_is_a_failure_despite_the_200(flavour: Flavour, name: str) -> None:
    hx = flavour.hx
    error = make_error(hx, name)
    upstream = Upstream(hx)
    client, registry = make_client(flavour, upstream)
    upstream.next_stream = chunks(hx, count=4, fail_after=2, error=error)
    with client:
        with pytest.raises(type(error)), client.stream("GET", "/stream") as response:
            assert response.status_code == 200
            assert snap(registry).calls == 0
            response.read()
        s = snap(registry)
        assert (s.state, s.calls, s.failures) == (OPEN, 1, 1)
        with pytest.raises(CircuitOpenError):
            client.get("/")


def test_non_transport_error_mid_body_records_nothing(flavour: Flavour) -> None:
    hx = flavour.hx
    upstream = Upstream(hx)
    client, registry = make_client(flavour, upstream)
    upstream.next_stream = chunks(hx, count=4, fail_after=1, error=ValueError("decoder bug"))
    with client:
        with pytest.raises(ValueError):
            client.get("/stream")
        s = snap(registry)
        assert (s.state, s.calls) == (CLOSED, 0)


def test_slow_clock_counts_time_to_headers(flavour: Flavour) -> None:
    hx = flavour.hx
    clock = ManualClock()
    client, registry = make_client(flavour, Upstream(hx, clock), SLOW1, clock)
    with client:
        client.get("/?advance=0.9")
        assert snap(registry).slow_calls == 0
        client.get("/?advance=1.5")
    s = snap(registry)
    assert (s.calls, s.slow_calls) == (2, 1)


def test_slow_clock_ignores_the_callers_time_between_reads(flavour: Flavour) -> None:
    hx = flavour.hx
    clock = ManualClock()
    upstream = Upstream(hx, clock)
    client, registry = make_client(flavour, upstream, SLOW1, clock)
    upstream.next_stream = chunks(hx, count=3, clock=clock, advance=0.1)
    with client, client.stream("GET", "/stream?advance=0.2") as response:
        for _ in response.iter_raw():
            clock.advance(5.0)  # the caller dawdles; the upstream is not slow
    s = snap(registry)
    assert (s.calls, s.slow_calls, s.state) == (1, 0, CLOSED)


def test_slow_clock_counts_time_inside_each_read(flavour: Flavour) -> None:
    hx = flavour.hx
    clock = ManualClock()
    upstream = Upstream(hx, clock)
    client, registry = make_client(flavour, upstream, SLOW1, clock)
    # 0.2 s to the headers + 3 reads of 0.3 s = 1.1 s of upstream time.
    upstream.next_stream = chunks(hx, count=3, clock=clock, advance=0.3)
    with client, client.stream("GET", "/stream?advance=0.2") as response:
        response.read()
    s = snap(registry)
    assert (s.calls, s.slow_calls, s.state) == (1, 1, OPEN)


def test_slow_clock_counts_the_wait_for_the_end_of_the_body(flavour: Flavour) -> None:
    hx = flavour.hx
    clock = ManualClock()
    upstream = Upstream(hx, clock)
    client, registry = make_client(flavour, upstream, SLOW1, clock)
    upstream.next_stream = chunks(hx, count=2, clock=clock, advance=0.1, end_advance=1.0)
    with client, client.stream("GET", "/stream") as response:
        response.read()
    assert snap(registry).slow_calls == 1


@pytest.mark.anyio
async def test_async_streamed_body_outcomes(flavour: Flavour) -> None:
    hx = flavour.hx
    upstream = Upstream(hx)
    client, registry = make_async_client(flavour, upstream, COUNT_ONLY)
    async with client:
        # read fully: settles at the end
        stream = upstream.next_stream = chunks(hx, count=3)
        async with client.stream("GET", "/stream") as response:
            assert snap(registry).calls == 0
            assert await response.aread() == stream.body
            assert snap(registry).calls == 1
        # never read, closed
        upstream.next_stream = chunks(hx)
        async with client.stream("GET", "/stream"):
            assert snap(registry).calls == 1
        assert snap(registry).calls == 2
        # never closed, collected
        upstream.next_stream = chunks(hx)
        response = await client.send(client.build_request("GET", "/stream"), stream=True)
        del response
        gc.collect()
        assert snap(registry).calls == 3
        # error mid-body
        upstream.next_stream = chunks(hx, count=3, fail_after=1)
        with pytest.raises(hx.ReadError):
            await client.get("/stream")
    s = snap(registry)
    assert (s.calls, s.failures) == (4, 1)


@pytest.mark.anyio
@pytest.mark.filterwarnings("ignore:Async generator:ResourceWarning")
async def test_async_streamed_body_partly_read_then_closed_is_a_success(flavour: Flavour) -> None:
    # trio warns about httpx's own generators abandoned mid-body, with or without breakers.
    hx = flavour.hx
    upstream = Upstream(hx)
    client, registry = make_async_client(flavour, upstream, COUNT_ONLY)
    stream = upstream.next_stream = chunks(hx, count=5)
    async with client:
        async with (
            client.stream("GET", "/stream") as response,
            contextlib.aclosing(response.aiter_raw()) as raw,
        ):
            async for _ in raw:
                break
            assert snap(registry).calls == 0  # read in part and still open: nothing yet
        # httpx2 closes the response with its iterator, httpx with the stream block:
        # either way the close settles it.
        s = snap(registry)
        assert (s.calls, s.failures) == (1, 0)
    assert stream.closed and stream.served == 1
    gc.collect()


@pytest.mark.anyio
async def test_async_slow_clock_counts_upstream_time_only(flavour: Flavour) -> None:
    hx = flavour.hx
    clock = ManualClock()
    upstream = Upstream(hx, clock)
    client, registry = make_async_client(flavour, upstream, SLOW1, clock)
    async with client:
        upstream.next_stream = chunks(hx, count=3, clock=clock, advance=0.1)
        async with client.stream("GET", "/stream?advance=0.2") as response:
            async for _ in response.aiter_raw():
                clock.advance(5.0)
        assert snap(registry).slow_calls == 0
        upstream.next_stream = chunks(hx, count=3, clock=clock, advance=0.3)
        async with client.stream("GET", "/stream?advance=0.2") as response:
            await response.aread()
    s = snap(registry)
    assert (s.calls, s.slow_calls) == (2, 1)


# -- half-open -------------------------------------------------------------------------------


def test_success_status_frees_the_trial_slot_and_the_body_end_closes(flavour: Flavour) -> None:
    hx = flavour.hx
    clock = ManualClock()
    upstream = Upstream(hx)
    config = BreakerConfig(
        consecutive_failures=1, failure_rate=None, open_duration=10.0, success_threshold=2
    )
    client, registry = make_client(flavour, upstream, config, clock)
    with client:
        open_then_half_open(client, clock, registry)
        first_body = upstream.next_stream = chunks(hx)
        with client.stream("GET", "/stream") as first:
            assert first.extensions["circuit_breaker"] == {"key": KEY, "state": "half_open"}
            assert snap(registry).trials_in_flight == 0
            # The only slot is free again: a second trial passes while the first body is open.
            upstream.next_stream = chunks(hx)
            with client.stream("GET", "/stream") as second:
                assert second.extensions["circuit_breaker"]["state"] == "half_open"
                second.read()
            s = snap(registry)
            assert s.state is HALF_OPEN  # one successful trial of two
            first.read()
            assert snap(registry).state is CLOSED
    assert first_body.closed


def test_half_open_trial_closes_only_when_its_body_ends(flavour: Flavour) -> None:
    hx = flavour.hx
    clock = ManualClock()
    upstream = Upstream(hx)
    client, registry = make_client(flavour, upstream, clock=clock)
    with client:
        open_then_half_open(client, clock, registry)
        upstream.next_stream = chunks(hx, count=3)
        with client.stream("GET", "/stream") as response:
            assert snap(registry).state is HALF_OPEN
            for _ in response.iter_raw():
                assert snap(registry).state is HALF_OPEN
            # StopIteration has been seen: the outcome settled.
            assert snap(registry).state is CLOSED


class Interrupted(BaseException):
    """Stands in for KeyboardInterrupt: a BaseException that is not an Exception."""


def test_sync_interrupt_while_awaiting_headers_records_nothing_and_frees_the_slot(
    flavour: Flavour,
) -> None:
    hx = flavour.hx
    clock = ManualClock()

    def handler(request: hx.Request) -> hx.Response:
        if request.url.path == "/interrupt":
            raise Interrupted
        return hx.Response(500 if request.url.path == "/status/500" else 200)

    client, registry = make_client(flavour, handler, clock=clock)
    with client:
        open_then_half_open(client, clock, registry)
        with pytest.raises(Interrupted):
            client.get("/interrupt")
        s = snap(registry)
        assert (s.state, s.trials_in_flight, s.open_count) == (HALF_OPEN, 0, 1)
        assert client.get("/").extensions["circuit_breaker"]["state"] == "half_open"
    assert snap(registry).state is CLOSED


def test_sync_interrupt_while_reading_the_body_records_nothing(flavour: Flavour) -> None:
    hx = flavour.hx
    clock = ManualClock()
    upstream = Upstream(hx)
    client, registry = make_client(flavour, upstream, clock=clock)
    with client:
        open_then_half_open(client, clock, registry)
        upstream.next_stream = chunks(hx, count=3, fail_after=1, error=Interrupted())
        with pytest.raises(Interrupted):
            client.get("/stream")
        s = snap(registry)
        # neither a failed trial (open again) nor a successful one (closed)
        assert (s.state, s.trials_in_flight, s.open_count) == (HALF_OPEN, 0, 1)
    client, registry = make_client(flavour, upstream, COUNT_ONLY)
    with client:
        upstream.next_stream = chunks(hx, count=3, fail_after=1, error=Interrupted())
        with pytest.raises(Interrupted):
            client.get("/stream")
        assert snap(registry).calls == 0


def test_half_open_trial_failing_mid_body_reopens_with_backoff(flavour: Flavour) -> None:
    hx = flavour.hx
    clock = ManualClock()
    upstream = Upstream(hx)
    client, registry = make_client(flavour, upstream, clock=clock)
    with client:
        open_then_half_open(client, clock, registry)
        upstream.next_stream = chunks(hx, count=3, fail_after=1)
        with pytest.raises(hx.ReadError):
            client.get("/stream")
    s = snap(registry)
    assert s.state is OPEN
    assert s.retry_after == pytest.approx(20.0)
    assert s.open_count == 2
