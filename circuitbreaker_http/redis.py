"""Breaker state shared by a fleet of processes through Redis (redis-py).

``RedisStorage(client, prefix="cbh", sync_interval=0.1, min_reporters=1)``
takes a ready ``redis.Redis``; pass it as ``BreakerRegistry(...,
storage=storage)``. The hot path never talks to Redis: one syncer thread per
registry sends, every ``sync_interval``, the breakers that changed in one
pipelined round trip, and applies the fleet's answer to them. One Lua script,
loaded once and called by digest (``EVALSHA``), applies each breaker's report
atomically on Redis' own clock; its theory of operation is the comment at the
top of :data:`SCRIPT`.

Keys: ``{prefix}:{<32 hex digits of sha256(breaker key)>}:<part>``, parts
``s`` (state hash, holding the raw key), ``w`` (window buckets), ``r``
(reporters with failures) and ``l`` (trial leases); the braces put one
breaker's keys in one Redis Cluster slot. ``{prefix}:index`` is a sorted set
of digests by last write, so tools list the fleet without ``SCAN``. Every key
has a TTL of about ``1.1 × window + max_open_duration + 60 s``.

``AsyncRedisStorage(client, ...)`` is the same for ``redis.asyncio.Redis``:
the same script and engine, its syncer a task on the running event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

try:
    import redis
    import redis.asyncio
    from redis.exceptions import NoScriptError
except ImportError as exc:  # pragma: no cover - exercised by the bare-import test
    raise ImportError(
        'circuitbreaker_http.redis needs redis: pip install "circuitbreaker-http[redis]"'
    ) from exc

from ._core import CircuitState, FleetState
from .storage._engine import SyncEngine
from .storage._protocol import BreakerReport, digest
from .storage._syncer import Rounds, ThreadSyncer, stats_of

__all__ = ["SCRIPT", "AsyncRedisStorage", "RedisStorage"]

logger = logging.getLogger("circuitbreaker_http")

_STATES = {state.value: state for state in CircuitState}
# AsyncRedisStorage.aclose(): seconds to wait for its cancelled tasks, and how
# many times to cancel them before giving up on one.
_CLOSE_WAIT = 2.0
_CLOSE_ATTEMPTS = 3
_VERDICTS = {True: "s", False: "f", None: "n"}

SCRIPT = r"""
-- circuitbreaker_http: apply one process's report for one breaker, atomically.
--
-- Theory of operation. KEYS are the breaker's state hash (s), window buckets
-- (w), reporters (r: a zset of process id -> time of its latest failure) and
-- trial leases (l: a zset of lease id -> expiry). Every time is Redis' own
-- (TIME, in ms), so hosts whose clocks differ agree on windows, open periods
-- and leases. A missing state hash is a fresh breaker (new, expired or wiped):
-- it starts closed, cycle 1, and says so in the reply.
--
-- The cycle is a serial bumped by every transition. A report carries the cycle
-- its process last saw; its window deltas, trip proposal and Retry-After count
-- only if the fleet is still in that cycle (an outcome counts only in the state
-- and open cycle its call was let through in): compare-and-set on the cycle.
-- Order of work: (1) a manual action (force_open, disable, reset) applies
-- unconditionally; (2) time: open -> half-open once open_until has passed, and
-- an expired lease is a failed trial (half-open -> open); (3) closed: file the
-- deltas in the bucket of now (width window/10, aligned on Redis' clock; old
-- buckets pruned) and trip when at least min_reporters distinct processes had
-- failures or slow calls in the window and either the process proposes a consecutive-failures
-- trip (judged per process) or the fleet's window reaches failure_rate or
-- slow_call_rate with minimum_calls; (4) half-open: each returned live lease's
-- verdict counts (one failure reopens, success_threshold successes close), then
-- up to half_open_max_calls leases in all are granted, each expiring
-- max_open_duration from now. An open period lasts open_duration *
-- open_backoff^(n-1), raised to the Retry-After not-before, capped at
-- max_open_duration, stretched by jitter * the client's random number.
-- A transition PUBLISHes the breaker's digest; every key gets PEXPIRE ttl.
local s, w, r, l = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local pid = ARGV[2]
local seen = tonumber(ARGV[3])
local d_calls, d_fail, d_slow = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local trip, manual, returns = ARGV[7], ARGV[8], ARGV[9]
local want = tonumber(ARGV[10])
local nb = ARGV[11]
local window, min_calls = tonumber(ARGV[12]), tonumber(ARGV[13])
local fr, scr = tonumber(ARGV[14]), tonumber(ARGV[15])
local open_ms, backoff, max_open = tonumber(ARGV[16]), tonumber(ARGV[17]), tonumber(ARGV[18])
local jitter, max_calls, threshold = tonumber(ARGV[19]), tonumber(ARGV[20]), tonumber(ARGV[21])
local min_reporters, rnd = tonumber(ARGV[22]), tonumber(ARGV[23])
local channel, ttl, name = ARGV[24], tonumber(ARGV[25]), ARGV[26]

