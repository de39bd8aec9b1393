"""BreakerRegistry: one breaker per key, rules by pattern, the max_breakers bound. No network."""

from __future__ import annotations

import contextlib
import random
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from circuitbreaker_http import (
    BreakerConfig,
    BreakerRegistry,
    BreakerSnapshot,
    CircuitBreaker,
    CircuitOpenError,
    CircuitState,
    StateChange,
    by_host,
    by_route,
)
from circuitbreaker_http.testing import ManualClock

CLOSED = CircuitState.CLOSED
OPEN = CircuitState.OPEN
HALF_OPEN = CircuitState.HALF_OPEN
FORCED_OPEN = CircuitState.FORCED_OPEN
DISABLED = CircuitState.DISABLED

# Trips on the first failure and stays open for 10 s: easy to drive by hand.
TRIPPY = BreakerConfig(consecutive_failures=1, failure_rate=None, open_duration=10.0)


def boom() -> None:
    raise RuntimeError("upstream down")


def trip(breaker: CircuitBreaker) -> None:
    with pytest.raises(RuntimeError):
        breaker.call(boom)
    assert breaker.state is OPEN


def names(registry: BreakerRegistry) -> set[str]:
    return {breaker.name for breaker in registry}


def held(registry: BreakerRegistry) -> dict[str, CircuitBreaker]:
    """The breakers held, by name, read without touching their recency."""
    return {breaker.name: breaker for breaker in registry}


