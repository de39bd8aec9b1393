"""What a request through the httpx transports records: statuses, errors, short circuits.

And what a failure's ``Retry-After`` does to the open period.

Every test runs with httpx and with httpx2 (the ``flavour`` fixture of ``conftest.py``).
``MockTransport`` stands in for the network, so every outcome is chosen by hand and
every duration comes from a ``ManualClock`` moved inside the handler or inside the
response stream. Nothing here sleeps to synchronise: threads and tasks meet on events.
The real-socket twins of these files are ``test_httpx_sockets*.py``.
"""

from __future__ import annotations

import anyio
import pytest
from hx_support import (
    BASE,
    CLOSED,
    COUNT_ONLY,
    FAILING,
    FAILURE_STATUSES,
    FORCED_OPEN,
    HALF_OPEN,
    IGNORED,
    KEY,
    OPEN,
    SUCCESS_STATUSES,
    TRIP1,
    Flavour,
    Upstream,
    async_open_then_half_open,
    chunks,
    make_async_client,
    make_client,
    make_error,
    open_then_half_open,
    snap,
)

from circuitbreaker_http import (
    BreakerConfig,
    BreakerRegistry,
    CallInfo,
    CircuitOpenError,
    Verdict,
)
from circuitbreaker_http.testing import ManualClock

# -- what counts -----------------------------------------------------------------------------


@pytest.mark.parametrize("status", FAILURE_STATUSES)
def test_failure_status_trips_and_is_returned(flavour: Flavour, status: int) -> None:
    hx = flavour.hx
    upstream = Upstream(hx)
    client, registry = make_client(flavour, upstream)
    with client:
        response = client.get(f"/status/{status}")
        assert response.status_code == status
        assert response.text == f"upstream {status}"
        s = snap(registry)
        assert (s.state, s.calls, s.failures) == (OPEN, 1, 1)
        with pytest.raises(CircuitOpenError):
            client.get(f"/status/{status}")
    assert len(upstream.calls) == 1


@pytest.mark.parametrize("status", SUCCESS_STATUSES)
def test_success_status_does_not_trip(flavour: Flavour, status: int) -> None:
    hx = flavour.hx
    upstream = Upstream(hx)
    client, registry = make_client(flavour, upstream)
    with client:
        for _ in range(3):
            assert client.get(f"/status/{status}").status_code == status
    s = snap(registry)
    assert (s.state, s.calls, s.failures) == (CLOSED, 3, 0)


def test_custom_failure_statuses_are_honoured(flavour: Flavour) -> None:
    hx = flavour.hx
    config = BreakerConfig(
        consecutive_failures=1, failure_rate=None, failure_statuses={404}, open_duration=10.0
    )
    client, registry = make_client(flavour, Upstream(hx), config)
    with client:
        assert client.get("/status/503").status_code == 503
        assert snap(registry).state is CLOSED
        assert client.get("/status/404").status_code == 404
        assert snap(registry).state is OPEN


@pytest.mark.parametrize("name", FAILING)
def test_transport_failures_trip(flavour: Flavour, name: str) -> None:
    hx = flavour.hx
    upstream = Upstream(hx)
    client, registry = make_client(flavour, upstream)
    expected = type(make_error(hx, name, hx.Request("GET", BASE)))
    with client:
        with pytest.raises(expected) as caught:
            client.get(f"/raise/{name}")
        assert not isinstance(caught.value, CircuitOpenError)
        s = snap(registry)
        assert (s.state, s.calls, s.failures) == (OPEN, 1, 1)
        with pytest.raises(CircuitOpenError):
            client.get("/")
    assert len(upstream.calls) == 1


@pytest.mark.parametrize("name", IGNORED)
def test_errors_that_say_nothing_about_the_upstream_are_not_recorded(
    flavour: Flavour, name: str
) -> None:
    hx = flavour.hx
    upstream = Upstream(hx)
    client, registry = make_client(flavour, upstream)
    expected = type(make_error(hx, name, hx.Request("GET", BASE)))
    with client:
        for _ in range(3):
            with pytest.raises(expected):
                client.get(f"/raise/{name}")
        s = snap(registry)
        assert (s.state, s.calls, s.failures) == (CLOSED, 0, 0)
        assert client.get("/").status_code == 200
    assert len(upstream.calls) == 4


