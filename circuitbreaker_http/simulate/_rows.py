"""The row every reader and scenario yields, the errors of unreadable rows, and time parsing."""

from __future__ import annotations

import math
from datetime import datetime, timezone
from typing import NamedTuple

__all__ = [
    "CANCELLED",
    "LogError",
    "ReadStats",
    "Request",
    "parse_duration",
    "parse_timestamp",
]

CANCELLED = "cancelled"
"""The ``error`` of a request its caller gave up on (nginx 499, Envoy ``DC``).

A breaker records nothing for a cancelled call, so the simulator lets it take
a permit (it may be a half-open trial) and then gives the permit back.
"""

_MAX_REASONS = 5


class Request(NamedTuple):
    """One request as the log tells it.

    A plain tuple underneath, so a reader builds one object a row and the
    replay reads its fields by position.

    Attributes:
        time: When the request started, in seconds (epoch seconds for real logs).
        url: The request's URL, or ``""`` when the log gives a ``key``.
        key: The breaker key given by the log, or ``None`` to derive it from ``url``.
        method: The HTTP method (``"GET"`` when the log does not say).
        status: The HTTP status the upstream answered, or ``None`` when it did not.
        error: What went wrong without a status (``"ReadTimeout"``, ``"UF"``...),
            :data:`CANCELLED` for a request its caller gave up on, or ``None``.
        duration: Seconds the upstream took.
    """

    time: float
    url: str
    key: str | None
    method: str
    status: int | None
    error: str | None
    duration: float


class LogError(ValueError):
    """A row of a log that cannot be read; the message names the source and the line.

    Attributes:
        source: The file (or ``"<scenario>"``, ``"<rows>"``).
        line: The 1-based line number.
        reason: What is wrong with the row.
    """

    def __init__(self, source: str, line: int, reason: str) -> None:
        super().__init__(f"{source}:{line}: {reason}")
        self.source = source
        self.line = line
        self.reason = reason


class ReadStats:
    """What a reader could not read: counts and the first few reasons.

    Attributes:
        rows: Rows read and replayed.
        skipped: Rows that could not be read and were left out.
        reasons: The first few of those, as ``"file:line: reason"`` strings.
        late: Rows that arrived later than the reorder window allows; they are
            replayed at the time the replay had reached instead of their own.
    """

    __slots__ = ("late", "reasons", "rows", "skipped")

    def __init__(self) -> None:
        self.rows = 0
        self.skipped = 0
        self.late = 0
        self.reasons: list[str] = []

    def __repr__(self) -> str:
        return f"<ReadStats rows={self.rows} skipped={self.skipped} late={self.late}>"

    def skip(self, error: LogError) -> None:
        """Count a row left out, keeping its reason if it is among the first few."""
        self.skipped += 1
        if len(self.reasons) < _MAX_REASONS:
            self.reasons.append(str(error))


def parse_timestamp(value: object) -> float:
    """Seconds from a number, a numeric string or an RFC 3339 / ISO 8601 date-time.

    A date-time without an offset is read as UTC.

    Raises:
        ValueError: anything else, or a value that is not finite.
    """
    if isinstance(value, bool):
        raise ValueError(f"bad timestamp {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        try:
            seconds = float(text)
        except ValueError:
            seconds = _iso_seconds(text)
    else:
        raise ValueError(f"bad timestamp {value!r}")
    if not math.isfinite(seconds):
        raise ValueError(f"bad timestamp {value!r}")
    return seconds


def _iso_seconds(text: str) -> float:
    # Python 3.10's fromisoformat knows neither "Z" nor a lower-case "t".
    iso = text[:-1] + "+00:00" if text[-1:] in "zZ" and text else text
    try:
        moment = datetime.fromisoformat(iso.replace("t", "T", 1))
    except ValueError:
        raise ValueError(f"bad timestamp {text!r}: neither seconds nor RFC 3339") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def parse_duration(value: object, per_second: float = 1.0) -> float:
    """A non-negative finite duration in seconds (``value / per_second``).

    Raises:
        ValueError: not a number, negative, or not finite.
    """
    if isinstance(value, bool) or value is None:
        raise ValueError(f"bad duration {value!r}")
    try:
        seconds = float(value) / per_second  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"bad duration {value!r}") from None
    if not (0.0 <= seconds < math.inf):
        raise ValueError(f"bad duration {value!r}: must be a finite number >= 0")
    return seconds
