"""Typical user code of the breaker itself, checked with ``mypy --strict`` (never run).

``tests/package/test_user_typing.py`` runs ``mypy --strict tests/typing``: a
public name whose types make ordinary code fail under ``--strict``, or whose
types drift from what users see (``assert_type``), fails that test. Nothing
here is collected by pytest (the file names do not start with ``test_``) and
nothing runs on import: each example is a function that is never called.

``assert_type`` comes from ``typing_extensions`` because the project's mypy
checks against Python 3.10, which has no ``typing.assert_type``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine, Generator, Iterator
from typing import Any

from typing_extensions import assert_type

import circuitbreaker_http
from circuitbreaker_http import (
    DEFAULT_FAILURE_STATUSES,
    BreakerConfig,
    BreakerRegistry,
    BreakerSnapshot,
    CallInfo,
    CircuitBreaker,
    CircuitOpenError,
    CircuitState,
    RequestOptions,
    StateChange,
    Verdict,
    by_host,
    by_route,
    options,
)
from circuitbreaker_http.testing import ManualClock

# -- configuration ----------------------------------------------------------------------------


def configurations() -> None:
    # The docs allow any iterable of ints; the attribute reads as a frozenset.
    from_list = BreakerConfig(failure_statuses=[500, 503])
    from_set = BreakerConfig(failure_statuses={502, 503, 504})
    from_range = BreakerConfig(failure_statuses=range(500, 600))
    from_frozen = BreakerConfig(failure_statuses=DEFAULT_FAILURE_STATUSES | {418})
    from_generator = BreakerConfig(failure_statuses=(s for s in range(500, 505)))
    for config in (from_list, from_set, from_range, from_frozen, from_generator):
        assert_type(config.failure_statuses, frozenset[int])
        assert_type(503 in config.failure_statuses, bool)
    assert_type(DEFAULT_FAILURE_STATUSES, frozenset[int])

    config = BreakerConfig(
        consecutive_failures=3,
        failure_rate=None,
        minimum_calls=20,
        window=60.0,
        slow_call_duration=2.5,
        slow_call_rate=0.8,
        open_duration=10,  # an int where a float is declared: fine
        max_open_duration=120.0,
        open_jitter=0.1,
        half_open_max_calls=2,
        success_threshold=2,
        respect_retry_after=False,
    )
    assert_type(config.consecutive_failures, int | None)
    assert_type(config.failure_rate, float | None)
    assert_type(config.window, float)
    assert_type(config.respect_retry_after, bool)
    stricter = config.replace(failure_rate=0.2, failure_statuses=[503])
    assert_type(stricter, BreakerConfig)
    assert_type(stricter.failure_statuses, frozenset[int])


def classify(call: CallInfo) -> Verdict | None:
    """A ``classify`` hook: 404 from the search API is a failure, a 409 says nothing."""
    assert_type(call.key, str)
    assert_type(call.method, str)
    assert_type(call.url, str)
    assert_type(call.status, int | None)
    assert_type(call.error, BaseException | None)
    assert_type(call.duration, float)
    if call.headers is not None and call.headers.get("X-Maintenance") == "1":
        return Verdict.IGNORE
    if call.status == 404 and "/search" in call.url:
        return Verdict.FAILURE
    if call.status == 409:
        return Verdict.IGNORE
    if isinstance(call.error, KeyError):
        return Verdict.SUCCESS
    return None


def classify_configs() -> None:
    BreakerConfig(classify=classify)
    BreakerConfig(classify=lambda call: Verdict.FAILURE if call.status == 418 else None)
    hook = BreakerConfig(classify=classify).classify
    assert_type(hook, Callable[[CallInfo], Verdict | None] | None)
    verdict = Verdict("ignore")
    assert_type(verdict, Verdict)
    assert_type(verdict.value, str)


# -- the breaker as a decorator ---------------------------------------------------------------

breaker = CircuitBreaker("payments", BreakerConfig(consecutive_failures=3))


@breaker
def charge(amount: int, *, currency: str = "EUR") -> dict[str, Any]:
    return {"amount": amount, "currency": currency}


@breaker
async def charge_async(amount: int) -> str:
    await asyncio.sleep(0)
    return f"charged {amount}"


@breaker
def pages(first: int) -> Iterator[bytes]:
    yield b"page %d" % first


@breaker
def echo() -> Generator[int, str, bool]:
    received = yield 1
    return received == "stop"


@breaker
async def events(limit: int) -> AsyncIterator[str]:
    for number in range(limit):
        yield str(number)


class Client:
    """A method decorated with a breaker keeps its ``self`` and signature."""

    @breaker
    def fetch(self, path: str) -> bytes:
        return path.encode()

    @breaker
    async def fetch_async(self, path: str) -> bytes:
        return path.encode()


def decorated_functions_keep_their_signature() -> None:
    assert_type(charge(10), dict[str, Any])
    assert_type(charge(10, currency="USD"), dict[str, Any])
    as_callable: Callable[[int], dict[str, Any]] = charge  # still a callable of that shape
    assert_type(as_callable(5), dict[str, Any])
    for chunk in pages(1):
        assert_type(chunk, bytes)
    gen = echo()
    assert_type(gen, Generator[int, str, bool])
    assert_type(next(gen), int)
    assert_type(gen.send("stop"), int)
    assert_type(Client().fetch("/x"), bytes)


async def decorated_coroutines_stay_coroutines() -> None:
    # The issue that made this file: ``create_task`` needs a Coroutine, not an Awaitable.
    task = asyncio.create_task(charge_async(10))
    assert_type(task, asyncio.Task[str])
    assert_type(await task, str)
    # Assignable to Coroutine, as create_task needs: a bare Awaitable would not be.
    coroutine: Coroutine[Any, Any, str] = charge_async(1)
    assert_type(await coroutine, str)
    done = await asyncio.gather(charge_async(1), charge_async(2))
    assert_type(done, tuple[str, str])
    loop = asyncio.get_running_loop()
    assert_type(loop.create_task(charge_async(4)), asyncio.Task[str])
    assert_type(asyncio.ensure_future(charge_async(5)), asyncio.Task[str])
    assert_type(await asyncio.wait_for(charge_async(3), timeout=1.0), str)
    assert_type(await Client().fetch_async("/y"), bytes)
    async for event in events(3):
        assert_type(event, str)
    stream = events(1)
    assert_type(stream, AsyncIterator[str])


def a_decorator_factory_of_ones_own(
    name: str,
) -> Callable[[Callable[[int], str]], Callable[[int], str]]:
    """Users build their own decorators on top of a breaker; its type composes."""
    own = CircuitBreaker(name)

    def decorate(fn: Callable[[int], str]) -> Callable[[int], str]:
        return own(fn)

    return decorate


# -- call, call_async and blocks --------------------------------------------------------------


def lookup(user_id: int, *, fresh: bool = False) -> str:
    return f"user {user_id}"


async def lookup_async(user_id: int) -> list[str]:
    return [str(user_id)]


def calls() -> None:
    assert_type(breaker.call(lookup, 42), str)
    assert_type(breaker.call(lookup, 42, fresh=True), str)
    assert_type(breaker.call(lambda: 1.5), float)
    with breaker:
        pass
    with breaker as entered:
        assert_type(entered, CircuitBreaker)


async def async_calls() -> None:
    assert_type(await breaker.call_async(lookup_async, 7), list[str])
    assert_type(await breaker.call_async(charge_async, 7), str)
    async with breaker:
        await asyncio.sleep(0)
    async with breaker as entered:
        assert_type(entered, CircuitBreaker)


# -- state, snapshots, manual control ---------------------------------------------------------


def on_change(change: StateChange) -> None:
    assert_type(change.name, str)
    assert_type(change.old, CircuitState)
    assert_type(change.new, CircuitState)
    assert_type(change.reason, str)
    assert_type(change.at, float)
    if change.new is CircuitState.OPEN:
        print(f"{change.name} opened: {change.reason}")


def state_and_snapshots() -> None:
    clock = ManualClock()
    watched = CircuitBreaker("inventory", clock=clock, on_state_change=on_change)
    CircuitBreaker("any-callable-clock", clock=lambda: 0.0, on_state_change=print)
    assert_type(watched.name, str)
    assert_type(watched.config, BreakerConfig)
    assert_type(watched.state, CircuitState)
    assert_type(watched.state.value, str)
    watched.force_open()
    watched.disable()
    watched.reset()
    clock.advance(30)
    snapshot = watched.snapshot()
    assert_type(snapshot, BreakerSnapshot)
    assert_type(snapshot.name, str)
    assert_type(snapshot.state, CircuitState)
    assert_type(snapshot.calls, int)
    assert_type(snapshot.failures, int)
    assert_type(snapshot.slow_calls, int)
    assert_type(snapshot.consecutive_failures, int)
    assert_type(snapshot.failure_rate, float | None)
    assert_type(snapshot.retry_after, float | None)
    assert_type(snapshot.as_dict(), dict[str, Any])
    if snapshot.failure_rate is not None and snapshot.failure_rate > 0.5:
        print(f"{snapshot.name}: {snapshot.failure_rate:.0%} failing")


def errors() -> None:
    try:
        charge(1)
    except CircuitOpenError as error:
        assert_type(error.name, str)
        assert_type(error.state, CircuitState)
        assert_type(error.retry_after, float | None)
        assert_type(error.args, tuple[str])
        assert_type(str(error), str)
        delay = error.retry_after if error.retry_after is not None else 1.0
        assert_type(delay, float)


# -- the registry, keys, per-request options ---------------------------------------------------


def my_key(method: str, url: str) -> str | None:
    """A key function of one's own: health checks bypass the breakers."""
    return None if url.endswith("/health") else url.split("?")[0]


