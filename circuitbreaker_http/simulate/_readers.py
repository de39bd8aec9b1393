"""Streamed log readers: CSV, JSON Lines, nginx ``combined`` + ``$request_time``, Envoy JSON.

Each reader is a generator over the file: it holds one line at a time, so
memory stays flat however long the log is. A row it cannot read raises
:class:`LogError` (naming the file and the line) in strict mode; otherwise it
is left out and counted in the source's :class:`ReadStats`, whose first few
reasons the report repeats.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime
from typing import Any

from ._rows import CANCELLED, LogError, ReadStats, Request, parse_duration, parse_timestamp

__all__ = [
    "ENVOY_UPSTREAM_FAILURE_FLAGS",
    "FORMATS",
    "LogSource",
    "detect_format",
    "read_log",
]

FORMATS = ("csv", "jsonl", "nginx", "envoy")
"""The log formats :func:`read_log` reads (``"auto"`` picks one of them)."""

ENVOY_UPSTREAM_FAILURE_FLAGS = frozenset(
    {"UF", "UT", "UH", "UC", "UR", "URX", "UO", "UPE", "UMSDR", "LH", "NC", "SI"}
)
"""Envoy ``response_flags`` that say the upstream failed the request.

``UF`` connection failure, ``UT`` request timeout, ``UH`` no healthy host,
``UC`` connection terminated, ``UR`` remote reset, ``URX`` retry limit
exceeded, ``UO`` overflow (Envoy's own circuit breaking), ``UPE`` protocol
error, ``UMSDR`` max stream duration reached, ``LH`` failed health check,
``NC`` no cluster, ``SI`` stream idle timeout. ``DC`` (the downstream went
away) is a cancellation, recorded by no breaker; other flags describe the
request or the proxy and leave the status to decide.
"""

_DEFAULT_BASE_URL = "http://upstream"

# $remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent
# "$http_referer" "$http_user_agent" $request_time   (anything after it is ignored)
_NGINX = re.compile(
    r'^(?P<addr>\S+) \S+ (?P<user>\S+) \[(?P<time>[^\]]+)\] "(?P<request>(?:[^"\\]|\\.)*)" '
    r'(?P<status>\d{3}) (?P<bytes>\S+) "(?:[^"\\]|\\.)*" "(?:[^"\\]|\\.)*" '
    r"(?P<request_time>[0-9.]+|-)(?:\s.*)?$"
)
_NGINX_TIME = "%d/%b/%Y:%H:%M:%S %z"
_NGINX_CLOSED = 499  # nginx's own status: the client closed the connection first


def _status(value: object) -> int:
    if isinstance(value, bool):
        raise ValueError(f"bad status {value!r}")
    if isinstance(value, int):
        status = value
    elif (isinstance(value, float) and value.is_integer()) or (
        isinstance(value, str) and value.strip().isdigit()
    ):
        status = int(value)
    else:
        raise ValueError(f"bad status {value!r}")
    if not 100 <= status <= 599:
        raise ValueError(f"bad status {value!r}: not between 100 and 599")
    return status


def _text(value: object) -> str | None:
    """A field that may be absent or empty: ``None`` then, else its string."""
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _request_from(fields: Mapping[str, Any]) -> Request:
    """The row of a CSV or JSON Lines record (``timestamp``, ``url``/``key``, ...)."""
    if "timestamp" not in fields or _text(fields["timestamp"]) is None:
        raise ValueError("no timestamp")
    at = parse_timestamp(fields["timestamp"])
    url = _text(fields.get("url"))
    key = _text(fields.get("key"))
    if url is None and key is None:
        raise ValueError("neither url nor key")
    status_field = _text(fields.get("status"))
    error = _text(fields.get("error"))
    status = None if status_field is None else _status(fields["status"])
    if status is None and error is None:
        raise ValueError("neither status nor error")
    if _text(fields.get("duration")) is None:
        raise ValueError("no duration")
    duration = parse_duration(fields["duration"])
    method = _text(fields.get("method")) or "GET"
    return Request(at, url or "", key, method.upper(), status, error, duration)


def _csv_rows(
    file: io.TextIOBase, source: str, stats: ReadStats, strict: bool
) -> Iterator[Request]:
    reader = csv.reader(file)
    try:
        header = next(reader)
    except StopIteration:
        return
    names = [name.strip().lower() for name in header]
    missing = [
        need
        for need, options in (
            ("timestamp", ("timestamp",)),
            ("url or key", ("url", "key")),
            ("status or error", ("status", "error")),
            ("duration", ("duration",)),
        )
        if not any(option in names for option in options)
    ]
    if missing:
        # No row could be read: this is the wrong file, not a bad row.
        raise LogError(source, 1, f"CSV header lacks {', '.join(missing)} (it has {header!r})")
    width = len(names)
    for values in reader:
        line = reader.line_num
        if not values or (len(values) == 1 and not values[0].strip()):
            continue
        try:
            if len(values) != width:
                raise ValueError(f"{len(values)} fields where the header has {width}")
            row = _request_from(dict(zip(names, values, strict=True)))
        except ValueError as exc:
            error = LogError(source, line, str(exc))
            if strict:
                raise error from None
            stats.skip(error)
            continue
        yield row


def _json_lines(
    file: io.TextIOBase,
    source: str,
    stats: ReadStats,
    strict: bool,
    convert: Callable[[Mapping[str, Any]], Request],
) -> Iterator[Request]:
    for line, text in enumerate(file, 1):
        if not text.strip():
            continue
        try:
            try:
                record = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ValueError(f"not JSON: {exc.msg} at column {exc.colno}") from None
            if not isinstance(record, dict):
                raise ValueError(f"expected a JSON object, got {type(record).__name__}")
            row = convert(record)
        except ValueError as exc:
            error = LogError(source, line, str(exc))
            if strict:
                raise error from None
            stats.skip(error)
            continue
        yield row


def _envoy_request(base_scheme: str) -> Callable[[Mapping[str, Any]], Request]:
    def convert(record: Mapping[str, Any]) -> Request:
        if _text(record.get("start_time")) is None:
            raise ValueError("no start_time")
        at = parse_timestamp(record["start_time"])
        if _text(record.get("duration")) is None:
            raise ValueError("no duration")
        duration = parse_duration(record["duration"], 1000.0)  # Envoy logs milliseconds
        authority = _text(record.get("authority"))
        if authority is None:
            raise ValueError("no authority")
        path = _text(record.get("path")) or "/"
        method = (_text(record.get("method")) or "GET").upper()
        flags_text = _text(record.get("response_flags"))
        flags = set() if flags_text in (None, "-") else set(str(flags_text).split(","))
        code_field = record.get("response_code")
        code = 0 if _text(code_field) in (None, "-", "0") else _status(code_field)
        error: str | None = None
        failed_flags = sorted(flags & ENVOY_UPSTREAM_FAILURE_FLAGS)
        if failed_flags:
            error = ",".join(failed_flags)
        elif "DC" in flags:
            error = CANCELLED
        elif code == 0:
            error = "no response"
        status = code or None
        if error is not None and error != CANCELLED:
            # The flag is the upstream's failure, whatever status Envoy made up for it.
            status = None
        url = f"{base_scheme}://{authority}{path if path.startswith('/') else '/' + path}"
        return Request(at, url, None, method, status, error, duration)

    return convert


def _nginx_rows(
    file: io.TextIOBase, source: str, stats: ReadStats, strict: bool, base_url: str
) -> Iterator[Request]:
    base = base_url.rstrip("/")
    match = _NGINX.match
    for line, text in enumerate(file, 1):
        text = text.rstrip("\r\n")
        if not text.strip():
            continue
        try:
            found = match(text)
            if found is None:
                raise ValueError(
                    "not an nginx combined line with $request_time appended"
                    f" ({text[:60]!r}{'...' if len(text) > 60 else ''})"
                )
            parts = found.group("request").split(" ")
            if len(parts) < 2:
                raise ValueError(f"bad request line {found.group('request')!r}")
            method, target = parts[0].upper(), parts[1]
            if found.group("request_time") == "-":
                raise ValueError("no $request_time")
            duration = parse_duration(found.group("request_time"))
            try:
                ended = datetime.strptime(found.group("time"), _NGINX_TIME).timestamp()
            except ValueError:
                raise ValueError(f"bad $time_local {found.group('time')!r}") from None
            status = _status(found.group("status"))
        except ValueError as exc:
            error = LogError(source, line, str(exc))
            if strict:
                raise error from None
            stats.skip(error)
            continue
        url = target if "://" in target else f"{base}{target if target.startswith('/') else '/'}"
        if status == _NGINX_CLOSED:
            yield Request(ended - duration, url, None, method, None, CANCELLED, duration)
        else:
            # nginx writes the line when the request ends: it started request_time earlier.
            yield Request(ended - duration, url, None, method, status, None, duration)


def detect_format(path: str | os.PathLike[str]) -> str:
    """Guess a log's format from its name and its first non-empty line.

    Returns:
        One of :data:`FORMATS`.

    Raises:
        ValueError: the first line looks like none of them.
    """
    name = os.fspath(path)
    lower = name.lower()
    if lower.endswith(".csv"):
        return "csv"
    with open(name, encoding="utf-8", errors="replace") as file:
        first = next((line for line in file if line.strip()), "")
    text = first.strip()
    if text.startswith("{"):
        try:
            record = json.loads(text)
        except json.JSONDecodeError:
            record = None
        if isinstance(record, dict):
            return "envoy" if "start_time" in record or "response_code" in record else "jsonl"
    if _NGINX.match(text):
        return "nginx"
    if text.lower().startswith("timestamp") or "," in text:
        return "csv"
    raise ValueError(
        f"{name}: cannot tell the log's format from its first line; give it"
        f" (one of {', '.join(FORMATS)})"
    )


class LogSource:
    """A log file read as :class:`Request` rows, streamed; iterate it as often as needed.

    Each iteration reads the file anew (a tuner replays it once per batch of
    configurations) and resets :attr:`stats`.

    Args:
        path: The file (UTF-8).
        format: One of :data:`FORMATS`, or ``"auto"`` (:func:`detect_format`).
        strict: Raise :class:`LogError` at the first row that cannot be read,
            instead of leaving it out and counting it.
        base_url: For nginx logs, whose lines carry only the path: the
            scheme and host requests went to (``http://upstream`` by default),
            so by-host keys mean something. Envoy rows use its scheme.

    Attributes:
        stats: What the latest iteration could not read (:class:`ReadStats`).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        format: str = "auto",
        *,
        strict: bool = False,
        base_url: str = _DEFAULT_BASE_URL,
    ) -> None:
        self.path = os.fspath(path)
        if format == "auto":
            format = detect_format(self.path)
        if format not in FORMATS:
            raise ValueError(f"unknown log format {format!r}; expected auto or one of {FORMATS}")
        if "://" not in base_url:
            raise ValueError(f"base_url must be scheme://host, got {base_url!r}")
        self.format = format
        self.strict = strict
        self.base_url = base_url
        self.stats = ReadStats()

    def __repr__(self) -> str:
        return f"<LogSource {self.path!r} {self.format}>"

    @property
    def name(self) -> str:
        """The file's name, for reports and plot titles."""
        return os.path.basename(self.path)

    def __iter__(self) -> Iterator[Request]:
        stats = self.stats = ReadStats()
        source, strict = self.path, self.strict
        # newline="" lets the csv module see quoted newlines as it needs to.
        with open(self.path, encoding="utf-8", errors="replace", newline="") as file:
            rows: Iterator[Request]
            if self.format == "csv":
                rows = _csv_rows(file, source, stats, strict)
            elif self.format == "jsonl":
                rows = _json_lines(file, source, stats, strict, _request_from)
            elif self.format == "envoy":
                scheme = self.base_url.partition("://")[0]
                rows = _json_lines(file, source, stats, strict, _envoy_request(scheme))
            else:
                rows = _nginx_rows(file, source, stats, strict, self.base_url)
            for row in rows:
                stats.rows += 1
                yield row


def read_log(
    path: str | os.PathLike[str],
    format: str = "auto",
    *,
    strict: bool = False,
    base_url: str = _DEFAULT_BASE_URL,
) -> LogSource:
    """Open a log for the simulator (see :class:`LogSource` for the arguments).

    Example:
        >>> source = read_log("access.log", "nginx", base_url="https://api.example.com")
        ... # doctest: +SKIP

    Raises:
        ValueError: an unknown format, or one ``"auto"`` cannot tell.
        OSError: the file cannot be opened.
    """
    return LogSource(path, format, strict=strict, base_url=base_url)