@contextlib.contextmanager
def busy_switching() -> Iterator[None]:
    """Switch threads as often as the interpreter allows, to shake out races."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(old)


# -- one breaker per key --------------------------------------------------------


def test_get_creates_once_and_names_the_breaker_by_its_key() -> None:
    registry = BreakerRegistry()
    assert len(registry) == 0
    assert "https://a.test" not in registry
    first = registry.get("https://a.test")
    assert isinstance(first, CircuitBreaker)
    assert first.name == "https://a.test"
    assert registry.get("https://a.test") is first
    assert "https://a.test" in registry
    assert len(registry) == 1
    second = registry.get("payments")
    assert second is not first
    assert second.name == "payments"
    assert len(registry) == 2
    assert list(registry) == [first, second]
    assert 5 not in registry


def test_snapshot_covers_every_breaker() -> None:
    registry = BreakerRegistry()
    assert registry.snapshot() == []
    registry.get("a")
    registry.get("b").force_open()
    snaps = registry.snapshot()
    assert all(isinstance(s, BreakerSnapshot) for s in snaps)
    assert {(s.name, s.state) for s in snaps} == {("a", CLOSED), ("b", FORCED_OPEN)}


def test_iteration_is_a_copy() -> None:
    registry = BreakerRegistry()
    registry.get("a")
    for _ in registry:
        registry.get("b")  # no "dict changed size during iteration"
    assert names(registry) == {"a", "b"}


def test_get_rejects_a_non_str_key() -> None:
    registry = BreakerRegistry()
    with pytest.raises(TypeError, match="must be a str"):
        registry.get(5)  # type: ignore[arg-type]
    assert len(registry) == 0


def test_defaults() -> None:
    registry = BreakerRegistry()
    assert registry.default == BreakerConfig()
    assert registry.key is by_host
    assert registry.max_breakers == 10_000
    assert registry.rules == ()
    assert registry.get("x").config == BreakerConfig()
    assert "by_host" in repr(registry)


def test_a_breaker_gets_the_config_of_its_rule_or_the_default() -> None:
    default = BreakerConfig(open_duration=1.0)
    special = BreakerConfig(open_duration=2.0)
    registry = BreakerRegistry(default, rules={"api.example.com": special})
    assert registry.get("https://api.example.com").config is special
    assert registry.get("https://other.example.com").config is default
    assert registry.config_for("https://api.example.com:8443") is special


# -- rules: which pattern matches which key --------------------------------------

MATCHES = [
    # a host matches any port and any path of that host
    ("api.example.com", "https://api.example.com", True),
    ("api.example.com", "http://api.example.com:8080", True),
    ("api.example.com", "https://api.example.com/users/{id}", True),
    ("API.Example.COM", "https://api.example.com", True),
    ("api.example.com", "https://www.api.example.com", False),
    ("api.example.com", "https://api.example.com.evil.test", False),
    ("api.example.com", "https://xapi.example.com", False),
    # host and port; the key's effective port counts
    ("127.0.0.1:8080", "http://127.0.0.1:8080", True),
    ("127.0.0.1:8080", "http://127.0.0.1:8081", False),
    ("127.0.0.1:8080", "http://127.0.0.1", False),
    ("api.example.com:443", "https://api.example.com", True),
    ("api.example.com:443", "http://api.example.com", False),
    ("api.example.com:80", "http://api.example.com", True),
    ("api.example.com:443", "http://api.example.com:443", True),
    ("api.example.com:8443", "https://api.example.com:8443/v1/{x}", True),
    # IPv6
    ("[::1]:8080", "http://[::1]:8080", True),
    ("[::1]:8080", "http://[::1]:9090", False),
    ("[::1]:8080", "http://127.0.0.1:8080", False),
    ("[::1]", "http://[::1]:9090", True),
    ("::1", "http://[::1]:9090", True),
    ("[::1]:80", "http://[::1]", True),
    # globs: * is any run of characters, dots and slashes included
    ("*.example.com", "https://api.example.com", True),
    ("*.example.com", "https://a.b.c.example.com", True),
    ("*.example.com", "https://example.com", False),
    ("*.example.com", "https://badexample.com", False),
    ("*.example.com", "https://api.example.com.evil.test", False),
    ("api.*.com", "https://api.eu.west.com", True),
    ("api.*.com", "https://api.com", False),
    ("*", "https://anything.test:1234/x/{y}", True),
    ("*:8080", "http://anything.test:8080", True),
    ("*:8080", "http://anything.test:8081", False),
    ("127.0.0.1:80*", "http://127.0.0.1:8080", True),
    ("127.0.0.1:80*", "http://127.0.0.1:9080", False),
    ("*.example.com:*", "https://api.example.com", True),
    # everything but * is literal
    ("api.example.com", "https://apixexample.com", False),
    ("a+b.test", "http://a+b.test", True),
    ("a+b.test", "http://aab.test", False),
    ("[::1]", "http://[1]", False),
    # path globs against route-key templates
    ("api.example.com/v1/payments/*", "https://api.example.com/v1/payments/{id}", True),
    ("api.example.com/v1/payments/*", "https://api.example.com/v1/payments/{id}/refunds", True),
    ("api.example.com/v1/payments/*", "https://api.example.com/v1/payments", False),
    ("api.example.com/v1/payments/*", "https://api.example.com/v1/orders/{id}", False),
    ("api.example.com/v1/payments/*", "https://api.example.com", False),
    ("api.example.com/v1/payments/*", "https://other.example.com/v1/payments/{id}", False),
    ("api.example.com/v1/payments/{id}", "https://api.example.com/v1/payments/{id}", True),
    ("api.example.com/v1/payments/{id}", "https://api.example.com/v1/payments/{key}", False),
    ("*/health", "http://svc.internal:8080/health", True),
    ("*.example.com:8443/v1/*", "https://api.example.com:8443/v1/{x}", True),
    ("*.example.com:8443/v1/*", "https://api.example.com/v1/{x}", False),
    # paths and templates are case-sensitive; hosts are not
    ("API.example.com/v1/Users/{userId}", "https://api.example.com/v1/Users/{userId}", True),
    ("api.example.com/v1/users/*", "https://api.example.com/v1/Users/{id}", False),
    # a key that is not a URL matches only a pattern equal to it
    ("payments", "payments", True),
    ("payments", "payments-eu", False),
    ("pay*", "payments", False),
    ("*", "payments", False),
    ("Payments", "payments", False),
]


@pytest.mark.parametrize(("pattern", "key", "matches"), MATCHES)
def test_rule_matching(pattern: str, key: str, matches: bool) -> None:
    special = BreakerConfig(open_duration=7.0)
    registry = BreakerRegistry(rules={pattern: special})
    assert (registry.config_for(key) is special) is matches
    assert (registry.get(key).config is special) is matches


# (rules in the order listed, key, the pattern that must win)
SPECIFICITY = [
    # a pattern with a path over one without, however exact or long the other
    (["api.example.com:443", "*/v1/*"], "https://api.example.com/v1/{x}", "*/v1/*"),
    # an exact host over a glob, even a longer glob listed first
    (["*.example.com:443", "api.example.com"], "https://api.example.com", "api.example.com"),
    (["*.example.com", "api.example.com"], "https://api.example.com", "api.example.com"),
    # ... also among patterns with a path, before length counts
    (
        ["*.example.com/v1/payments/*", "api.example.com/*"],
        "https://api.example.com/v1/payments/{id}",
        "api.example.com/*",
    ),
    # then the longer pattern
    (["api.example.com", "api.example.com:443"], "https://api.example.com", "api.example.com:443"),
    (["*.com", "*.example.com"], "https://api.example.com", "*.example.com"),
    (["*", "*:8080"], "http://h.test:8080", "*:8080"),
    (
        ["api.example.com/v1/*", "api.example.com/v1/payments/*"],
        "https://api.example.com/v1/payments/{id}",
        "api.example.com/v1/payments/*",
    ),
    # then the one listed first (both globs, no path, same length)
    (["*.example.com", "api.example.*"], "https://api.example.com", "*.example.com"),
    (["api.example.*", "*.example.com"], "https://api.example.com", "api.example.*"),
    (["a*", "*m"], "http://am", "a*"),
    (["*m", "a*"], "http://am", "*m"),
]


@pytest.mark.parametrize(("patterns", "key", "winner"), SPECIFICITY)
def test_the_most_specific_rule_wins(patterns: list[str], key: str, winner: str) -> None:
    configs = {p: BreakerConfig(open_duration=float(i + 1)) for i, p in enumerate(patterns)}
    registry = BreakerRegistry(rules=configs)
    got = registry.config_for(key)
    assert [p for p, c in configs.items() if c is got] == [winner]


@pytest.mark.parametrize(("patterns", "key", "winner"), SPECIFICITY)
def test_the_winner_is_the_same_among_more_rules(
    patterns: list[str], key: str, winner: str
) -> None:
    # Unrelated and less specific rules around them change nothing.
    noise = ["other.test", "*.other.test/x/*", "payments"]
    if winner != "*":
        noise.append("*")
    rules = [*noise[:2], *patterns, *noise[2:]]
    configs = {p: BreakerConfig(open_duration=float(i + 1)) for i, p in enumerate(rules)}
    got = BreakerRegistry(rules=configs).config_for(key)
    assert [p for p, c in configs.items() if c is got] == [winner]


def test_compiled_rules_are_sorted_most_specific_first() -> None:
    rules = {
        "*": BreakerConfig(),
        "*.example.com": BreakerConfig(),
        "api.example.com": BreakerConfig(),
        "api.example.com:443": BreakerConfig(),
        "*/v1/*": BreakerConfig(),
        "api.example.com/v1/*": BreakerConfig(),
    }
    registry = BreakerRegistry(rules=rules)
    assert [r.pattern for r in registry.rules] == [
        "api.example.com/v1/*",
        "*/v1/*",
        "api.example.com:443",
        "api.example.com",
        "*.example.com",
        "*",
    ]


def test_a_key_no_rule_matches_gets_the_default() -> None:
    default = BreakerConfig(open_duration=3.0)
    registry = BreakerRegistry(default, rules={"api.example.com": BreakerConfig()})
    assert registry.config_for("https://other.test") is default
    assert registry.config_for("not a url") is default
    assert registry.config_for("http://host:²") is default


def test_rules_work_with_route_keys_end_to_end() -> None:
    payments = BreakerConfig(open_duration=5.0)
    registry = BreakerRegistry(
        key=by_route("/v1/payments/{id}", "/v1/users/{id}"),
        rules={"api.example.com/v1/payments/*": payments},
    )
    key = registry.key("GET", "https://api.example.com/v1/payments/42")
    assert key == "https://api.example.com/v1/payments/{id}"
    assert registry.get(key).config is payments
    other = registry.key("GET", "https://api.example.com/v1/users/42")
    assert other is not None
    assert registry.get(other).config is registry.default


# -- bad arguments ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ("", "non-empty str"),
        (5, "non-empty str"),
        (None, "non-empty str"),
        ("[::1", "unclosed '\\['"),
        ("[::1]x", "unexpected 'x'"),
        ("[::1]:", "bad port ''"),
        ("[::1]:http", "bad port 'http'"),
        ("host:abc", "bad port 'abc'"),
        ("host:", "bad port ''"),
        ("host:8o", "bad port '8o'"),
        (":8080", "has no host"),
        ("/v1/*", "has no host"),
    ],
)
def test_bad_patterns_raise_naming_the_problem(pattern: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        BreakerRegistry(rules={pattern: BreakerConfig()})
    if isinstance(pattern, str) and pattern:
        assert repr(pattern) in str(info.value)


def test_a_rule_must_map_to_a_breaker_config() -> None:
    with pytest.raises(ValueError, match=r"rules\['api.example.com'\] must be a BreakerConfig"):
        BreakerRegistry(rules={"api.example.com": {"open_duration": 5}})  # type: ignore[dict-item]


def test_rules_must_be_a_mapping() -> None:
    with pytest.raises(ValueError, match="rules must be a mapping"):
        BreakerRegistry(rules=[("api.example.com", BreakerConfig())])  # type: ignore[arg-type]


def test_default_must_be_a_breaker_config() -> None:
    with pytest.raises(ValueError, match="default must be a BreakerConfig"):
        BreakerRegistry({"open_duration": 5})  # type: ignore[arg-type]


def test_key_must_be_callable() -> None:
    with pytest.raises(ValueError, match="key must be"):
        BreakerRegistry(key="by_host")  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [0, -1, True, False, 1.5, "10", None])
def test_max_breakers_must_be_a_positive_int(bad: Any) -> None:
    with pytest.raises(ValueError, match="max_breakers must be an int >= 1"):
        BreakerRegistry(max_breakers=bad)


# -- max_breakers: an approximate LRU that never drops a protected breaker --------


def test_the_least_recently_used_go_first() -> None:
    registry = BreakerRegistry(max_breakers=10)
    for i in range(10):
        registry.get(f"k{i}")
    for i in range(5):
        registry.get(f"k{i}")  # recently used
    for i in range(10, 15):
        registry.get(f"k{i}")
        assert len(registry) <= 10
    assert names(registry) == {f"k{i}" for i in range(5)} | {f"k{i}" for i in range(10, 15)}


def test_recently_used_survive_a_batch_eviction() -> None:
    registry = BreakerRegistry(max_breakers=100)
    keep = [f"k{i:03}" for i in range(0, 100, 2)]
    for i in range(100):
        registry.get(f"k{i:03}")
    for key in reversed(keep):
        registry.get(key)
    before = held(registry)
    registry.get("new")
    after = held(registry)
    assert 90 <= len(registry) <= 100
    assert "new" in after
    for key in keep:
        assert after[key] is before[key]


def test_the_just_created_breaker_is_never_the_one_dropped() -> None:
    registry = BreakerRegistry(max_breakers=1)
    a = registry.get("a")
    b = registry.get("b")
    assert held(registry) == {"b": b}
    assert registry.get("a") is not a  # dropped, so created anew
    assert names(registry) == {"a"}


def test_protected_breakers_are_never_dropped() -> None:
    clock = ManualClock()
    registry = BreakerRegistry(TRIPPY, max_breakers=3, clock=clock)
    forced, disabled, opened = (
        registry.get("forced"),
        registry.get("disabled"),
        registry.get("open"),
    )
    forced.force_open()
    disabled.disable()
    trip(opened)

    newcomer = registry.get("new")  # every other breaker is protected: hold 4
    assert held(registry) == {
        "forced": forced,
        "disabled": disabled,
        "open": opened,
        "new": newcomer,
    }
    second = registry.get("new2")  # "new" is not protected: it goes
    assert held(registry) == {
        "forced": forced,
        "disabled": disabled,
        "open": opened,
        "new2": second,
    }

    clock.advance(9.999)  # the open period has not ended yet
    registry.get("new3")
    assert {"forced", "disabled", "open", "new3"} == names(registry)

    clock.advance(0.001)  # now it has: "open" is fair game
    latest = registry.get("new4")
    assert held(registry) == {"forced": forced, "disabled": disabled, "new4": latest}


def test_half_open_and_reset_breakers_are_not_protected() -> None:
    clock = ManualClock()
    registry = BreakerRegistry(TRIPPY, max_breakers=2, clock=clock)
    half = registry.get("half")
    trip(half)
    clock.advance(10)
    assert half.state is HALF_OPEN
    was_forced = registry.get("was_forced")
    was_forced.force_open()
    was_forced.reset()
    registry.get("x")
    registry.get("y")
    assert names(registry) == {"x", "y"}


def test_an_over_full_registry_shrinks_once_protection_ends() -> None:
    registry = BreakerRegistry(max_breakers=2)
    forced = []
    for i in range(4):
        forced.append(registry.get(f"f{i}"))
        forced[-1].force_open()
    assert held(registry) == {f"f{i}": b for i, b in enumerate(forced)}
    for breaker in forced:
        breaker.reset()
    registry.get("new")
    assert len(registry) <= 2
    assert "new" in registry


def test_state_changes_and_the_clock_reach_every_breaker() -> None:
    clock = ManualClock(100.0)
    events: list[StateChange] = []
    registry = BreakerRegistry(TRIPPY, clock=clock, on_state_change=events.append)
    breaker = registry.get("https://api.test")
    trip(breaker)
    assert [(e.name, e.old, e.new, e.at) for e in events] == [
        ("https://api.test", CLOSED, OPEN, 100.0)
    ]
    clock.advance(4.0)
    assert breaker.snapshot().retry_after == pytest.approx(6.0)
    with pytest.raises(CircuitOpenError) as info:
        breaker.call(lambda: None)
    assert info.value.retry_after == pytest.approx(6.0)
    clock.advance(6.0)
    assert breaker.state is HALF_OPEN
    assert events[-1].new is HALF_OPEN
    assert events[-1].at == 110.0
    registry.get("other").force_open()
    assert (events[-1].name, events[-1].new) == ("other", FORCED_OPEN)


# -- a random walk keeps the bound and never loses a protected breaker -----------

OPS = st.one_of(
    st.tuples(st.just("get"), st.integers(0, 11)),
    st.tuples(st.sampled_from(["force_open", "disable", "reset", "trip"]), st.integers(0, 11)),
    st.tuples(st.just("advance"), st.sampled_from([0.5, 3.0, 10.0])),
)


def protected_now(registry: BreakerRegistry) -> dict[str, CircuitBreaker]:
    """The breakers the API promises to keep, judged through the public API only."""
    out = {}
    for breaker in registry:
        snap = breaker.snapshot()  # turns an ended open period into half-open
        if snap.state in (FORCED_OPEN, DISABLED) or (
            snap.state is OPEN and snap.retry_after is not None and snap.retry_after > 0
        ):
            out[breaker.name] = breaker
    return out


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(max_breakers=st.integers(1, 5), ops=st.lists(OPS, max_size=60))
def test_random_walks_keep_the_bound(max_breakers: int, ops: list[tuple[str, Any]]) -> None:
    clock = ManualClock()
    registry = BreakerRegistry(TRIPPY, max_breakers=max_breakers, clock=clock)
    for op, arg in ops:
        if op == "advance":
            clock.advance(arg)
            continue
        key = f"k{arg}"
        if op != "get":
            if key not in registry:
                continue
            breaker = registry.get(key)
            if op == "trip":
                with contextlib.suppress(RuntimeError, CircuitOpenError):
                    breaker.call(boom)
            else:
                getattr(breaker, op)()
            continue
        guarded = protected_now(registry)
        before = held(registry)
        breaker = registry.get(key)
        after = held(registry)
        assert after.get(key) is breaker, "the key just asked for is held"
        assert breaker.name == key
        if key in before:
            assert breaker is before[key]
            assert after == before, "getting an existing key drops nothing"
            continue
        for name, kept in guarded.items():
            assert after.get(name) is kept, f"protected breaker {name} was dropped"
        for name, kept in after.items():
            assert name == key or before[name] is kept, "a held breaker was replaced"
        others = protected_now(registry)
        assert len(registry) <= max_breakers + len(others)
        if len(registry) > max_breakers:
            assert set(others) == set(after) - {key}, "over the bound with an unprotected breaker"


# -- concurrency -------------------------------------------------------------------


def test_threads_get_one_breaker_per_key() -> None:
    # Many fresh registries in rounds: the race is on creation, so create often.
    rounds, workers = 30, 8
    registries = [BreakerRegistry() for _ in range(rounds)]
    keys = [f"https://h{i}.test" for i in range(30)]
    barrier = threading.Barrier(workers)
    seen: list[list[dict[str, CircuitBreaker]]] = [
        [{} for _ in range(rounds)] for _ in range(workers)
    ]
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        rng = random.Random(n)
        try:
            for r, registry in enumerate(registries):
                order = keys[:]
                rng.shuffle(order)
                barrier.wait()
                for key in order:
                    seen[n][r][key] = registry.get(key)
        except BaseException as exc:  # pragma: no cover - reported below
            barrier.abort()
            errors.append(exc)

    with busy_switching():
        threads = [threading.Thread(target=worker, args=(n,)) for n in range(workers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert errors == []
    for r, registry in enumerate(registries):
        assert len(registry) == len(keys)
        final = held(registry)
        for key in keys:
            got = {id(seen[n][r][key]) for n in range(workers)}
            assert got == {id(final[key])}, f"round {r}, {key}: {len(got)} breakers"


def test_threads_racing_eviction_keep_the_bound() -> None:
    registry = BreakerRegistry(max_breakers=20)
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def worker(n: int) -> None:
        rng = random.Random(n)
        try:
            barrier.wait()
            for _ in range(1500):
                key = f"k{rng.randrange(60)}"
                assert registry.get(key).name == key
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    with busy_switching():
        threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert errors == []
    assert len(registry) <= 20


def test_a_non_ascii_rule_host_matches_the_idna_key() -> None:
    # Keys carry hosts as clients send them (IDNA); a rule written in Unicode must match.
    one = BreakerConfig(consecutive_failures=1)
    two = BreakerConfig(consecutive_failures=2)
    registry = BreakerRegistry(rules={"bücher.example": one, "*.bücher.example": two})
    assert registry.config_for("https://xn--bcher-kva.example") is one
    assert registry.config_for("https://api.xn--bcher-kva.example") is two
    assert registry.config_for("https://other.example") is registry.default


# -- eviction while many breakers are protected ------------------------------------


class CountingProtected:
    """Counts how many breakers the registry examines (calls to ``protected``).

    Raises as soon as ``budget`` is spent, so a registry that rescans every
    protected breaker fails in milliseconds rather than running for minutes.
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch, budget: int) -> None:
        self.calls = 0
        self.budget = budget
        original = CircuitBreaker.protected

        def protected(breaker: CircuitBreaker, now: float) -> bool:
            self.calls += 1
            if self.calls > self.budget:
                raise AssertionError(f"examined more than {self.budget} breakers")
            return original(breaker, now)

        monkeypatch.setattr(CircuitBreaker, "protected", protected)


