"""Built-in scenarios: deterministic by seed, lazy, shaped as their names say."""

from __future__ import annotations

import itertools
import types

import pytest

from circuitbreaker_http.simulate import SCENARIOS, scenario


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_same_seed_same_rows_other_seed_other_rows(name: str) -> None:
    a = list(scenario(name, seed=7, duration=60, rate=10))
    assert a == list(scenario(name, seed=7, duration=60, rate=10))
    assert a != list(scenario(name, seed=8, duration=60, rate=10))
    assert all(a[i].time <= a[i + 1].time for i in range(len(a) - 1))
    assert 400 < len(a) < 800  # Poisson at 10/s for 60 s


def test_rows_are_generated_lazily() -> None:
    rows = iter(scenario("outage", duration=1e9, rate=1000))
    assert isinstance(rows, types.GeneratorType)
    assert len(list(itertools.islice(rows, 5))) == 5


def test_outage_fails_everything_in_its_middle_stretch_only() -> None:
    rows = list(scenario("outage", seed=1, duration=1000, rate=10))
    inside = [r for r in rows if 310 <= r.time < 440]
    outside = [r for r in rows if r.time < 290 or r.time >= 460]
    assert all(r.status == 503 for r in inside)
    assert sum(r.status == 503 for r in outside) / len(outside) < 0.02


def test_latency_spike_times_out() -> None:
    rows = list(scenario("latency_spike", seed=1, duration=1000, rate=10))
    spike = [r for r in rows if 400 <= r.time < 550]
    assert any(r.error == "ReadTimeout" and r.duration == 5.0 for r in spike)
    assert sum(r.duration for r in spike) / len(spike) > 1.0


def test_unknown_scenario_and_bad_sizes() -> None:
    with pytest.raises(ValueError, match="unknown scenario 'meltdown'; expected one of outage"):
        scenario("meltdown")
    with pytest.raises(ValueError, match="rate must be a positive"):
        scenario("outage", rate=0)