local h = redis.call('HMGET', s, 'state', 'cycle', 'open_until', 'open_count',
                     'not_before', 'successes', 'reason')
local fresh = 0
local state, cycle, open_until, open_count, not_before, successes, reason
if h[1] then
  state, cycle, reason = h[1], tonumber(h[2]), h[7]
  open_until, open_count = tonumber(h[3]), tonumber(h[4])
  not_before, successes = tonumber(h[5]), tonumber(h[6])
else
  fresh = 1
  state, cycle, reason = 'closed', 1, 'new'
  open_until, open_count, not_before, successes = 0, 0, 0, 0
  redis.call('DEL', w, r, l)
end
local calls, failures, slow = 0, 0, 0
local moved = 0
local function go(new, why)
  moved = 1
  state, cycle, reason, successes = new, cycle + 1, why, 0
  redis.call('DEL', l)
  if new == 'closed' then
    redis.call('DEL', w, r)
    calls, failures, slow = 0, 0, 0
    open_count, not_before = 0, 0
  elseif new == 'open' then
    open_count = open_count + 1
    local period = open_ms
    if open_count > 1 and backoff > 1 then period = open_ms * backoff ^ (open_count - 1) end
    if not_before - now > period then period = not_before - now end
    if period > max_open then period = max_open end
    open_until = now + period * (1 + rnd * jitter)
  end
end

if seen == 0 then seen = cycle end
-- (1) manual actions
if manual == 'force_open' then go('forced_open', 'force_open')
elseif manual == 'disable' then go('disabled', 'disable')
elseif manual == 'reset' then go('closed', 'reset') end
-- (2) time
if state == 'open' and now >= open_until then go('half_open', 'open_period_ended') end
if state == 'half_open' and redis.call('ZCOUNT', l, '-inf', now) > 0 then
  go('open', 'trial_timed_out')