def protect_many(registry: BreakerRegistry, n: int) -> list[CircuitBreaker]:
    """Fill ``registry`` with ``n`` protected breakers: forced open, disabled and open."""
    breakers = []
    for i in range(n):
        breaker = registry.get(f"https://p{i}.test")
        if i % 3 == 0:
            breaker.force_open()
        elif i % 3 == 1:
            breaker.disable()
        else:
            trip(breaker)
        breakers.append(breaker)
    return breakers


def test_a_failing_host_in_use_trips_while_protected_breakers_fill_the_registry() -> None:
    # 10,000 protected breakers take the whole bound; a failing host keeps
    # being used among 20,000 new keys. Its breaker must stay the same one (a
    # fresh breaker forgets its failures) until it has seen enough to trip.
    clock = ManualClock()
    failing = "https://failing.test"
    slow_to_trip = BreakerConfig(consecutive_failures=200, failure_rate=None)
    registry = BreakerRegistry(
        TRIPPY.replace(open_duration=3600.0, max_open_duration=3600.0),
        rules={"failing.test": slow_to_trip},
        max_breakers=10_000,
        clock=clock,
    )
    protected = protect_many(registry, 10_000)
    breaker = registry.get(failing)
    for i in range(20_000):
        registry.get(f"https://new{i}.test")
        if i % 100 == 99:
            assert registry.get(failing) is breaker, f"dropped after {i + 1} new keys"
            with contextlib.suppress(RuntimeError, CircuitOpenError):
                breaker.call(boom)
    assert breaker.state is OPEN
    assert breaker.snapshot().failures == 200
    kept = held(registry)
    assert all(kept[b.name] is b for b in protected), "a protected breaker was dropped"
    # Past the protected ones, about a tenth of the bound: the batch that is
    # kept, and the batch that the next eviction will drop.
    assert len(registry) <= 10_000 + 1 + 2 * 1_000


