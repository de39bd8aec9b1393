"""Built-in traffic scenarios, generated lazily from a seed.

Each scenario is one upstream under steady Poisson traffic whose health
follows a profile over time: the share of requests that fail, how they fail,
and how long requests take. The same name, seed and sizes always give the
same rows, so documentation pictures and tests are reproducible without a
log.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator

from ._rows import ReadStats, Request

__all__ = ["SCENARIOS", "Scenario", "scenario"]

# (failure probability, median latency in seconds, share of failures that time out)
_Health = tuple[float, float, float]

_BASE_ERRORS = 0.005
_BASE_LATENCY = 0.06
_TIMEOUT = 5.0  # how long a timed-out request took: a typical client read timeout


def _outage(f: float) -> _Health:
    if 0.30 <= f < 0.45:
        return 1.0, 0.01, 0.0  # fast 503s: the upstream is down behind its proxy
    return _BASE_ERRORS, _BASE_LATENCY, 0.0


def _brownout(f: float) -> _Health:
    if 0.30 <= f < 0.60:
        return 0.35, 0.25, 0.1
    return _BASE_ERRORS, _BASE_LATENCY, 0.0


def _flapping(f: float) -> _Health:
    # Down and up in turns of 1/30 of the run (20 s of a 600 s run).
    if 0.25 <= f < 0.75 and int((f - 0.25) * 30) % 2 == 0:
        return 1.0, 0.01, 0.0
    return _BASE_ERRORS, _BASE_LATENCY, 0.0


def _latency_spike(f: float) -> _Health:
    if 0.40 <= f < 0.55:
        return 0.25, 1.5, 1.0  # the failures are timeouts
    return _BASE_ERRORS, _BASE_LATENCY, 0.0


def _slow_recovery(f: float) -> _Health:
    if 0.25 <= f < 0.35:
        return 1.0, 0.01, 0.0
    if 0.35 <= f < 0.70:
        # Errors fade out linearly as the upstream warms its caches back up.
        share = 0.9 - (0.9 - 0.02) * (f - 0.35) / 0.35
        return share, 0.2, 0.0
    return _BASE_ERRORS, _BASE_LATENCY, 0.0


SCENARIOS: dict[str, tuple[Callable[[float], _Health], str]] = {
    "outage": (_outage, "healthy, then every request fails fast (503) for 15% of the run"),
    "brownout": (_brownout, "35% of requests fail and latency quadruples for 30% of the run"),
    "flapping": (_flapping, "down and up in turns of 1/30 of the run, for half of it"),
    "latency_spike": (
        _latency_spike,
        "latency jumps to 1.5 s and a quarter of requests time out (5 s) for 15% of the run",
    ),
    "slow_recovery": (
        _slow_recovery,
        "down for 10% of the run, then errors fade from 90% to 2% over 35% of it",
    ),
}
"""Name → (health profile over the run's fraction, description)."""


class Scenario:
    """A built-in scenario's rows, generated lazily; iterate it as often as needed.

    Args:
        name: One of :data:`SCENARIOS`.
        seed: The random seed: the same seed gives the same rows.
        duration: Seconds of traffic.
        rate: Mean requests per second (Poisson arrivals).
        key: The breaker key of the upstream (``by_host`` form).
        start: The first request's time, in seconds.

    Attributes:
        stats: As for a log (a scenario never skips a row).
    """

    def __init__(
        self,
        name: str,
        *,
        seed: int = 0,
        duration: float = 600.0,
        rate: float = 20.0,
        key: str = "https://api.example.com",
        start: float = 0.0,
    ) -> None:
        if name not in SCENARIOS:
            raise ValueError(f"unknown scenario {name!r}; expected one of {', '.join(SCENARIOS)}")
        if not (0 < duration < math.inf):
            raise ValueError(f"duration must be a positive number of seconds, got {duration!r}")
        if not (0 < rate < math.inf):
            raise ValueError(f"rate must be a positive number per second, got {rate!r}")
        self.name = name
        self.seed = seed
        self.duration = float(duration)
        self.rate = float(rate)
        self.key = key
        self.start = float(start)
        self.stats = ReadStats()

    def __repr__(self) -> str:
        return f"<Scenario {self.name!r} seed={self.seed} {self.duration:g}s at {self.rate:g}/s>"

    @property
    def description(self) -> str:
        """One line on what happens to the upstream."""
        return SCENARIOS[self.name][1]

    def __iter__(self) -> Iterator[Request]:
        stats = self.stats = ReadStats()
        profile = SCENARIOS[self.name][0]
        rng = random.Random(f"{self.name}:{self.seed}")
        expo, uniform, lognorm = rng.expovariate, rng.random, rng.lognormvariate
        rate, duration, start, key = self.rate, self.duration, self.start, self.key
        url = key + "/"
        t = 0.0
        # The profile is a step function of time: ask it once per 1/1000 of the run.
        step = duration / 1000.0
        next_step = 0.0
        fail_share = latency_mu = timeout_share = 0.0
        while True:
            t += expo(rate)
            if t >= duration:
                break
            if t >= next_step:
                fail_share, median, timeout_share = profile(t / duration)
                latency_mu = math.log(median)
                next_step = (int(t / step) + 1) * step
            if uniform() < fail_share:
                if timeout_share and uniform() < timeout_share:
                    row = Request(start + t, url, key, "GET", None, "ReadTimeout", _TIMEOUT)
                else:
                    took = lognorm(latency_mu, 0.4)
                    row = Request(start + t, url, key, "GET", 503, None, took)
            else:
                took = lognorm(latency_mu, 0.4)
                row = Request(start + t, url, key, "GET", 200, None, took)
            stats.rows += 1
            yield row


def scenario(
    name: str,
    *,
    seed: int = 0,
    duration: float = 600.0,
    rate: float = 20.0,
    key: str = "https://api.example.com",
) -> Scenario:
    """A built-in scenario as a source for :func:`simulate` (see :class:`Scenario`).

    Example:
        >>> rows = list(scenario("outage", seed=1, duration=10, rate=5))
        >>> rows == list(scenario("outage", seed=1, duration=10, rate=5))
        True

    Raises:
        ValueError: an unknown name, or a duration or rate that is not positive.
    """
    return Scenario(name, seed=seed, duration=duration, rate=rate, key=key)
