"""Operations from the command line: ``status``, ``open``, ``disable``, ``reset``.

Two sources, one behaviour:

- ``--redis URL [--prefix P]``: a fleet's shared state. Breakers are listed
  through the storage's key index (never ``SCAN``); a manual action is sent as
  the fleet storage itself sends one, a :class:`BreakerReport` carrying
  ``manual=`` through :meth:`RedisStorage.exchange`, so it applies fleet-wide
  atomically and every process adopts it at its next sync.
- ``--url STATUS_URL [--token T]``: one process's status page
  (:mod:`circuitbreaker_http.status`), over ``urllib``.

Exit status: 0 ok; 1 when an action found nothing or failed, or the source
could not be read; 2 on bad usage (a multi-key glob without ``--yes``
included). Errors are one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NoReturn
from urllib.parse import quote

__all__ = ["add_ops", "run_ops"]

PROG = "circuitbreaker-http"
TOKEN_ENV = "CIRCUITBREAKER_HTTP_TOKEN"
"""Where ``--token`` is read from when not given (keeps it out of shell history and ``ps``)."""

_ACTIONS = {"open": "force_open", "disable": "disable", "reset": "reset"}
# What each action leaves a breaker in: acting on one already there changes nothing.
_TARGET = {"open": "forced_open", "disable": "disabled"}
_ORDER = {"open": 0, "forced_open": 1, "half_open": 2, "disabled": 3, "closed": 4}
_TIMEOUT = 10.0
# Redis keeps a manual state until the key's TTL; it is written with the
# settings of a breaker the tool cannot see, so it uses a long window: the
# script never prunes a window bucket the breaker's own window still counts,
# and an operator's state lasts about 72 minutes without traffic (every
# process's own sync re-arms the TTL meanwhile, and re-proposes its manual
# state if the key was lost).
_MANUAL_WINDOW = 3600.0


READ_SCRIPT = r"""
-- circuitbreaker_http status: breakers' fleet state, read-only.
-- KEYS: for each breaker its state hash (s) then its window buckets (w), as
-- RedisStorage writes them. For each: false when the state has expired, else
-- one string (one value to parse, not ten; the key last, as it may hold any
-- byte): state, ms left in the open period, open count, reason, ms since the
-- last write, and the window's calls, failures and slow calls, summed here as
-- the fleet last wrote them (the storage's script prunes them on each write).
-- Times are Redis' own (TIME), as the storage's.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local out = {}
for k = 1, #KEYS, 2 do
  local h = redis.call('HMGET', KEYS[k], 'key', 'state', 'open_until', 'open_count',
                       'reason', 'updated')
  if h[1] and h[2] then
    local c, f, s = 0, 0, 0
    local fields = redis.call('HGETALL', KEYS[k + 1])
    for i = 1, #fields, 2 do
      local kind, v = string.sub(fields[i], 1, 1), tonumber(fields[i + 1])
      if kind == 'c' then c = c + v elseif kind == 'f' then f = f + v
      elseif kind == 's' then s = s + v end
    end
    out[#out + 1] = table.concat({h[2], tostring((tonumber(h[3]) or 0) - now),
      h[4] or '0', h[5] or '', tostring(now - (tonumber(h[6]) or now)), c, f, s, h[1]}, '\n')
  else
    out[#out + 1] = false
  end
end
return out
"""
"""Reads breakers' fleet state for ``status --redis`` (KEYS: state hash, window, ...)."""

_READ_BATCH = 250
"""Breakers per read script call: few commands to pack, about a millisecond of Redis each."""


class OpsError(Exception):
    """A failure to report on one line; ``code`` is the exit status."""

    def __init__(self, message: str, code: int = 1, http_status: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.http_status = http_status


# -- arguments -------------------------------------------------------------------------


def _source(parser: argparse.ArgumentParser, *, token: bool) -> None:
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--redis", metavar="URL", help="a fleet in Redis (redis://host:6379/0)")
    where.add_argument(
        "--url", metavar="STATUS_URL", help="one process's status page (http://host:port/status/)"
    )
    parser.add_argument(
        "--prefix", default="cbh", help="the fleet's key prefix in Redis (default cbh)"
    )
    if token:
        parser.add_argument(
            "--token",
            help=f"the status page's bearer token (default: ${TOKEN_ENV})",
        )


def add_ops(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``status``, ``open``, ``disable`` and ``reset`` on the command's subparsers."""
    status = commands.add_parser(
        "status",
        help="list the breakers of a fleet (--redis) or of one process (--url)",
        description="List breakers: the open ones first, then by key.",
    )
    _source(status, token=False)
    status.add_argument(
        "--match", metavar="GLOB", help="only keys matching GLOB (* matches any run)"
    )
    status.add_argument("--json", action="store_true", help="print JSON instead of a table")
    status.add_argument(
        "--watch", type=float, metavar="S", help="print again every S seconds until Ctrl-C"
    )
    for name, what in (
        ("open", "force breakers open (until reset)"),
        ("disable", "let every call through breakers, recording nothing (until reset)"),
        ("reset", "close breakers, forgetting their window and backoff"),
    ):
        action = commands.add_parser(name, help=what, description=what.capitalize() + ".")
        action.add_argument(
            "target",
            metavar="KEY_OR_GLOB",
            help="a breaker key, or a glob where * matches any run of characters",
        )
        _source(action, token=True)
        action.add_argument("--yes", action="store_true", help="act on every match of a glob")


def _fail(message: str, code: int) -> NoReturn:
    raise OpsError(message, code)


def glob(pattern: str) -> Callable[[str], bool]:
    """A matcher for ``pattern``: ``*`` matches any run, everything else is literal.

    The same globs as ``rules`` patterns: keys hold ``[``, ``?`` and ``{`` (an
    IPv6 host, a route template), which must match as themselves.
    """
    if "*" not in pattern:
        return pattern.__eq__
    regex = re.compile(".*".join(re.escape(part) for part in pattern.split("*")), re.DOTALL)
    return lambda key: regex.fullmatch(key) is not None


# -- sources ---------------------------------------------------------------------------


class _Page:
    """One process's status page."""

    def __init__(self, url: str, token: str | None = None) -> None:
        base = url.rstrip("/")
        if base.endswith("/breakers"):
            base = base[: -len("/breakers")]
        if not base.startswith(("http://", "https://")):
            _fail(f"--url must be an http:// or https:// URL, got {url!r}", 2)
        self.base = base + "/"
        self.token = token
        #: The page's recent transitions, newest first, as of the latest :meth:`rows`.
        self.transitions: list[dict[str, Any]] = []

    def _call(self, method: str, path: str) -> Any:
        headers = {"Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(self.base + path, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=_TIMEOUT) as answer:
                body = answer.read()
        except urllib.error.HTTPError as exc:
            message = f"{method} {self.base}{path}: {exc.code} {_message(exc)}"
            raise OpsError(message, 1, exc.code) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            _fail(f"cannot reach the status page {self.base}: {reason}", 1)
        try:
            return json.loads(body)
        except ValueError:
            _fail(f"{self.base}{path} did not answer JSON: is it a status page?", 1)

    def rows(self) -> list[dict[str, Any]]:
        data = self._call("GET", "breakers")
        if not isinstance(data, dict) or not isinstance(data.get("breakers"), list):
            _fail(f"{self.base}breakers is not a status page's answer", 1)
        transitions = data.get("transitions")
        self.transitions = [
            t for t in (transitions if isinstance(transitions, list) else []) if isinstance(t, dict)
        ]
        return list(data["breakers"])

    def act(
        self, keys: Sequence[str], action: str, states: dict[str, str]
    ) -> Iterator[tuple[str, str, str, str | None]]:
        for key in keys:
            try:
                answer = self._call("POST", f"breakers/{quote(key, safe='')}/{action}")
            except OpsError as exc:
                if exc.http_status != 404:
                    raise  # a wrong token or a page gone away: the same for every key
                # One key gone since the listing (evicted, say) must not hide
                # what was done to the others, nor stop them.
                yield key, states.get(key, "?"), states.get(key, "?"), str(exc)
            else:
                yield key, str(answer["old"]), str(answer["new"]), None


def _message(exc: urllib.error.HTTPError) -> str:
    try:
        return str(json.loads(exc.read())["error"])
    except Exception:
        return str(exc.reason)


class _Fleet:
    """A fleet's breakers in Redis, read through the storage's index."""

    def __init__(self, url: str, prefix: str) -> None:
        try:
            import redis

            from ..redis import RedisStorage
        except ImportError:
            _fail('--redis needs redis-py: pip install "circuitbreaker-http[redis]"', 2)
        try:
            client = redis.Redis.from_url(url, socket_timeout=_TIMEOUT)
        except ValueError as exc:
            _fail(f"--redis: {exc}", 2)
        try:
            self.storage = RedisStorage(client, prefix=prefix)
        except ValueError as exc:
            _fail(f"--prefix: {exc}", 2)
        self.client = client
        self.url = url
        self.prefix = prefix
        self.index = f"{prefix}:index"  # the storage's index of digests (redis.py)
        self._read_sha: str | None = None
        from redis.exceptions import NoScriptError

        self._no_script = NoScriptError
        self._errors: tuple[type[Exception], ...] = (redis.RedisError,)

    def _guard(self, work: Callable[[], Any]) -> Any:
        try:
            return work()
        except self._errors as exc:
            _fail(f"Redis at {self.url}: {exc}", 1)

    def rows(self) -> list[dict[str, Any]]:
        return self._guard(self._rows)  # type: ignore[no-any-return]

    def _rows(self) -> list[dict[str, Any]]:
        # Two round trips: the index (never SCAN), then the read script over
        # batches of breakers in one pipeline. The script sums each window in
        # Redis and answers one string a breaker, not every bucket: packing
        # and parsing redis-py commands, not Redis, is what costs here. (A
        # script over several breakers' keys is fine: the command talks to one
        # Redis, ``redis.Redis.from_url``, not a Cluster.)
        names = [_text(name) for name in self.client.zrange(self.index, 0, -1)]
        if not names:
            return []
        if self._read_sha is None:
            self._read_sha = _text(self.client.script_load(READ_SCRIPT))
        pipe = self.client.pipeline(transaction=False)
        for start in range(0, len(names), _READ_BATCH):
            keys: list[str] = []
            for name in names[start : start + _READ_BATCH]:
                base = f"{self.prefix}:{{{name}}}:"  # RedisStorage.keys_of, from the digest
                keys += (base + "s", base + "w")
            pipe.evalsha(self._read_sha, len(keys), *keys)
        replies = pipe.execute(raise_on_error=False)
        if any(isinstance(reply, self._no_script) for reply in replies):
            # The script cache was flushed meanwhile: load it again, read again.
            self._read_sha = None
            return self._rows()
        rows = []
        for batch in replies:
            if isinstance(batch, Exception):
                raise batch
            for reply in batch:
                if not reply:
                    continue  # expired between the index and this read
                if isinstance(reply, str):  # a client made with decode_responses=True
                    reply = reply.encode("utf-8", "surrogatepass")
                rows.append(_fleet_row(reply.split(b"\n", 8)))
        return rows

    def act(
        self, keys: Sequence[str], action: str, states: dict[str, str]
    ) -> Iterator[tuple[str, str, str, str | None]]:
        from .. import BreakerConfig
        from ..storage import BreakerReport, FleetSettings

        if not keys:
            return

        settings = FleetSettings.of(BreakerConfig(window=_MANUAL_WINDOW))
        manual = _ACTIONS[action]
        reports = [BreakerReport(key, settings, manual=manual) for key in keys]
        replies = self._guard(lambda: self.storage.exchange(reports))
        for key, reply in zip(keys, replies, strict=True):
            yield key, states.get(key, "gone"), reply.state.value, None


def _text(value: Any) -> str:
    if value is None:
        return ""
    return value.decode("utf-8", "surrogatepass") if isinstance(value, bytes) else str(value)


def _fleet_row(fields: list[bytes]) -> dict[str, Any]:
    raw_state, remaining, open_count, reason, ago, calls, failures, slow, key = fields
    state = raw_state.decode()
    n, f, sl = int(float(calls)), int(float(failures)), int(float(slow))
    return {
        "name": key.decode("utf-8", "surrogatepass"),
        "state": state,
        "calls": n,
        "failures": f,
        "slow_calls": sl,
        "failure_rate": f / n if n else None,
        "slow_call_rate": sl / n if n else None,
        "retry_after": max(0.0, float(remaining) / 1000) if state == "open" else None,
        "open_count": int(float(open_count or 0)),
        "reason": reason.decode(),
        "updated_ago": max(0.0, float(ago) / 1000),
    }


# -- output ----------------------------------------------------------------------------


def _sorted(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(rows, key=lambda r: (_ORDER.get(str(r.get("state")), 5), str(r.get("name"))))


def _pct(value: Any) -> str:
    return "" if value is None else f"{100 * value:.1f}%"


def _secs(value: Any) -> str:
    return "" if value is None else f"{value:.1f}s"


def _table(rows: list[dict[str, Any]], fleet: bool) -> str:
    last = "REASON" if fleet else "LAST FAILURE"
    head = ["KEY", "STATE", "CALLS", "FAILS", "FAIL%", "SLOW%", "RETRY IN", last]
    if fleet:
        head.append("UPDATED")
    lines = [head]
    for r in rows:
        line = [
            str(r["name"]),
            str(r["state"]),
            str(r["calls"]),
            str(r["failures"]),
            _pct(r.get("failure_rate")),
            _pct(r.get("slow_call_rate")),
            _secs(r.get("retry_after")),
            str((r.get("reason") if fleet else r.get("last_failure")) or ""),
        ]
        if fleet:
            line.append(f"{r['updated_ago']:.0f}s ago")
        lines.append(line)
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    right = {2, 3, 4, 5, 6}
    out = []
    for line in lines:
        cells = [
            cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
            for i, cell in enumerate(line)
        ]
        out.append("  ".join(cells).rstrip())
    counts: dict[str, int] = {}
    for r in rows:
        counts[str(r["state"])] = counts.get(str(r["state"]), 0) + 1
    summary = ", ".join(f"{n} {state}" for state, n in sorted(counts.items(), key=_by_state))
    out.append(f"{len(rows)} breakers" + (f": {summary}" if summary else ""))
    return "\n".join(out)


def _by_state(item: tuple[str, int]) -> int:
    return _ORDER.get(item[0], 5)


# -- commands --------------------------------------------------------------------------


def _open_source(args: argparse.Namespace) -> _Page | _Fleet:
    if args.url is not None:
        if args.prefix != "cbh":
            _fail("--prefix goes with --redis, not --url", 2)
        token = getattr(args, "token", None) or os.environ.get(TOKEN_ENV) or None
        return _Page(args.url, token)
    if getattr(args, "token", None):
        _fail("--token goes with --url, not --redis", 2)
    return _Fleet(args.redis, args.prefix)


def _status(args: argparse.Namespace) -> int:
    if args.watch is not None and not 0.1 <= args.watch <= 3600:
        _fail("--watch must be between 0.1 and 3600 seconds", 2)
    source = _open_source(args)
    match = glob(args.match) if args.match else None
    fleet = isinstance(source, _Fleet)
    tty = sys.stdout.isatty()
    while True:
        try:
            rows = _sorted([r for r in source.rows() if match is None or match(str(r["name"]))])
        except OpsError as exc:
            if args.watch is None:
                raise
            # A blip must not end the watch an operator is relying on.
            print(f"{PROG}: {exc} (retrying in {args.watch:g}s)", file=sys.stderr)
        else:
            if args.json:
                shown: dict[str, Any] = {"breakers": rows}
                if isinstance(source, _Page):
                    # A fleet keeps no history; one process's page does.
                    shown["transitions"] = [
                        t
                        for t in source.transitions
                        if match is None or match(str(t.get("name", "")))
                    ]
                text = json.dumps(shown, indent=None if args.watch else 2)
            else:
                text = _table(rows, fleet)
            if args.watch is not None and tty:
                sys.stdout.write("\x1b[H\x1b[2J")  # redraw in place on a terminal
            print(text, flush=True)
        if args.watch is None:
            return 0
        time.sleep(args.watch)  # the refresh period the operator asked for


def _act(args: argparse.Namespace) -> int:
    action = args.command
    source = _open_source(args)
    if isinstance(source, _Page) and not source.token:
        _fail(f"{action} through --url needs --token (or ${TOKEN_ENV})", 2)
    states = {str(r["name"]): str(r["state"]) for r in source.rows()}
    matches = sorted(filter(glob(args.target), states))
    if not matches:
        _fail(f"no breaker matches {args.target!r}", 1)
    if len(matches) > 1 and not args.yes:
        shown = ", ".join(matches[:5]) + (", ..." if len(matches) > 5 else "")
        _fail(f"{args.target!r} matches {len(matches)} breakers ({shown}): add --yes", 2)
    if isinstance(source, _Fleet) and action in _TARGET:
        # Already there: sending it again would only bump the fleet's cycle.
        same = [key for key in matches if states.get(key) == _TARGET[action]]
        for key in same:
            print(f"{key}: {_TARGET[action]} (unchanged)")
        matches = [key for key in matches if key not in same]
    where = " (fleet-wide)" if isinstance(source, _Fleet) else ""
    failed = 0
    for key, old, new, error in source.act(matches, action, states):
        if error is not None:
            failed += 1
            print(f"{PROG} {action}: error: {key}: {error}", file=sys.stderr, flush=True)
        elif old == new and action in _TARGET:
            print(f"{key}: {new} (unchanged)", flush=True)
        else:
            print(f"{key}: {old} -> {new}{where}", flush=True)
    return 1 if failed else 0


def run_ops(args: argparse.Namespace) -> int:
    """Run ``status``, ``open``, ``disable`` or ``reset``; return the exit status.

    Args:
        args: The parsed arguments.

    Returns:
        0 ok; 1 when an action found nothing or failed, or the source could not
        be read; 2 on bad usage; 0 when Ctrl-C ends ``--watch``, else 130.
    """
    try:
        return _status(args) if args.command == "status" else _act(args)
    except OpsError as exc:
        print(f"{PROG} {args.command}: error: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        if args.command == "status" and args.watch is not None:
            print(file=sys.stderr)
            return 0
        return 130
