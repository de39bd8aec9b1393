"""Replay and scoring on hand-made traffic: overlap, half-open trials, slow calls, outages."""

from __future__ import annotations

from pathlib import Path

import pytest

from circuitbreaker_http import BreakerConfig
from circuitbreaker_http.simulate import Request, SimulationReport, simulate

KEY = "https://api.example.com"


def row(
    t: float,
    status: int | None = 200,
    duration: float = 0.1,
    error: str | None = None,
    key: str = KEY,
) -> Request:
    return Request(t, "", key, "GET", status, error, duration)


def moves(report: SimulationReport, config: str | None = None) -> list[tuple[float, str, str]]:
    result = report.result(KEY, config)
    return [(round(c.at, 6), c.old.value, c.new.value) for c in result.transitions]


TRIP3 = BreakerConfig(consecutive_failures=3, failure_rate=None, open_duration=10)


def test_scoring_of_short_circuits_and_a_half_open_trial_in_flight() -> None:
    rows = [
        row(0, 503),
        row(1, 503),
        row(2, 503),  # the third settles at 2.1 and trips
        row(3, 503),  # refused, would have failed: avoided
        row(4, 200),  # refused, would have succeeded
        row(13, 200),  # open until 12.1: the trial, in flight until 13.1
        row(13.05, 200),  # the trial slot is taken: refused
        row(14, 500),  # closed again: reaches the upstream and fails
    ]
    report = simulate(rows, configs=TRIP3)
    r = report.result(KEY)
    assert (r.requests, r.reached, r.short_circuited) == (8, 5, 3)
    assert (r.failures_reached, r.failures_avoided, r.healthy_refused) == (4, 1, 2)
    assert (r.trips, r.reopens) == (1, 0)
    assert moves(report) == [
        (2.1, "closed", "open"),
        (13.0, "open", "half_open"),
        (13.1, "half_open", "closed"),
    ]
    assert r.open_seconds == pytest.approx(11.0)
    assert report.rows == 8 and report.end == pytest.approx(14.1)


def test_calls_overlap_as_their_durations_say() -> None:
    one = BreakerConfig(consecutive_failures=1, failure_rate=None, open_duration=10)
    rows = [
        row(0, 503, duration=5),  # a slow failure: settles at 5
        row(1, 200, duration=0.1),
        row(2, 200, duration=0.1),  # still admitted: the failure has not settled
        row(6, 200),  # refused: open since 5
    ]
    report = simulate(rows, configs=one)
    r = report.result(KEY)
    assert (r.reached, r.short_circuited, r.healthy_refused) == (3, 1, 1)
    assert moves(report) == [(5.0, "closed", "open")]


def test_slow_calls_are_judged_by_the_rows_duration() -> None:
    slow = BreakerConfig(
        consecutive_failures=None,
        failure_rate=None,
        slow_call_duration=1.0,
        slow_call_rate=1.0,
        minimum_calls=2,
        open_duration=5,
    )
    rows = [row(0, 200, duration=2.0), row(0.5, 200, duration=1.5), row(3, 200)]
    report = simulate(rows, configs=slow)
    assert moves(report) == [(2.0, "closed", "open")]
    assert report.result(KEY).healthy_refused == 1


def test_a_failed_trial_reopens() -> None:
    rows = [row(0, 503), row(1, 503), row(2, 503), row(13, 503), row(14, 200), row(24, 200)]
    report = simulate(rows, configs=TRIP3)
    r = report.result(KEY)
    assert (r.trips, r.reopens) == (1, 1)
    assert [m[2] for m in moves(report)] == ["open", "half_open", "open", "half_open", "closed"]


def test_several_configs_see_the_same_traffic() -> None:
    rows = [row(0, 503), row(1, 503), row(2, 503), row(3, 503)]
    lax = BreakerConfig(consecutive_failures=10, failure_rate=None)
    report = simulate(rows, configs={"trip3": TRIP3, "lax": lax})
    assert report.configs == ("trip3", "lax")
    assert report.result(KEY, "trip3").failures_avoided == 1
    assert report.result(KEY, "lax").failures_reached == 4
    assert report.result(KEY, "lax").trips == 0