@pytest.mark.parametrize("protected", [0, 10_000])
def test_creating_keys_examines_few_breakers_however_many_are_protected(
    monkeypatch: pytest.MonkeyPatch, protected: int
) -> None:
    # Counted, not timed: the registry examines a breaker through protected().
    # Batches of a tenth examine about ten breakers per creation; rescanning
    # the protected ones would examine 10,000 per creation.
    clock = ManualClock()
    registry = BreakerRegistry(
        TRIPPY.replace(open_duration=3600.0, max_open_duration=3600.0),
        max_breakers=10_000,
        clock=clock,
    )
    protect_many(registry, protected)
    for i in range(10_000 - protected):
        registry.get(f"https://warm{i}.test")
    created = 2_000
    counter = CountingProtected(monkeypatch, budget=20 * created)
    for i in range(created):
        registry.get(f"https://new{i}.test")
    assert counter.calls <= 20 * created
    assert len(registry) <= 10_000 + 1 + 2 * 1_000


def test_parked_breakers_come_back_once_their_open_period_ends() -> None:
    # Open breakers are parked until their open period may have ended; then
    # they are candidates again and the registry shrinks back to its bound.
    clock = ManualClock()
    registry = BreakerRegistry(TRIPPY, max_breakers=1_000, clock=clock)
    opened = []
    for i in range(2_000):
        breaker = registry.get(f"https://open{i}.test")
        trip(breaker)
        opened.append(breaker)
    for i in range(500):
        registry.get(f"https://new{i}.test")
    assert all(breaker.name in registry for breaker in opened)
    clock.advance(9.999)
    registry.get("https://one-more.test")
    assert all(breaker.name in registry for breaker in opened)
    clock.advance(0.001)  # every open period has ended: all are fair game
    for i in range(1_000):
        registry.get(f"https://later{i}.test")
    assert len(registry) <= 1_000
    assert not any(breaker.name in registry for breaker in opened), "least recently used first"