@pytest.mark.parametrize("name", IGNORED)
def test_ignored_error_gives_a_half_open_trial_slot_back(flavour: Flavour, name: str) -> None:
    hx = flavour.hx
    clock = ManualClock()
    upstream = Upstream(hx)
    client, registry = make_client(flavour, upstream, clock=clock)
    with client:
        open_then_half_open(client, clock, registry)
        with pytest.raises(Exception) as caught:
            client.get(f"/raise/{name}")
        assert not isinstance(caught.value, CircuitOpenError)
        s = snap(registry)
        assert (s.state, s.trials_in_flight) == (HALF_OPEN, 0)
        # The slot is free: the next request is a trial, and it closes the breaker.
        response = client.get("/")
        assert response.extensions["circuit_breaker"]["state"] == "half_open"
        assert snap(registry).state is CLOSED


def test_nested_breaker_short_circuit_is_not_recorded_by_the_outer_one(flavour: Flavour) -> None:
    hx, cb = flavour
    upstream = Upstream(hx)
    inner_registry = BreakerRegistry(TRIP1, clock=ManualClock())
    outer_registry = BreakerRegistry(TRIP1, clock=ManualClock())
    inner = cb.CircuitBreakerTransport(hx.MockTransport(upstream), registry=inner_registry)
    outer = cb.CircuitBreakerTransport(inner, registry=outer_registry)
    inner_registry.get(KEY).force_open()
    with hx.Client(transport=outer, base_url=BASE) as client:
        for _ in range(3):
            with pytest.raises(CircuitOpenError) as caught:
                client.get("/")
            assert caught.value.state is FORCED_OPEN
    s = snap(outer_registry)
    assert (s.state, s.calls) == (CLOSED, 0)
    assert upstream.calls == []


def test_nested_breaker_short_circuit_is_not_recorded_even_when_classify_says_failure(
    flavour: Flavour,
) -> None:
    hx, cb = flavour

    def classify(call: CallInfo) -> Verdict | None:
        return Verdict.FAILURE if call.error is not None else None

    config = BreakerConfig(consecutive_failures=1, failure_rate=None, classify=classify)
    inner = cb.CircuitBreakerTransport(hx.MockTransport(Upstream(hx)), config=TRIP1)
    inner.registry.get(KEY).force_open()
    outer = cb.CircuitBreakerTransport(inner, config=config)
    with hx.Client(transport=outer, base_url=BASE) as client, pytest.raises(CircuitOpenError):
        client.get("/")
    s = outer.registry.get(KEY).snapshot()
    assert (s.state, s.calls) == (CLOSED, 0)


def test_short_circuit_error_carries_the_request_from_the_transport_itself(
    flavour: Flavour,
) -> None:
    hx, cb = flavour
    transport = cb.CircuitBreakerTransport(hx.MockTransport(Upstream(hx)))
    transport.registry.get(KEY).force_open()
    request = hx.Request("GET", f"{BASE}/x")
    with pytest.raises(CircuitOpenError) as caught:
        transport.handle_request(request)
    assert isinstance(caught.value, hx.TransportError)
    assert caught.value.request is request
    transport.close()


@pytest.mark.anyio
async def test_async_short_circuit_error_carries_the_request(flavour: Flavour) -> None:
    hx, cb = flavour
    transport = cb.AsyncCircuitBreakerTransport(hx.MockTransport(Upstream(hx)))
    transport.registry.get(KEY).force_open()
    request = hx.Request("GET", f"{BASE}/x")
    with pytest.raises(CircuitOpenError) as caught:
        await transport.handle_async_request(request)
    assert isinstance(caught.value, hx.TransportError)
    assert caught.value.request is request
    await transport.aclose()


@pytest.mark.anyio
async def test_async_statuses_and_errors_are_classified(flavour: Flavour) -> None:
    hx = flavour.hx
    upstream = Upstream(hx)
    client, registry = make_async_client(flavour, upstream, COUNT_ONLY)
    async with client:
        for status in [*FAILURE_STATUSES, *SUCCESS_STATUSES]:
            assert (await client.get(f"/status/{status}")).status_code == status
        s = snap(registry)
        assert (s.calls, s.failures) == (
            len(FAILURE_STATUSES) + len(SUCCESS_STATUSES),
            len(FAILURE_STATUSES),
        )
        for name in FAILING:
            with pytest.raises(hx.TransportError):
                await client.get(f"/raise/{name}")
        s = snap(registry)
        assert s.failures == len(FAILURE_STATUSES) + len(FAILING)
        for name in IGNORED:
            with pytest.raises(Exception) as caught:
                await client.get(f"/raise/{name}")
            assert not isinstance(caught.value, CircuitOpenError)
        after = snap(registry)
        assert (after.calls, after.failures) == (s.calls, s.failures)