end
local current = (seen == cycle)
if current and nb ~= '' then not_before = now + tonumber(nb) end
-- (3) the window
local width = window / 10
local head = math.floor(now / width)
local fields = redis.call('HGETALL', w)
local stale = {}
for i = 1, #fields, 2 do
  local f = fields[i]
  local kind, b = string.sub(f, 1, 1), tonumber(string.sub(f, 3))
  if b < head - 10 then
    stale[#stale + 1] = f
  else
    local v = tonumber(fields[i + 1])
    if kind == 'c' then calls = calls + v
    elseif kind == 'f' then failures = failures + v
    else slow = slow + v end
  end
end
if #stale > 0 then redis.call('HDEL', w, unpack(stale)) end
redis.call('ZREMRANGEBYSCORE', r, '-inf', now - window - width)
if current and state == 'closed' then
  if d_calls > 0 then
    redis.call('HINCRBY', w, 'c:' .. head, d_calls)
    calls = calls + d_calls
  end
  if d_fail > 0 then
    redis.call('HINCRBY', w, 'f:' .. head, d_fail)
    failures = failures + d_fail
  end
  if d_fail > 0 or d_slow > 0 then redis.call('ZADD', r, now, pid) end
  if d_slow > 0 then
    redis.call('HINCRBY', w, 's:' .. head, d_slow)
    slow = slow + d_slow
  end
  if redis.call('ZCARD', r) >= min_reporters then
    if trip == 'consecutive_failures' then
      go('open', 'consecutive_failures')
    elseif calls >= min_calls then
      if fr and failures / calls >= fr then go('open', 'failure_rate')
      elseif scr and slow / calls >= scr then go('open', 'slow_call_rate') end
    end
  end
end
-- (4) half-open trials
if state == 'half_open' then
  for lease, v in string.gmatch(returns, '(%S+):(%a)') do
    if redis.call('ZREM', l, lease) == 1 then
      if v == 'f' then go('open', 'trial_failed') break end
      if v == 's' then
        successes = successes + 1
        if successes >= threshold then go('closed', 'trials_succeeded') break end
      end
    end
  end
end
local granted = {}
if state == 'half_open' and want > 0 then
  local n = math.min(want, max_calls - redis.call('ZCARD', l))
  for i = 1, n do
    local id = cycle .. '.' .. redis.call('HINCRBY', s, 'lease_seq', 1)
    redis.call('ZADD', l, now + max_open, id)
    granted[#granted + 1] = id
  end
end
redis.call('HSET', s, 'state', state, 'cycle', cycle, 'open_until', tostring(open_until),
           'open_count', open_count, 'not_before', tostring(not_before),
           'successes', successes, 'reason', reason, 'key', ARGV[1], 'updated', tostring(now))
for _, k in ipairs(KEYS) do redis.call('PEXPIRE', k, ttl) end
if moved == 1 then redis.call('PUBLISH', channel, name) end
local remaining = 0
if state == 'open' and open_until > now then remaining = open_until - now end
return {state, cycle, tostring(remaining), open_count, reason, granted,
        calls, failures, slow, fresh}
"""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _number(value: float | None) -> str:
    return "" if value is None else repr(float(value))


class _RedisBase:
    """What both Redis storages share: arguments, key names, the script's calls and replies."""

    def __init__(
        self,
        client: Any,
        *,
        prefix: str = "cbh",
        sync_interval: float = 0.1,
        min_reporters: int = 1,
    ) -> None:
        if not isinstance(prefix, str) or not prefix or "{" in prefix or "}" in prefix:
            raise ValueError(f"prefix must be a non-empty str without braces, got {prefix!r}")
        if isinstance(min_reporters, bool) or not isinstance(min_reporters, int):
            raise ValueError(f"min_reporters must be an int >= 1, got {min_reporters!r}")
        if min_reporters < 1:
            raise ValueError(f"min_reporters must be an int >= 1, got {min_reporters!r}")
        if isinstance(sync_interval, bool) or not isinstance(sync_interval, (int, float)):
            raise ValueError(f"sync_interval must be seconds > 0, got {sync_interval!r}")
        if not 0 < sync_interval < math.inf:
            raise ValueError(f"sync_interval must be seconds > 0, got {sync_interval!r}")
        self.client = client
        self.prefix = prefix
        self.sync_interval = float(sync_interval)
        self.min_reporters = min_reporters
        #: This process's name among the reporters (unique per storage object).
        self.process_id = uuid.uuid4().hex
        self.channel = f"{prefix}:events"
        self._index = f"{prefix}:index"
        self._sha: str | None = None
        self._names: dict[str, str] = {}  # digest -> key, for notifications

    def stats(self) -> dict[str, object]:
        """How synchronisation goes, for metrics (``BreakerCollector`` exports it).

        Returns:
            ``up`` (the last round of every registry reached Redis), ``errors``
            (failed rounds), ``rounds``, ``sync_buckets`` (cumulative
            ``(upper bound in seconds, count)`` pairs of round durations,
            ending with ``math.inf``) and ``sync_sum`` (seconds in rounds).
        """
        syncers: Sequence[Rounds] = getattr(self, "_syncers", ())
        return stats_of(syncers)

    def _learn(self, key: str) -> None:
        # A notification carries a digest: know it for every breaker tracked,
        # so a process hears of a fleet trip before its breaker first reports.
        self._names[digest(key)] = key

    def keys_of(self, key: str) -> tuple[str, str, str, str]:
        """The Redis keys of breaker ``key``: state, window, reporters, leases."""
        base = f"{self.prefix}:{{{digest(key)}}}:"
        return base + "s", base + "w", base + "r", base + "l"

    def _round(self, reports: Sequence[BreakerReport]) -> list[_Call]:
        return [self._arguments(report) for report in reports]

    def _queue(self, pipe: Any, reports: Sequence[BreakerReport], calls: Sequence[_Call]) -> None:
        # A plain pipeline of EVALSHA: redis-py's Script objects in a pipeline
        # send SCRIPT EXISTS on every execute, an extra round trip per round.
        assert self._sha is not None
        for keys, args in calls:
            pipe.evalsha(self._sha, 4, *keys, *args)
        now_ms = int(time.time() * 1000)  # index order only: no decision reads it
        pipe.zadd(self._index, {digest(report.key): now_ms for report in reports})
        ttl = max(report.settings.ttl for report in reports)
        pipe.pexpire(self._index, int(ttl * 1000))

    @staticmethod
    def _missing(results: Sequence[Any]) -> list[int]:
        """Calls the server refused for want of the script (a restart, ``SCRIPT FLUSH``)."""
        return [i for i, result in enumerate(results) if isinstance(result, NoScriptError)]

    def _replies(
        self, reports: Sequence[BreakerReport], results: Sequence[Any]
    ) -> list[FleetState]:
        replies = []
        for report, result in zip(reports, results, strict=True):
            if isinstance(result, Exception):
                raise result
            replies.append(self._reply(report.key, result))
        return replies

    def _arguments(self, report: BreakerReport) -> _Call:
        s = report.settings
        name = digest(report.key)
        self._names[name] = report.key
        returns = " ".join(f"{lease}:{_VERDICTS[v]}" for lease, v in report.lease_returns)
        args: list[str | int | bytes] = [
            # Any str, lone surrogates included, goes through as its UTF-8 bytes.
            report.key.encode("utf-8", "surrogatepass"),
            self.process_id,
            report.fleet_cycle,
            report.calls,
            report.failures,
            report.slow_calls,
            report.trip or "",
            report.manual or "",
            returns,
            report.leases_wanted,
            "" if report.not_before is None else _number(report.not_before * 1000),
            _number(s.window * 1000),
            s.minimum_calls,
            _number(s.failure_rate),
            _number(s.slow_call_rate),
            _number(s.open_duration * 1000),
            _number(s.open_backoff),
            _number(s.max_open_duration * 1000),
            _number(s.open_jitter),
            s.half_open_max_calls,
            s.success_threshold,
            self.min_reporters,
            _number(report.random),
            self.channel,
            math.ceil(s.ttl * 1000),
            name,
        ]
        return self.keys_of(report.key), args

    @staticmethod
    def _reply(key: str, result: Any) -> FleetState:
        state, cycle, remaining, open_count, reason, leases, calls, failures, slow, fresh = result
        return FleetState(
            key=key,
            state=_STATES[_text(state)],
            fleet_cycle=int(cycle),
            open_remaining=float(_text(remaining)) / 1000,
            open_count=int(open_count),
            reason=_text(reason),
            leases=tuple(_text(lease) for lease in leases),
            calls=int(calls),
            failures=int(failures),
            slow_calls=int(slow),
            fresh=bool(int(fresh)),
        )

    def _state_keys(self, names: Sequence[Any]) -> list[str]:
        return [f"{self.prefix}:{{{_text(name)}}}:s" for name in names]

    @staticmethod
    def _found(names: Sequence[Any], found: Sequence[Any]) -> tuple[list[str], list[str]]:
        """The breaker keys found, and the index entries whose state is gone."""
        gone = [_text(name) for name, key in zip(names, found, strict=True) if key is None]
        keys = [
            key.decode("utf-8", "surrogatepass") if isinstance(key, bytes) else str(key)
            for key in found
            if key is not None
        ]
        return keys, gone


_Call = tuple[tuple[str, ...], list[str | int | bytes]]


class RedisStorage(_RedisBase):
    """Breaker state shared through Redis by every process using the same prefix.

    Args:
        client: A ready ``redis.Redis`` (or a client with its interface). Give
            it a socket timeout (50–100 ms is recommended): a slow Redis then
            counts as a down one, and breaking goes on locally meanwhile.
        prefix: Start of every key and of the notification channel.
        sync_interval: Seconds between two rounds of a registry's syncer (> 0).
        min_reporters: Distinct processes with failures in the window that a
            fleet-wide trip needs (``>= 1``); a process tripping alone below
            it opens for itself only.

    Raises:
        ValueError: a bad ``prefix``, ``sync_interval`` or ``min_reporters``.
    """

    def __init__(
        self,
        client: redis.Redis,
        *,
        prefix: str = "cbh",
        sync_interval: float = 0.1,
        min_reporters: int = 1,
    ) -> None:
        super().__init__(
            client, prefix=prefix, sync_interval=sync_interval, min_reporters=min_reporters
        )
        self._syncers: list[ThreadSyncer] = []
        self._listeners: list[_Listener] = []

    # -- the protocol ------------------------------------------------------------

    def start(self, engine: SyncEngine) -> ThreadSyncer:
        """Start a registry's syncer thread, and a listener for fleet notifications."""
        syncer = ThreadSyncer(engine, self.exchange, self.sync_interval)
        engine.tracked = self._learn
        self._syncers.append(syncer)
        self._listeners.append(_Listener(self, engine.notice))
        return syncer

    def exchange(self, reports: Sequence[BreakerReport]) -> list[FleetState]:
        """Apply each report with the script, all in one pipelined round trip.

        Raises:
            redis.RedisError: Redis is unreachable, slow or refused the script.
        """
        if self._sha is None:
            self._sha = _text(self.client.script_load(SCRIPT))
        calls = self._round(reports)
        pipe = self.client.pipeline(transaction=False)
        self._queue(pipe, reports, calls)
        results = pipe.execute(raise_on_error=False)[: len(calls)]
        missing = self._missing(results)
        if missing:
            # The script cache was flushed (a restart, SCRIPT FLUSH): load it once more.
            self._sha = _text(self.client.script_load(SCRIPT))
            pipe = self.client.pipeline(transaction=False)
            for i in missing:
                keys, args = calls[i]
                pipe.evalsha(self._sha, 4, *keys, *args)
            for i, result in zip(missing, pipe.execute(raise_on_error=False), strict=True):
                results[i] = result
        return self._replies(reports, results)

    def subscribe(self, callback: Callable[[str], None]) -> Callable[[], None]:
        """Call ``callback(key)`` (from a listener thread) after a fleet-wide transition.

        Only keys of breakers this storage's registries hold or reported are
        known by name. Returns a callable that stops the listener.
        """
        listener = _Listener(self, callback)
        self._listeners.append(listener)
        return listener.stop

    def breakers(self) -> list[str]:
        """The keys of the fleet's breakers that Redis still holds, from the index."""
        names = self.client.zrange(self._index, 0, -1)
        if not names:
            return []
        pipe = self.client.pipeline(transaction=False)
        for state_key in self._state_keys(names):
            pipe.hget(state_key, "key")
        keys, gone = self._found(names, pipe.execute())
        if gone:
            self.client.zrem(self._index, *gone)
        return keys

    def close(self) -> None:
        """Stop the syncers and listeners started on this storage (the client stays open)."""
        syncers, self._syncers = self._syncers, []
        listeners, self._listeners = self._listeners, []
        for listener in listeners:
            listener.stop()
        for syncer in syncers:
            syncer.stop()


class _Listener:
    """A thread on the client's pub/sub: a fleet transition wakes the syncer at once."""

    def __init__(self, storage: RedisStorage, callback: Callable[[str], None]) -> None:
        self._storage = storage
        self._callback = callback
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name="circuitbreaker_http-redis-listen", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5.0)

    def _run(self) -> None:
        delay = 0.1
        while not self._stop.is_set():
            pubsub = None
            try:
                pubsub = self._storage.client.pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(self._storage.channel)
                delay = 0.1
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=0.2)
                    if message is not None and message.get("type") == "message":
                        key = self._storage._names.get(_text(message["data"]))
                        if key is not None:
                            self._callback(key)
            except Exception:
                # Redis is away: the syncer logs the outage; retry quietly.
                self._stop.wait(delay)
                delay = min(5.0, delay * 2)
            finally:
                if pubsub is not None:
                    with contextlib.suppress(Exception):
                        pubsub.close()


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class AsyncRedisStorage(_RedisBase):
    """:class:`RedisStorage` for ``redis.asyncio.Redis``: the same script, awaited.

    The same state, keys, script and rules as :class:`RedisStorage`; only the
    I/O loop differs. Each registry's syncer is one task on the running event
    loop (never one per breaker), and one pub/sub task per storage carries
    notifications. The tasks start by themselves: at once when a registry is
    built inside a running loop, otherwise as soon as the registry creates a
    breaker, or a breaker trips or is set by hand, inside one (an async
    client's first request does it), so no call is needed to start syncing.
    ``async with storage:`` (or ``await storage.open()``) starts them
    explicitly, for breakers created before the loop ran. The storage keeps
    to the first loop it runs on; once that loop is closed, the next running
    loop takes over.

    Args:
        client: A ready ``redis.asyncio.Redis``. Give it a socket timeout
            (50–100 ms is recommended): a slow Redis then counts as a down one.
        prefix: Start of every key and of the notification channel.
        sync_interval: Seconds between two rounds of a registry's syncer (> 0).
        min_reporters: Distinct processes with failures in the window that a
            fleet-wide trip needs (``>= 1``).

    Raises:
        ValueError: a bad ``prefix``, ``sync_interval`` or ``min_reporters``.

    Example:
        >>> async def main() -> None:  # doctest: +SKIP
        ...     async with AsyncRedisStorage(redis.asyncio.Redis()) as storage:
        ...         registry = BreakerRegistry(storage=storage)
        ...         transport = AsyncCircuitBreakerTransport(registry=registry)
        ...         async with httpx.AsyncClient(transport=transport) as client:
        ...             await client.get("https://api.example.com/")
    """

    def __init__(
        self,
        client: redis.asyncio.Redis,
        *,
        prefix: str = "cbh",
        sync_interval: float = 0.1,
        min_reporters: int = 1,
    ) -> None:
        super().__init__(
            client, prefix=prefix, sync_interval=sync_interval, min_reporters=min_reporters
        )
        self._loop: asyncio.AbstractEventLoop | None = _running_loop()
        self._syncers: list[_TaskSyncer] = []
        self._callbacks: list[Callable[[str], None]] = []
        self._listener: asyncio.Task[None] | None = None
        self._closed = False

    # -- the loop ----------------------------------------------------------------

    def _soon(self, then: Callable[[], None] | None = None) -> None:
        """Make sure the tasks run on the storage's loop, then call ``then`` there.

        Called from any thread (a breaker's trip, a registry's new breaker):
        the loop is the one running here if the storage has none yet (or its
        old one is closed); from another thread the work is handed over.
        """
        if self._closed:
            return
        here = _running_loop()
        loop = self._loop
        if loop is None or loop.is_closed():
            if here is None:
                return  # no loop yet: the first one that runs takes over
            self._loop = loop = here
        if here is loop:
            self._spawn(then)
            return
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(self._spawn, then)

    def _spawn(self, then: Callable[[], None] | None) -> None:
        if self._closed:
            return
        for syncer in self._syncers:
            syncer.ensure()
        if self._callbacks and (self._listener is None or self._listener.done()):
            self._listener = asyncio.get_running_loop().create_task(
                self._listen(), name="circuitbreaker_http-redis-listen"
            )
        if then is not None:
            then()

    async def open(self) -> AsyncRedisStorage:
        """Start the tasks of every registry already using this storage on the running loop.

        Returns:
            The storage itself.
        """
        self._closed = False
        if self._loop is None or self._loop.is_closed():
            self._loop = asyncio.get_running_loop()
        self._soon()
        return self

    async def __aenter__(self) -> AsyncRedisStorage:
        return await self.open()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- the protocol ------------------------------------------------------------

    def start(self, engine: SyncEngine) -> _TaskSyncer:
        """Register a registry's engine; its syncer task starts once a loop runs (see above)."""
        syncer = _TaskSyncer(self, engine)
        self._syncers.append(syncer)
        self._callbacks.append(engine.notice)
        self._soon()
        return syncer

    async def exchange(self, reports: Sequence[BreakerReport]) -> list[FleetState]:
        """Apply each report with the script, all in one pipelined round trip.

        Raises:
            redis.RedisError: Redis is unreachable, slow or refused the script.
        """
        client = self.client
        if self._sha is None:
            self._sha = _text(await client.script_load(SCRIPT))
        calls = self._round(reports)
        pipe = client.pipeline(transaction=False)
        self._queue(pipe, reports, calls)
        results = (await pipe.execute(raise_on_error=False))[: len(calls)]
        missing = self._missing(results)
        if missing:
            # The script cache was flushed (a restart, SCRIPT FLUSH): load it once more.
            self._sha = _text(await client.script_load(SCRIPT))
            pipe = client.pipeline(transaction=False)
            for i in missing:
                keys, args = calls[i]
                pipe.evalsha(self._sha, 4, *keys, *args)
            for i, result in zip(missing, await pipe.execute(raise_on_error=False), strict=True):
                results[i] = result
        return self._replies(reports, results)

    def subscribe(self, callback: Callable[[str], None]) -> Callable[[], None]:
        """Call ``callback(key)`` on the loop after a fleet-wide transition.

        One pub/sub task per storage serves every callback. Only keys of
        breakers this storage's registries hold or reported are known by
        name. Returns an undo.
        """
        callbacks = self._callbacks
        callbacks.append(callback)
        self._soon()

        def undo() -> None:
            if callback in callbacks:
                callbacks.remove(callback)

        return undo

    async def breakers(self) -> list[str]:
        """The keys of the fleet's breakers that Redis still holds, from the index."""
        client = self.client
        names = await client.zrange(self._index, 0, -1)
        if not names:
            return []
        pipe = client.pipeline(transaction=False)
        for state_key in self._state_keys(names):
            pipe.hget(state_key, "key")
        keys, gone = self._found(names, await pipe.execute())
        if gone:
            await client.zrem(self._index, *gone)
        return keys

    def _tasks(self) -> list[asyncio.Task[Any]]:
        self._closed = True
        tasks = [s.task for s in self._syncers if s.task is not None]
        if self._listener is not None:
            tasks.append(self._listener)
        for syncer in self._syncers:
            syncer.task = None
        self._syncers = []
        self._callbacks = []
        self._listener = None
        return tasks

    def close(self) -> None:
        """Cancel the tasks started on this storage without waiting (the client stays open)."""
        loop = self._loop
        for task in self._tasks():
            if loop is not None and not loop.is_closed():
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(task.cancel)

    async def aclose(self) -> None:
        """Cancel the tasks started on this storage and wait for them (the client stays open)."""
        here = asyncio.get_running_loop()
        tasks = self._tasks()
        for task in tasks:
            if task.get_loop() is here:
                task.cancel()
            elif not task.get_loop().is_closed():
                with contextlib.suppress(RuntimeError):
                    task.get_loop().call_soon_threadsafe(task.cancel)
        pending = {task for task in tasks if task.get_loop() is here}
        # redis.asyncio can swallow a cancellation that lands inside a read
        # (redis/redis-py#2028): a task still running after a while is
        # cancelled again, up to _CLOSE_ATTEMPTS cancellations in all.
        for attempt in range(_CLOSE_ATTEMPTS):
            if not pending:
                return
            if attempt:
                for task in pending:
                    task.cancel()
            done, pending = await asyncio.wait(pending, timeout=_CLOSE_WAIT)
            for task in done:
                if not task.cancelled():
                    task.exception()  # retrieved, as gather() would: no warning at collection
        if pending:
            logger.warning(
                "AsyncRedisStorage.aclose: %d task(s) did not stop when cancelled", len(pending)
            )

    async def _listen(self) -> None:
        delay = 0.1
        while self._callbacks:
            pubsub = self.client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel)
                delay = 0.1
                while self._callbacks:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is not None and message.get("type") == "message":
                        key = self._names.get(_text(message["data"]))
                        if key is not None:
                            for callback in list(self._callbacks):
                                callback(key)
            except asyncio.CancelledError:
                raise
            except Exception:
                # Redis is away: the syncer logs the outage; retry quietly.
                await asyncio.sleep(delay)
                delay = min(5.0, delay * 2)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()