def test_a_breaker_reset_long_after_it_was_parked_is_dropped_again() -> None:
    # A breaker forced open is parked with no time to look at it again: only
    # its reset, which it reports, makes it a candidate.
    registry = BreakerRegistry(max_breakers=100)
    forced = []
    for i in range(300):
        forced.append(registry.get(f"f{i}"))
        forced[-1].force_open()
    for i in range(1_000):
        registry.get(f"n{i}")
    assert all(held(registry).get(b.name) is b for b in forced)
    for breaker in forced[:200]:
        breaker.reset()
    for i in range(200):
        registry.get(f"m{i}")
    kept = held(registry)
    assert all(kept.get(b.name) is b for b in forced[200:])
    assert not any(b.name in kept for b in forced[:200])
    assert len(registry) <= 100 + 100  # the 100 still forced, and the newest others


def test_idle_breakers_are_dropped_before_any_used_within_its_window() -> None:
    # "long" (a 300 s window) was used longer ago than the others (30 s), but
    # still within its window: plain LRU would drop it first.
    clock = ManualClock()
    long_window = BreakerConfig(window=300.0)
    registry = BreakerRegistry(
        BreakerConfig(window=30.0),
        rules={"long.test": long_window},
        max_breakers=10,
        clock=clock,
    )
    long = registry.get("https://long.test")
    clock.advance(20.0)
    idle = [registry.get(f"https://idle{i}.test") for i in range(9)]
    clock.advance(40.0)  # the idle ones were last used 40 s ago: past their 30 s window
    for i in range(9):
        registry.get(f"https://new{i}.test")
        assert held(registry).get("https://long.test") is long, f"dropped at new key {i}"
    assert not any(breaker.name in registry for breaker in idle)
    # No idle breaker is left: now the least recently used goes, "long" among them.
    registry.get("https://new9.test")
    assert "https://long.test" not in registry


def test_get_of_an_existing_key_reads_no_clock() -> None:
    # The lock-free hot path records a tick only: a clock read per request
    # would cost more than the whole lookup.
    reads = 0

    def clock() -> float:
        nonlocal reads
        reads += 1
        return 0.0

    registry = BreakerRegistry(clock=clock)
    breaker = registry.get("https://a.test")
    before = reads
    for _ in range(100):
        assert registry.get("https://a.test") is breaker
    assert reads == before


def test_a_failing_clock_postpones_eviction_but_never_fails_a_get() -> None:
    readings: list[float] = []
    broken = False

    def clock() -> float:
        if broken:
            raise OSError("clock gone")
        readings.append(0.0)
        return 0.0

    registry = BreakerRegistry(max_breakers=2, clock=clock)
    registry.get("a")
    registry.get("b")
    broken = True
    c = registry.get("c")
    assert c.name == "c"
    assert len(registry) == 3  # nothing dropped without a reading to judge by
    broken = False
    registry.get("d")
    assert len(registry) <= 2
    assert "d" in registry


def test_on_state_change_must_be_callable() -> None:
    with pytest.raises(TypeError, match="on_state_change must be callable"):
        BreakerRegistry(on_state_change="not callable")  # type: ignore[arg-type]