@pytest.mark.anyio
async def test_async_failure_trips_and_short_circuits(flavour: Flavour) -> None:
    hx = flavour.hx
    upstream = Upstream(hx)
    client, _registry = make_async_client(flavour, upstream)
    async with client:
        with pytest.raises(hx.ReadTimeout):
            await client.get("/raise/read_timeout")
        with pytest.raises(CircuitOpenError) as caught:
            await client.get("/status/200")
    assert isinstance(caught.value, hx.TransportError)
    assert caught.value.request.url == f"{BASE}/status/200"
    assert len(upstream.calls) == 1


def test_redirect_hops_are_requests_of_their_own(flavour: Flavour) -> None:
    hx = flavour.hx

    def handler(request: hx.Request) -> hx.Response:
        hops = int(request.url.path.rsplit("/", 1)[1])
        if hops:
            return hx.Response(302, headers={"Location": f"/redirect/{hops - 1}"})
        return hx.Response(200, content=b"done")

    client, registry = make_client(flavour, handler, COUNT_ONLY)
    with client:
        response = client.get("/redirect/3", follow_redirects=True)
    assert response.status_code == 200
    assert len(response.history) == 3
    assert snap(registry).calls == 4


def test_classify_decides_first_and_is_asked_again_for_a_body_error(flavour: Flavour) -> None:
    hx = flavour.hx
    seen: list[tuple[int | None, str | None]] = []

    def classify(call: CallInfo) -> Verdict | None:
        seen.append((call.status, type(call.error).__name__ if call.error else None))
        if call.url.endswith("/ignore"):
            return Verdict.IGNORE
        if call.status == 503:
            return Verdict.SUCCESS
        if call.status == 299:
            return Verdict.FAILURE
        return None

    config = BreakerConfig(consecutive_failures=None, failure_rate=None, classify=classify)
    upstream = Upstream(hx)
    client, registry = make_client(flavour, upstream, config)
    with client:
        client.get("/status/503")
        client.get("/status/299")
        client.get("/status/500/ignore")
        upstream.next_stream = chunks(hx, fail_after=1)
        with pytest.raises(hx.ReadError):
            client.get("/stream")
    s = snap(registry)
    assert (s.calls, s.failures) == (3, 2)  # 503 success, 299 failure, body error failure
    assert seen[-2:] == [(200, None), (200, "ReadError")]


# -- short circuits --------------------------------------------------------------------------


def test_short_circuit_never_reaches_the_inner_transport(flavour: Flavour) -> None:
    hx, cb = flavour
    clock = ManualClock()
    upstream = Upstream(hx)
    client, _registry = make_client(flavour, upstream, clock=clock)
    with client:
        client.get("/status/503")
        clock.advance(2.5)
        for _ in range(5):
            with pytest.raises(CircuitOpenError) as caught:
                client.post("/anything", content=b"x")
    error = caught.value
    assert isinstance(error, hx.TransportError)
    assert isinstance(error, cb.CircuitOpenTransportError)
    assert error.request.method == "POST"
    assert error.request.url == f"{BASE}/anything"
    assert error.name == KEY
    assert error.state is OPEN
    assert error.retry_after == pytest.approx(7.5)
    assert "is open" in str(error)
    assert len(upstream.calls) == 1


def test_forced_open_short_circuits_until_reset(flavour: Flavour) -> None:
    hx = flavour.hx
    upstream = Upstream(hx)
    client, registry = make_client(flavour, upstream)
    with client:
        registry.get(KEY).force_open()
        for _ in range(3):
            with pytest.raises(CircuitOpenError) as caught:
                client.get("/")
            assert (caught.value.state, caught.value.retry_after) == (FORCED_OPEN, None)
            assert "forced open" in str(caught.value)
        assert upstream.calls == []
        registry.get(KEY).reset()
        assert client.get("/").status_code == 200
    assert len(upstream.calls) == 1


@pytest.mark.anyio
async def test_half_open_full_short_circuit_has_no_retry_after(flavour: Flavour) -> None:
    hx = flavour.hx
    clock = ManualClock()
    entered = anyio.Event()
    release = anyio.Event()

    async def handler(request: hx.Request) -> hx.Response:
        if request.url.path == "/status/500":
            return hx.Response(500)
        entered.set()
        await release.wait()
        return hx.Response(200)

    client, registry = make_async_client(flavour, handler, clock=clock)
    async with client:
        await async_open_then_half_open(client, clock, registry)
        async with anyio.create_task_group() as tg:
            tg.start_soon(client.get, "/slow")
            await entered.wait()
            with pytest.raises(CircuitOpenError) as caught:
                await client.get("/other")
            release.set()
    assert caught.value.state is HALF_OPEN
    assert caught.value.retry_after is None
    assert "half-open" in str(caught.value)
    assert snap(registry).state is CLOSED