class _TaskSyncer(Rounds):
    """One registry's sync rounds as a task on the storage's loop."""

    def __init__(self, storage: AsyncRedisStorage, engine: SyncEngine) -> None:
        super().__init__(engine, storage.sync_interval)
        self._storage = storage
        self.task: asyncio.Task[None] | None = None
        self._event: asyncio.Event | None = None
        engine.wake = self._wake
        engine.tracked = self._tracked

    def _tracked(self, key: str) -> None:
        self._storage._learn(key)
        self._storage._soon()

    def _wake(self) -> None:
        # From any thread: set the event on the loop (asyncio.Event is not thread-safe).
        self._storage._soon(self._set)

    def _set(self) -> None:
        if self._event is not None:
            self._event.set()

    def ensure(self) -> None:
        """Start the task on the running loop unless it runs already."""
        if self.task is None or self.task.done():
            self._event = asyncio.Event()
            self.task = asyncio.get_running_loop().create_task(
                self._run(), name="circuitbreaker_http-sync"
            )

    def stop(self) -> None:
        """Cancel the task (from any thread)."""
        task, self.task = self.task, None
        if task is not None and not task.get_loop().is_closed():
            with contextlib.suppress(RuntimeError):
                task.get_loop().call_soon_threadsafe(task.cancel)
        with contextlib.suppress(ValueError):
            self._storage._syncers.remove(self)

    async def _run(self) -> None:
        event = self._event
        assert event is not None
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), self.delay)
            event.clear()
            await self.run_round()

    async def run_round(self) -> bool:
        """Run one round now; whether the storage answered (or there was nothing to send)."""
        reports = self.begin()
        if reports is None:
            return True
        try:
            replies = await self._storage.exchange(reports)
        except Exception as exc:
            self.failed(exc)
            return False
        self.succeeded(replies)
        return True