def registries() -> None:
    registry = BreakerRegistry(
        BreakerConfig(failure_rate=0.5),
        rules={
            "payments.example.com": BreakerConfig(failure_rate=0.2),
            "*.internal": BreakerConfig(consecutive_failures=None),
            "api.example.com/v1/reports/*": BreakerConfig(slow_call_duration=5.0),
        },
        key=by_route("/users/{id}", "/users/me", "/orders/{id}/items"),
        max_breakers=1000,
        on_state_change=on_change,
    )
    BreakerRegistry(key=by_host)
    BreakerRegistry(key=my_key)
    BreakerRegistry(key=lambda method, url: "one-for-all")
    assert_type(by_host("GET", "https://api.example.com/x"), str | None)
    assert_type(by_route("/users/{id}")("GET", "https://api.example.com/users/1"), str | None)
    one = registry.get("https://api.example.com")
    assert_type(one, CircuitBreaker)
    assert_type(len(registry), int)
    for each in registry:
        assert_type(each, CircuitBreaker)
    snapshots = registry.snapshot()
    assert_type(snapshots, list[BreakerSnapshot])
    as_json = [snapshot.as_dict() for snapshot in snapshots]
    assert_type(as_json, list[dict[str, Any]])
    assert_type(BreakerRegistry.from_mapping({"default": {"failure_rate": 0.2}}), BreakerRegistry)
    assert_type(BreakerRegistry.from_file("breakers.toml", max_breakers=100), BreakerRegistry)


def per_request_options() -> None:
    with options(bypass=True) as current:
        assert_type(current, RequestOptions)
        assert_type(current.bypass, bool)
        assert_type(current.key, str | None)
    with options(key="reports"), options(bypass=False):
        pass
    with circuitbreaker_http.options(key="k"):
        pass


assert_type(circuitbreaker_http.__version__, str)
