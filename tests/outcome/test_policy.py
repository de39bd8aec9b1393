"""Reading the network: ``parse_retry_after`` and the headers that mark a fallback."""

from __future__ import annotations

import time
from email.utils import formatdate
from typing import Any

import pytest

from circuitbreaker_http._policy import MAX_RETRY_AFTER, fallback_headers, parse_retry_after

# Sun, 06 Nov 1994 08:49:37 GMT, the example date of RFC 9110.
EPOCH_1994 = 784111777.0
DATE_1994 = "Sun, 06 Nov 1994 08:49:37 GMT"


def wall(now: float = EPOCH_1994) -> Any:
    return lambda: now


def no_wall_clock() -> float:
    raise AssertionError("the wall clock must not be read here")


# -- delay-seconds -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0", 0.0),
        ("1", 1.0),
        ("120", 120.0),
        ("007", 7.0),
        (" 120 ", 120.0),
        ("\t5\r\n", 5.0),
        ("31536000", MAX_RETRY_AFTER),  # a year exactly
        ("31536001", MAX_RETRY_AFTER),
        ("999999999999", MAX_RETRY_AFTER),  # 12 digits
        ("9999999999999", MAX_RETRY_AFTER),  # 13 digits
        ("9" * 5000, MAX_RETRY_AFTER),  # never converted digit by digit
    ],
)
def test_delay_seconds(value: str, expected: float) -> None:
    got = parse_retry_after(value, None, no_wall_clock)
    assert got == expected
    assert type(got) is float


def test_the_cap_is_a_year() -> None:
    assert MAX_RETRY_AFTER == 365 * 24 * 3600.0


def test_a_huge_digit_string_is_quick() -> None:
    start = time.perf_counter()
    for _ in range(100):
        assert parse_retry_after("9" * 100_000) == MAX_RETRY_AFTER
    assert time.perf_counter() - start < 1.0


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "   ",
        "-1",
        "-0",
        "+5",
        "1.5",
        "1.0",
        "1e3",
        "0x10",
        "1 2",
        "5s",
        "soon",
        "²",  # a digit to str.isdigit(), not in RFC 9110
        "١٢",  # Arabic-Indic digits
        "１２",  # full-width digits
        "Sun, 99 Nov 1994 08:49:37 GMT",
        "Sun, 06 Foo 1994 08:49:37 GMT",
        "Sun, 06 Nov 1994 25:49:37 GMT",
        5,
        5.0,
        b"5",
    ],
)
def test_garbage_is_none(value: Any) -> None:
    assert parse_retry_after(value, DATE_1994, wall()) is None
    assert parse_retry_after(value, None, wall()) is None


# -- HTTP-date ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "Sun, 06 Nov 1994 08:51:37 GMT",  # IMF-fixdate
        "Sunday, 06-Nov-94 08:51:37 GMT",  # obsolete RFC 850
        "Sun Nov  6 08:51:37 1994",  # obsolete asctime
        "  Sun, 06 Nov 1994 08:51:37 GMT  ",
    ],
)
def test_an_http_date_is_read_against_the_date_header(value: str) -> None:
    # The wall clock is far off: only the Date header may be used.
    assert parse_retry_after(value, DATE_1994, wall(0.0)) == 120.0
    assert parse_retry_after(value, DATE_1994, no_wall_clock) == 120.0


def test_an_http_date_without_date_uses_the_wall_clock() -> None:
    value = "Sun, 06 Nov 1994 08:51:37 GMT"
    assert parse_retry_after(value, None, wall()) == 120.0
    assert parse_retry_after(value, "", wall()) == 120.0
    assert parse_retry_after(value, None, wall(EPOCH_1994 + 20)) == 100.0


@pytest.mark.parametrize("date", ["garbage", "Sun, 99 Nov 1994 08:49:37 GMT", "0", " "])
def test_an_unreadable_date_header_falls_back_to_the_wall_clock(date: str) -> None:
    value = "Sun, 06 Nov 1994 08:51:37 GMT"
    assert parse_retry_after(value, date, wall(EPOCH_1994 + 60)) == 60.0


def test_the_default_wall_clock_is_the_system_time() -> None:
    value = formatdate(time.time() + 100, usegmt=True)
    got = parse_retry_after(value)
    assert got is not None
    assert 97.0 <= got <= 101.0


def test_a_date_in_the_past_is_zero() -> None:
    assert parse_retry_after("Sun, 06 Nov 1994 08:00:00 GMT", DATE_1994, no_wall_clock) == 0.0
    assert parse_retry_after("Sun, 06 Nov 1994 08:00:00 GMT", None, wall()) == 0.0
    assert parse_retry_after(DATE_1994, DATE_1994, no_wall_clock) == 0.0


def test_a_far_date_is_capped() -> None:
    assert parse_retry_after("Fri, 31 Dec 9999 23:59:59 GMT", DATE_1994) == MAX_RETRY_AFTER


def test_a_numeric_zone_is_honoured() -> None:
    # 09:51:37 +0100 is 08:51:37 GMT.
    assert parse_retry_after("Sun, 06 Nov 1994 09:51:37 +0100", DATE_1994) == 120.0
    assert parse_retry_after("Sun, 06 Nov 1994 08:51:37 -0000", DATE_1994) == 120.0


def test_a_wall_clock_that_fails_gives_none() -> None:
    def broken() -> float:
        raise OSError("no clock")

    assert parse_retry_after("Sun, 06 Nov 1994 08:51:37 GMT", None, broken) is None
    assert parse_retry_after("Sun, 06 Nov 1994 08:51:37 GMT", None, lambda: float("nan")) is None
    # Digits never need a clock.
    assert parse_retry_after("5", None, broken) == 5.0


# -- fallback_headers ---------------------------------------------------------------

MARK = ("X-Circuit-Breaker", "open")


@pytest.mark.parametrize(
    ("present", "retry_after", "expected"),
    [
        ([], None, [MARK]),
        ([], 2.0, [MARK, ("Retry-After", "2")]),
        ([], 2.1, [MARK, ("Retry-After", "3")]),
        ([], 0.2, [MARK, ("Retry-After", "1")]),
        ([], 0.0, [MARK, ("Retry-After", "0")]),
        ([], -3.0, [MARK, ("Retry-After", "0")]),
        ([], 29.999, [MARK, ("Retry-After", "30")]),
        ([], float("nan"), [MARK]),
        ([], float("inf"), [MARK]),
        (["Content-Type"], 5.0, [MARK, ("Retry-After", "5")]),
        # Every fallback response says "open", whatever the fallback set.
        (["x-circuit-breaker"], 5.0, [MARK, ("Retry-After", "5")]),
        (["X-CIRCUIT-BREAKER"], None, [MARK]),
        (["Retry-After"], 5.0, [MARK]),
        (["retry-after"], 5.0, [MARK]),
        (["RETRY-AFTER", "X-Circuit-Breaker"], 5.0, [MARK]),
        (["Retry-After"], None, [MARK]),
    ],
)
def test_fallback_headers(
    present: list[str], retry_after: float | None, expected: list[tuple[str, str]]
) -> None:
    assert fallback_headers(present, retry_after) == expected


def test_fallback_headers_take_any_iterable() -> None:
    names = (name for name in ["Retry-After", "Content-Type"])
    assert fallback_headers(names, 1.5) == [MARK]
    assert fallback_headers({"x-circuit-breaker": "no"}.keys(), 1.5) == [MARK, ("Retry-After", "2")]