# -- Retry-After -------------------------------------------------------------------------------

DATE = "Sun, 06 Nov 1994 08:49:37 GMT"
DATE_PLUS_120 = "Sun, 06 Nov 1994 08:51:37 GMT"


@pytest.mark.parametrize(
    ("query", "retry_after"),
    [
        ("retry_after=120", 120.0),
        ("retry_after=%20120%20", 120.0),
        ("retry_after=5", 10.0),  # shorter than the open period: no effect
        (f"retry_after={DATE_PLUS_120}&date={DATE}", 120.0),
        (f"retry_after={DATE}&date={DATE_PLUS_120}", 10.0),  # a date in the past
        ("retry_after=100000", 300.0),  # capped at max_open_duration
        ("retry_after=" + "9" * 60, 300.0),  # huge digits, still capped
        ("retry_after=soon", 10.0),
        ("retry_after=-5", 10.0),
        ("retry_after=1e3", 10.0),
        ("retry_after=12.5", 10.0),
        ("retry_after=0x20", 10.0),
        ("retry_after=", 10.0),
        ("retry_after=Mon, 99 Foo 2024 99:99:99 GMT", 10.0),
        ("retry_after=Sun, 06 Nov 99999 08:49:37 GMT", 10.0),
        (f"retry_after={DATE_PLUS_120}&date=yesterday", 10.0),  # no usable Date: wall clock
    ],
)
def test_retry_after_on_a_failure_lengthens_the_open_period(
    flavour: Flavour, query: str, retry_after: float
) -> None:
    hx = flavour.hx
    # The wall clock is far past 1994, so a date read against it lies in the past.
    client, registry = make_client(flavour, Upstream(hx), wall_clock=lambda: 1.7e9)
    with client:
        assert client.get(f"/status/503?{query}").status_code == 503
    s = snap(registry)
    assert s.state is OPEN
    assert s.retry_after == pytest.approx(retry_after)


def test_retry_after_http_date_without_date_header_uses_the_wall_clock(flavour: Flavour) -> None:
    hx = flavour.hx
    wall = 784111777.0  # DATE as seconds since the epoch
    client, registry = make_client(flavour, Upstream(hx), wall_clock=lambda: wall)
    with client:
        client.get(f"/status/429?retry_after={DATE_PLUS_120}")
    assert snap(registry).retry_after == pytest.approx(120.0)


def test_retry_after_before_the_trip_is_remembered_until_it_passes(flavour: Flavour) -> None:
    hx = flavour.hx
    clock = ManualClock()
    config = BreakerConfig(consecutive_failures=2, failure_rate=None, open_duration=10.0)
    client, registry = make_client(flavour, Upstream(hx), config, clock)
    with client:
        client.get("/status/503?retry_after=60")
        clock.advance(20.0)
        client.get("/status/503")  # trips: the not-before time lies 40 s ahead
    assert snap(registry).retry_after == pytest.approx(40.0)


def test_retry_after_is_ignored_when_not_respected_or_not_a_failure(flavour: Flavour) -> None:
    hx = flavour.hx
    config = BreakerConfig(
        consecutive_failures=1, failure_rate=None, open_duration=10.0, respect_retry_after=False
    )
    client, registry = make_client(flavour, Upstream(hx), config)
    with client:
        client.get("/status/503?retry_after=120")
    assert snap(registry).retry_after == pytest.approx(10.0)
    client, registry = make_client(flavour, Upstream(hx))
    with client:
        client.get("/status/200?retry_after=120")
        client.get("/status/503")
    assert snap(registry).retry_after == pytest.approx(10.0)


def test_retry_after_on_a_failed_trial_sets_the_next_open_period(flavour: Flavour) -> None:
    hx = flavour.hx
    clock = ManualClock()
    client, registry = make_client(flavour, Upstream(hx), clock=clock)
    with client:
        open_then_half_open(client, clock, registry)
        client.get("/status/503?retry_after=200")
    s = snap(registry)
    assert (s.state, s.open_count) == (OPEN, 2)
    assert s.retry_after == pytest.approx(200.0)
