"""DESIGN rule 9: one contract every storage passes, run on memory and on a real Redis.

Two front-ends of one backend stand for two processes of a fleet (distinct
process ids): ``MemoryStorage.peer()`` for memory, two ``RedisStorage`` (or
``AsyncRedisStorage``, driven from its loop thread) objects on one prefix for
Redis. Times are the storage's own (monotonic for memory,
Redis' ``TIME``): waits poll with deadlines.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from circuitbreaker_http import BreakerConfig, CircuitState
from circuitbreaker_http._core import FleetState
from circuitbreaker_http.storage import BreakerReport, FleetSettings, MemoryStorage, Storage

from .conftest import AsyncRedisFactory, Blocking, redis_client

CLOSED = CircuitState.CLOSED
OPEN = CircuitState.OPEN
HALF_OPEN = CircuitState.HALF_OPEN
FORCED_OPEN = CircuitState.FORCED_OPEN
DISABLED = CircuitState.DISABLED

CONFIG = BreakerConfig(
    minimum_calls=5,
    failure_rate=0.5,
    window=10.0,
    open_duration=0.05,
    max_open_duration=0.4,
    half_open_max_calls=2,
    success_threshold=2,
)


class Backend:
    """Makes storages that share one fleet state, and inspects what is stored."""

    def __init__(self, kind: str, prefix: str) -> None:
        self.kind = kind
        self.prefix = prefix
        self.memory: MemoryStorage | None = None
        self.clients: list[Any] = []
        self.factory: AsyncRedisFactory | None = None

    def storage(self, min_reporters: int = 1) -> Any:
        if self.kind == "memory":
            if self.memory is None:
                self.memory = MemoryStorage(min_reporters=min_reporters)
                return self.memory
            return self.memory.peer(min_reporters=min_reporters)
        from circuitbreaker_http.redis import RedisStorage

        client = redis_client()
        self.clients.append(client)  # the async kind inspects keys with it
        if self.kind == "redis-async":
            if self.factory is None:
                self.factory = AsyncRedisFactory()
            made = self.factory.storage(self.prefix, min_reporters=min_reporters)
            return Blocking(made, self.factory.thread)
        return RedisStorage(client, prefix=self.prefix, min_reporters=min_reporters)

    def ttls(self) -> dict[str, float]:
        """Seconds to live of every stored key (memory: its records)."""
        if self.kind == "memory":
            assert self.memory is not None
            return self.memory.ttls()
        client = self.clients[0]
        return {
            key.decode(): client.pttl(key) / 1000
            for key in client.scan_iter(match=f"{self.prefix}:*", count=1000)
        }


@pytest.fixture(params=["memory", "redis", "redis-async"])
def backend(request: pytest.FixtureRequest, redis_prefix: str) -> Iterator[Backend]:
    if request.param != "memory":
        redis_client().close()  # skips without a server
    made = Backend(request.param, redis_prefix)
    yield made
    if made.factory is not None:
        made.factory.close()
    for client in made.clients:
        client.close()


def report(key: str = "k", config: BreakerConfig = CONFIG, **fields: Any) -> BreakerReport:
    return BreakerReport(key=key, settings=FleetSettings.of(config), **fields)


def one(storage: Storage, **fields: Any) -> FleetState:
    (reply,) = storage.exchange([report(**fields)])
    return reply


def wait_for(check: Callable[[], FleetState | None], timeout: float = 3.0) -> FleetState:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found is not None:
            return found
        time.sleep(0.01)
    raise AssertionError("condition not met in time")


def half_open(storage: Storage, cycle: int) -> FleetState:
    """Wait out the open period, then claim leases (wanting 3, at most 2 are granted)."""
    return wait_for(
        lambda: (
            r
            if (r := one(storage, fleet_cycle=cycle, leases_wanted=3)).state is HALF_OPEN
            else None
        )
    )


class TestStorageContract:
    def test_a_new_breaker_is_closed_and_fresh_once(self, backend: Backend) -> None:
        storage = backend.storage()
        first = one(storage)
        assert (first.state, first.fleet_cycle, first.fresh) == (CLOSED, 1, True)
        assert one(storage, fleet_cycle=1).fresh is False

    def test_windows_add_up_across_processes_and_trip(self, backend: Backend) -> None:
        a, b = backend.storage(), backend.storage()
        # Each process alone stays below minimum_calls (5).
        reply = one(a, fleet_cycle=1, calls=3, failures=3)
        assert reply.state is CLOSED and (reply.calls, reply.failures) == (3, 3)
        reply = one(b, fleet_cycle=1, calls=3, failures=2)
        assert reply.state is OPEN
        assert reply.reason == "failure_rate"
        assert reply.fleet_cycle == 2
        assert 0.0 < reply.open_remaining <= 0.05 + 1e-6
        assert reply.open_count == 1
        assert (reply.calls, reply.failures) == (6, 5)  # a trip keeps the window

    def test_slow_call_rate_trips_on_the_fleets_window(self, backend: Backend) -> None:
        config = CONFIG.replace(slow_call_duration=1.0, slow_call_rate=0.5, failure_rate=None)
        storage = backend.storage()
        (reply,) = storage.exchange([report(config=config, calls=6, slow_calls=3)])
        assert (reply.state, reply.reason) == (OPEN, "slow_call_rate")

    def test_min_reporters_needs_failures_from_distinct_processes(self, backend: Backend) -> None:
        a, b = backend.storage(min_reporters=2), backend.storage(min_reporters=2)
        reply = one(a, fleet_cycle=1, calls=20, failures=20, trip="consecutive_failures")
        assert reply.state is CLOSED  # one bad process cannot open the fleet
        assert one(a, fleet_cycle=1, calls=5, failures=5).state is CLOSED
        reply = one(b, fleet_cycle=1, calls=1, failures=1)
        assert (reply.state, reply.reason) == (OPEN, "failure_rate")

    def test_a_consecutive_failures_proposal_trips_a_rate_proposal_is_judged(
        self, backend: Backend
    ) -> None:
        storage = backend.storage()
        # A local rate trip counts only if the fleet's window agrees.
        reply = one(storage, fleet_cycle=1, calls=1, failures=1, trip="failure_rate")
        assert reply.state is CLOSED
        reply = one(storage, fleet_cycle=1, calls=1, failures=1, trip="consecutive_failures")
        assert (reply.state, reply.reason) == (OPEN, "consecutive_failures")

    def test_cas_on_the_cycle_drops_stale_reports(self, backend: Backend) -> None:
        a, b = backend.storage(), backend.storage()
        opened = one(a, fleet_cycle=1, calls=5, failures=5)
        assert opened.state is OPEN
        one(a, manual="reset")
        # b still thinks cycle 1: its outcomes and its trip belong to a cycle gone.
        stale = one(b, fleet_cycle=1, calls=50, failures=50, trip="consecutive_failures")
        assert stale.state is CLOSED
        assert stale.fleet_cycle == opened.fleet_cycle + 1
        assert (stale.calls, stale.failures) == (0, 0)
        # In the current cycle they count again.
        assert one(b, fleet_cycle=stale.fleet_cycle, calls=1, failures=0).calls == 1

    def test_manual_states_apply_fleet_wide(self, backend: Backend) -> None:
        a, b = backend.storage(), backend.storage()
        one(a)
        forced = one(a, manual="force_open")
        assert (forced.state, forced.reason) == (FORCED_OPEN, "force_open")
        seen = one(b, fleet_cycle=1, calls=10, failures=10)
        assert seen.state is FORCED_OPEN and seen.calls == 0
        disabled = one(b, manual="disable")
        assert disabled.state is DISABLED
        assert one(a, fleet_cycle=disabled.fleet_cycle).state is DISABLED
        reset = one(a, manual="reset")
        assert (reset.state, reset.reason) == (CLOSED, "reset")
        assert reset.fleet_cycle == disabled.fleet_cycle + 1

    def test_open_half_open_leases_and_closing(self, backend: Backend) -> None:
        a, b = backend.storage(), backend.storage()
        opened = one(a, fleet_cycle=1, calls=5, failures=5)
        first = half_open(a, opened.fleet_cycle)
        assert first.reason == "open_period_ended"
        assert len(first.leases) == 2  # half_open_max_calls fleet-wide
        assert one(b, fleet_cycle=first.fleet_cycle, leases_wanted=1).leases == ()
        lease1, lease2 = first.leases
        reply = one(a, fleet_cycle=first.fleet_cycle, lease_returns=((lease1, True),))
        assert reply.state is HALF_OPEN  # success_threshold is 2
        # The slot freed by a settled trial goes to whoever asks.
        (lease3,) = one(b, fleet_cycle=first.fleet_cycle, leases_wanted=1).leases
        reply = one(b, fleet_cycle=first.fleet_cycle, lease_returns=((lease3, True),))
        assert (reply.state, reply.reason) == (CLOSED, "trials_succeeded")
        # A lease of a cycle gone counts for nothing.
        reply = one(a, fleet_cycle=reply.fleet_cycle, lease_returns=((lease2, False),))
        assert reply.state is CLOSED

    def test_a_failed_trial_reopens_with_backoff(self, backend: Backend) -> None:
        storage = backend.storage()
        config = CONFIG.replace(open_backoff=4.0)

        def ask(**fields: Any) -> FleetState:
            (reply,) = storage.exchange([report(config=config, **fields)])
            return reply

        opened = ask(fleet_cycle=1, calls=5, failures=5)
        trial = wait_for(
            lambda: (
                r
                if (r := ask(fleet_cycle=opened.fleet_cycle, leases_wanted=1)).state is HALF_OPEN
                else None
            )
        )
        reopened = ask(fleet_cycle=trial.fleet_cycle, lease_returns=((trial.leases[0], False),))
        assert (reopened.state, reopened.reason, reopened.open_count) == (OPEN, "trial_failed", 2)
        assert 0.1 < reopened.open_remaining <= 0.2 + 1e-6  # 0.05 x 4, on the storage's clock

    def test_an_expired_lease_is_a_failed_trial(self, backend: Backend) -> None:
        storage = backend.storage()
        opened = one(storage, fleet_cycle=1, calls=5, failures=5)
        trial = half_open(storage, opened.fleet_cycle)
        assert trial.leases
        # Nobody returns them; max_open_duration (0.4 s) later they have expired.
        reply = wait_for(
            lambda: (
                r
                if (r := one(storage, fleet_cycle=trial.fleet_cycle)).state is not HALF_OPEN
                else None
            )
        )
        assert (reply.state, reply.reason) == (OPEN, "trial_timed_out")

    def test_retry_after_raises_the_open_period(self, backend: Backend) -> None:
        storage = backend.storage()
        reply = one(storage, fleet_cycle=1, calls=5, failures=5, not_before=0.3)
        assert reply.state is OPEN
        assert 0.25 < reply.open_remaining <= 0.3 + 1e-6
        capped = one(
            backend.storage(), key="other", fleet_cycle=1, calls=5, failures=5, not_before=99.0
        )
        assert capped.open_remaining <= 0.4 + 1e-6  # max_open_duration

    def test_every_stored_key_has_a_ttl(self, backend: Backend) -> None:
        storage = backend.storage()
        one(storage, fleet_cycle=1, calls=5, failures=5)
        half_open(storage, 2)
        ttls = backend.ttls()
        assert ttls
        limit = FleetSettings.of(CONFIG).ttl
        assert all(0 < ttl <= limit + 0.01 for ttl in ttls.values()), ttls

    def test_odd_and_long_keys_make_bounded_names_and_are_listed(self, backend: Backend) -> None:
        storage = backend.storage()
        keys = ["x" * 100_000, "a}{b:c\n\x00", "\ud800 lone surrogate", "https://api.example.com"]
        storage.exchange([report(key=key) for key in keys])
        assert sorted(storage.breakers()) == sorted(keys)
        names = backend.ttls()
        if backend.kind != "memory":
            assert all(len(name) <= len(backend.prefix) + 40 for name in names)
        else:
            assert {len(name) for name in names} == {32}

    def test_replies_come_in_report_order_for_many_breakers(self, backend: Backend) -> None:
        storage = backend.storage()
        keys = [f"k{i}" for i in range(50)]
        replies = storage.exchange(
            [report(key=key, calls=5, failures=5 * (i % 2)) for i, key in enumerate(keys)]
        )
        assert [r.key for r in replies] == keys
        assert [r.state for r in replies] == [CLOSED, OPEN] * 25