def test_outages_from_the_log_and_time_to_trip_and_close() -> None:
    rows = []
    for i in range(900):  # 10 requests a second for 90 s, down from 30 s to 60 s
        t = i / 10
        rows.append(row(t, 503 if 30 <= t < 60 else 200, duration=0.01))
    config = BreakerConfig(consecutive_failures=5, failure_rate=None, open_duration=5)
    r = simulate(rows, configs=config).result(KEY)
    (outage,) = r.outages
    assert (outage.start, outage.end) == (30.0, 60.0)
    assert outage.tripped_after == pytest.approx(0.41)  # the 5th failure settles at 30.41
    assert outage.closed_after is not None and 0 <= outage.closed_after <= 5.1
    assert r.time_to_trip == outage.tripped_after


def test_an_outage_the_breaker_missed() -> None:
    rows = [row(i / 10, 503 if 30 <= i / 10 < 40 else 200, duration=0.01) for i in range(600)]
    never = BreakerConfig(consecutive_failures=None, failure_rate=None)
    report = simulate(rows, configs=never)
    r = report.result(KEY)
    assert r.missed_outages == 1 and r.time_to_trip is None
    assert "never tripped in 1 of 1 outages" in report.table()


def test_cancelled_rows_take_and_give_back_a_permit() -> None:
    rows = [
        row(0, 503),
        row(1, 503),
        row(2, 503),
        row(13, None, duration=1, error="cancelled"),
        row(13.5, 200),
    ]
    report = simulate(rows, configs=TRIP3)
    r = report.result(KEY)
    # The cancelled trial records nothing and frees its slot at 14: 13.5 is refused.
    assert r.short_circuited == 1 and r.healthy_refused == 1
    assert [m[2] for m in moves(report)] == ["open", "half_open"]


def test_nearly_ordered_rows_are_put_in_order_and_late_ones_counted() -> None:
    rows = [row(0, 503), row(2, 503), row(1, 503), row(30, 200), row(1.5, 503)]
    report = simulate(rows, configs=TRIP3, reorder_window=5)
    assert report.late == 1
    assert moves(report)[0] == (2.1, "closed", "open")


def test_urls_are_keyed_by_host_and_bypass_counted() -> None:
    rows = [
        Request(0, "https://API.example.com:443/x", None, "GET", 200, None, 0.1),
        Request(1, "http://other.test:8080/y", None, "GET", 200, None, 0.1),
    ]
    report = simulate(rows, configs=TRIP3)
    assert sorted(report.keys()) == ["http://other.test:8080", KEY]
    skip_other = simulate(rows, configs=TRIP3, key=lambda m, u: None if "other" in u else "k")
    assert skip_other.bypassed == 1 and skip_other.keys() == ["k"]


def test_configs_from_files_rules_and_mappings(tmp_path: Path) -> None:
    path = tmp_path / "tight.toml"
    path.write_text("[default]\nconsecutive_failures = 3\nfailure_rate = false\n")
    rows = [row(0, 503), row(1, 503), row(2, 503), row(3, 503)]
    report = simulate(
        rows,
        configs=[
            path,
            {"rules": {"api.example.com": {"consecutive_failures": 2}}},
            {"api.example.com": BreakerConfig(consecutive_failures=1)},
        ],
    )
    assert report.configs == ("tight", "config2", "config3")
    assert report.result(KEY, "tight").failures_avoided == 1
    assert report.result(KEY, "config2").failures_avoided == 2
    assert report.result(KEY, "config3").failures_avoided == 3
    named = simulate(rows, configs={"strict": {"api.example.com": TRIP3}})
    assert named.result(KEY, "strict").failures_avoided == 1
    with pytest.raises(TypeError, match="expected a BreakerConfig"):
        simulate(rows, configs=[42])  # type: ignore[list-item]


def test_report_json_and_table() -> None:
    rows = [row(0, 503), row(1, 503), row(2, 503), row(3, 503), row(4, 200)]
    report = simulate(rows, configs={"trip3": TRIP3})
    data = report.as_dict()
    (result,) = data["results"]
    assert result["failures_avoided"] == 1 and result["healthy_refused"] == 1
    assert result["transitions"][0] == {
        "at": pytest.approx(2.1),
        "old": "closed",
        "new": "open",
        "reason": result["transitions"][0]["reason"],
    }
    assert data["totals"][0]["key"] == "*"
    table = report.table()
    assert table.splitlines()[0].split()[:4] == ["key", "config", "requests", "reached"]
    assert f"{KEY}  trip3" in table
