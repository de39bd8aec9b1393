"""``BreakerRegistry``: one breaker per key, configured by pattern, bounded in size.

Lookups of an existing breaker take no lock (a dict read and a dict write,
each atomic); only creating a breaker takes the registry's lock. Past
``max_breakers`` the registry drops about the least recently used breakers in
a batch, so the cost of eviction is spread over many creations.

Eviction looks only at breakers that may be dropped. A breaker found
protected (forced open, disabled, or open until later) is *parked*: it leaves
the candidates until its protection may have ended, which is either a time
(the end of its open period, kept in a heap) or a notice (its breaker reports
leaving a protected state through ``on_state_change``). So however many
breakers are protected, each creation costs amortised O(1) breakers looked at.
"""

from __future__ import annotations

import heapq
import itertools
import math
import os
import re
from bisect import bisect_right
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from threading import Lock
from typing import TYPE_CHECKING, Any, TypeVar

from . import _clock
from ._breaker import CircuitBreaker, Listener, StateListener, Subscription
from ._core import BreakerConfig, BreakerSnapshot, CircuitState, StateChange
from ._keys import KeyFunc, _encode_host, by_host, split_key

if TYPE_CHECKING:
    from .storage import AsyncStorage, Storage, SyncEngine

__all__ = ["BreakerRegistry", "Rule", "compile_rules", "registry_from"]

# A breaker that leaves one of these states may have stopped being protected.
_PROTECTED_STATES = frozenset({CircuitState.OPEN, CircuitState.FORCED_OPEN, CircuitState.DISABLED})
_NEVER = math.inf
# At most about this many clock marks per longest window (see ``_mark``).
_MARKS_PER_WINDOW = 1000
_R = TypeVar("_R", bound="BreakerRegistry")


@dataclass(frozen=True, slots=True)
class Rule:
    """One compiled ``rules`` entry: a pattern and the configuration it selects."""

    pattern: str
    config: BreakerConfig
    order: int
    scheme: str | None
    host: re.Pattern[str] | None
    port: re.Pattern[str] | None
    path: re.Pattern[str] | None
    host_is_glob: bool

    @property
    def specificity(self) -> tuple[bool, bool, int, int]:
        """Sort key, highest first: a path, an exact host, a longer pattern, listed first."""
        return (self.path is not None, not self.host_is_glob, len(self.pattern), -self.order)

    def matches(self, key: str, parts: tuple[str, str, int | None, str] | None) -> bool:
        """Whether this rule applies to ``key`` (``parts`` is ``split_key(key)``)."""
        if parts is None or self.host is None:
            return key == self.pattern
        scheme, host, port, path = parts
        if self.scheme is not None and scheme != self.scheme:
            return False
        if not self.host.fullmatch(host):
            return False
        if self.port is not None and not self.port.fullmatch("" if port is None else str(port)):
            return False
        if self.path is not None:
            return self.path.fullmatch(path) is not None
        return True


def _glob(text: str) -> re.Pattern[str]:
    # ``*`` is the only wildcard and crosses dots and slashes; all else is literal.
    return re.compile(".*".join(re.escape(part) for part in text.split("*")))


def _compile_rule(pattern: str, config: BreakerConfig, order: int) -> Rule:
    if not isinstance(pattern, str) or not pattern:
        raise ValueError(f"rules: a pattern must be a non-empty str, got {pattern!r}")
    if not isinstance(config, BreakerConfig):
        raise ValueError(f"rules[{pattern!r}] must be a BreakerConfig, got {config!r}")
    text = pattern
    scheme: str | None = None
    if "://" in text:
        scheme, _, text = text.partition("://")
        scheme = scheme.lower()
    slash = text.find("/")
    hostport, path = (text, None) if slash < 0 else (text[:slash], text[slash:])
    # Hosts are case-insensitive; paths (and route templates) are not.
    hostport = hostport.lower()
    port: str | None = None
    if hostport.startswith("["):
        end = hostport.find("]")
        if end < 0:
            raise ValueError(f"rules: unclosed '[' in pattern {pattern!r}")
        host, tail = hostport[: end + 1], hostport[end + 1 :]
        if tail:
            if not tail.startswith(":"):
                raise ValueError(f"rules: unexpected {tail!r} in pattern {pattern!r}")
            port = tail[1:]
    elif hostport.count(":") == 1:
        host, _, port = hostport.partition(":")
    else:
        host = hostport
    if not host:
        raise ValueError(f"rules: pattern {pattern!r} has no host")
    if port is not None and not port.replace("*", "").isdigit() and port != "*":
        raise ValueError(f"rules: bad port {port!r} in pattern {pattern!r}")
    if ":" in host and not host.startswith("["):
        # A bare IPv6 address without a port: keys carry it in brackets.
        host = f"[{host}]"
    if not host.isascii():
        # Keys carry hosts as they are sent (IDNA): encode each literal label.
        host = ".".join(
            label if label.isascii() or "*" in label else _encode_host(label)
            for label in host.split(".")
        )
    return Rule(
        pattern=pattern,
        config=config,
        order=order,
        scheme=scheme,
        host=_glob(host),
        port=None if port is None else _glob(port),
        path=None if path is None else _glob(path),
        host_is_glob="*" in host,
    )


def compile_rules(rules: Mapping[str, BreakerConfig] | None) -> tuple[Rule, ...]:
    """Compile a ``rules`` mapping into rules sorted most specific first."""
    if rules is None:
        return ()
    if not isinstance(rules, Mapping):
        raise ValueError(f"rules must be a mapping of pattern to BreakerConfig, got {rules!r}")
    compiled = [_compile_rule(p, c, i) for i, (p, c) in enumerate(rules.items())]
    compiled.sort(key=lambda rule: rule.specificity, reverse=True)
    return tuple(compiled)


class BreakerRegistry:
    """Holds one :class:`CircuitBreaker` per key, created on first use.

    Args:
        default: The configuration of a key that no rule matches.
        rules: Pattern → configuration. A pattern is a host
            (``api.example.com``), a host and port (``127.0.0.1:8080``,
            ``[::1]:8080``), a glob of either (``*.example.com``; ``*`` matches
            any run of characters), optionally followed by a path glob
            (``api.example.com/v1/payments/*``, matched against a route key's
            template). The most specific match wins: a path over none, an exact
            host over a glob, the longer pattern, then the one listed first.
        key: How requests map to keys: :data:`by_host` (default),
            :func:`by_route`, or any ``(method, url) -> str | None``.
        max_breakers: About how many breakers to hold. Past it, about the least
            recently used are dropped in batches of a tenth, idle ones (last
            used longer than their ``window`` ago) before any other, except
            those forced open or disabled by hand and those whose open period
            has not ended, and never the one just created. While protected
            breakers take up the whole bound, the registry holds them plus
            about a tenth of ``max_breakers`` of the most recently used others
            (at least the one just created), so a host in use keeps its
            breaker, and its failure count, however many others are protected.
        clock: The clock every breaker reads (``time.monotonic`` by default).
        on_state_change: Called with every breaker's :class:`StateChange`.
        storage: Where a fleet shares breaker state, such as
            ``circuitbreaker_http.redis.RedisStorage``; ``None`` (the default)
            keeps every breaker's state in this process. With one, the registry
            runs one syncer off the request path that sends its breakers' new
            outcomes and reads back the fleet's state once per
            ``storage.sync_interval``; close the storage to stop it.

    Raises:
        ValueError: a bad pattern, configuration or ``max_breakers``.
    """

    def __init__(
        self,
        default: BreakerConfig | None = None,
        *,
        rules: Mapping[str, BreakerConfig] | None = None,
        key: KeyFunc = by_host,
        max_breakers: int = 10_000,
        clock: Callable[[], float] = _clock.monotonic,
        on_state_change: StateListener | None = None,
        storage: Storage | AsyncStorage | None = None,
    ) -> None:
        if default is None:
            default = BreakerConfig()
        elif not isinstance(default, BreakerConfig):
            raise ValueError(f"default must be a BreakerConfig, got {default!r}")
        if not callable(key):
            raise ValueError(f"key must be by_host, by_route(...) or a callable, got {key!r}")
        if isinstance(max_breakers, bool) or not isinstance(max_breakers, int) or max_breakers < 1:
            raise ValueError(f"max_breakers must be an int >= 1, got {max_breakers!r}")
        if on_state_change is not None and not callable(on_state_change):
            # Checked here: every breaker gets it wrapped, and a wrapper is always callable.
            raise TypeError(f"on_state_change must be callable, got {on_state_change!r}")
        self.default = default
        self.rules = compile_rules(rules)
        self.key = key
        self.max_breakers = max_breakers
        self._clock = clock
        self._breakers: dict[str, CircuitBreaker] = {}
        # key -> tick of its last use: an approximate LRU that costs one dict
        # write per request and no lock (``next`` on a C counter is atomic).
        self._used: dict[str, int] = {}
        self._ticks = itertools.count()
        #: Changes whenever a breaker is created or dropped (read-only). An
        #: integration may keep the breaker ``get()`` gave for a key, and the
        #: epoch it read *before* that ``get()``, and use it again without
        #: ``get()`` while the epoch is unchanged: the breaker is still the
        #: key's, and since only a creation evicts, the LRU order is still
        #: exact to one creation (a key's tick is that of its first use since
        #: the last creation, not of its last use; the clock marks, taken at
        #: creations, still bound when it was last used).
        self.epoch = 0
        self._lock = Lock()
        # Everything below changes under the lock only, except ``_released``,
        # which breakers add to (``set.add`` is atomic) as they leave protection.
        # Held keys are either candidates for eviction (``_active``, not known
        # to be protected) or parked (protected when last looked at), never both.
        self._active: dict[str, CircuitBreaker] = {}
        # Parked key -> when to look at it again: the end of its open period,
        # or never by time (forced open or disabled: only a notice frees it).
        self._parked: dict[str, float] = {}
        self._due: list[tuple[float, str]] = []  # heap of (look again at, key)
        self._released: set[str] = set()
        self._on_state_change = _watch(self._released, on_state_change)
        # While protected breakers fill the bound, the held count past which
        # the next batch is evicted (0: none, ``max_breakers`` decides).
        self._over = 0
        # Clock marks: every tick below ``_mark_ticks[i]`` was drawn at or before
        # ``_mark_times[i]``. get() records a tick, not a time (a clock read on
        # the hot path would cost more than the dict write); marks taken as
        # breakers are created turn a tick into a bound on its use's time, which
        # is what tells an idle breaker from one used within its window.
        self._mark_ticks: list[int] = []
        self._mark_times: list[float] = []
        self._mark_since = 0.0  # when the latest mark started
        self._mark_every = 0.0  # how far apart marks start (set with the windows)
        self._min_window = _NEVER
        self._max_window = 0.0
        # Attached to every breaker, present and future (see subscribe()).
        self._subscriptions: list[Subscription] = []
        #: The fleet's storage, or ``None`` (read-only).
        self.storage = storage
        self._engine: SyncEngine | None = None
        if storage is not None:
            from .storage import Storage as _Storage
            from .storage import SyncEngine as _SyncEngine

            if not isinstance(storage, _Storage):
                raise TypeError(f"storage must implement the storage protocol, got {storage!r}")
            self._engine = _SyncEngine()
            storage.start(self._engine)

    @classmethod
    def from_file(cls: type[_R], path: str | os.PathLike[str], **kwargs: Any) -> _R:
        """Build a registry from a TOML configuration file.

        ``[default]`` holds :class:`BreakerConfig` fields (omitted ones keep
        their defaults); each ``[rules."pattern"]`` table takes the patterns of
        ``rules=`` and *inherits* every field it does not set from
        ``[default]``; ``[keys]`` may give ``routes = [...]`` for
        ``key=by_route(*routes)``. A field that may be off (``None`` in Python)
        is switched off with ``false``. ``classify`` cannot come from a file.

        Example:
            ``BreakerRegistry.from_file("breakers.toml", max_breakers=1000)``

        Args:
            path: The file (UTF-8 TOML).
            **kwargs: The registry's other arguments: ``key``, ``max_breakers``,
                ``clock``, ``on_state_change``, ... (not ``default`` or ``rules``).

        Raises:
            FileNotFoundError: no such file (as ``open`` raises it).
            ValueError: bad TOML (the message gives the line), an unknown table
                or field, a value of the wrong type or an invalid one, a bad
                pattern, or ``[keys] routes`` together with ``key=``; the
                message starts with the path and the table, then the field.
            TypeError: ``default`` or ``rules`` among ``kwargs``.
            ImportError: on Python 3.10 without ``tomli``
                (``pip install "circuitbreaker-http[toml]"``).
        """
        from ._config_file import arguments_from_file

        return cls(**arguments_from_file(path, kwargs))

    @classmethod
    def from_mapping(cls: type[_R], data: Mapping[str, Any], **kwargs: Any) -> _R:
        """Build a registry from an already-parsed configuration (JSON, YAML, ...).

        ``data`` has the shape of a file for :meth:`from_file`:
        ``{"default": {...}, "rules": {"pattern": {...}}, "keys": {"routes": [...]}}``,
        checked the same way; ``None`` switches a field off as ``False`` does.
        Errors name ``<mapping>`` where a file's would name its path.

        Args:
            data: The tables, each a mapping of field to value.
            **kwargs: The registry's other arguments, as for :meth:`from_file`.

        Raises:
            ValueError: as for :meth:`from_file`.
            TypeError: ``default`` or ``rules`` among ``kwargs``.
        """
        from ._config_file import arguments_from_mapping

        return cls(**arguments_from_mapping(data, kwargs))

    def __repr__(self) -> str:
        return f"<BreakerRegistry {len(self._breakers)} breakers, key={self.key!r}>"

    def __len__(self) -> int:
        return len(self._breakers)

    def __iter__(self) -> Iterator[CircuitBreaker]:
        return iter(list(self._breakers.values()))

    def __contains__(self, key: object) -> bool:
        return key in self._breakers

    def config_for(self, key: str) -> BreakerConfig:
        """Return the configuration a breaker for ``key`` gets: the best rule's, or ``default``."""
        parts = split_key(key)
        for rule in self.rules:
            if rule.matches(key, parts):
                return rule.config
        return self.default

    def get(self, key: str) -> CircuitBreaker:
        """Return the breaker for ``key``, creating it on first use (its ``.name`` is ``key``)."""
        breaker = self._breakers.get(key)
        if breaker is None:
            return self._create(key)
        self._used[key] = next(self._ticks)
        return breaker

    def snapshot(self) -> list[BreakerSnapshot]:
        """Return a snapshot of every breaker held."""
        return [breaker.snapshot() for breaker in list(self._breakers.values())]

    def subscribe(self, listener: Listener, *event_types: type[Any]) -> Callable[[], None]:
        """Deliver the events of every breaker of the registry, present and future.

        The same as :meth:`CircuitBreaker.subscribe` on each breaker:
        ``event_types`` among :class:`StateChange`, :class:`CallRecorded` and
        :class:`CallRejected` (all when none), listeners outside every lock,
        an exception from one logged (once a minute at most) and never passed on.

        Returns:
            A callable that unsubscribes from every breaker.

        Raises:
            TypeError: ``listener`` is not callable, or a type is not an event type.
        """
        subscription = Subscription(listener, event_types)
        with self._lock:
            self._subscriptions.append(subscription)
            breakers = list(self._breakers.values())
        for breaker in breakers:
            breaker.attach(subscription)

        def unsubscribe() -> None:
            with self._lock:
                if subscription not in self._subscriptions:
                    return
                self._subscriptions.remove(subscription)
                held = list(self._breakers.values())
            for breaker in held:
                breaker.detach(subscription)

        return unsubscribe

    def _create(self, key: str) -> CircuitBreaker:
        if not isinstance(key, str):
            raise TypeError(f"a breaker key must be a str, got {key!r}")
        config = self.config_for(key)
        with self._lock:
            breaker = self._breakers.get(key)
            if breaker is not None:
                return breaker
            breaker = CircuitBreaker(
                key, config, clock=self._clock, on_state_change=self._on_state_change
            )
            for subscription in self._subscriptions:
                breaker.attach(subscription)
            self._breakers[key] = breaker
            if self._engine is not None:
                self._engine.track(breaker)
            self._used[key] = next(self._ticks)
            self._active[key] = breaker
            self.epoch += 1
            window = config.window
            if not self._min_window <= window <= self._max_window:
                self._min_window = min(self._min_window, window)
                self._max_window = max(self._max_window, window)
                # Precision finer than a tenth of the shortest window buys
                # nothing, and a floor relative to the longest keeps the marks
                # few however much the windows differ.
                self._mark_every = max(self._min_window / 10, self._max_window / _MARKS_PER_WINDOW)
            # The tick is drawn before the clock is read, so the mark's time is
            # no earlier than any use whose tick is below it.
            tick = next(self._ticks)
            now = self._now()
            if now is None:
                return breaker  # no reading to judge protection by: evict next time
            self._mark(tick, now)
            held = len(self._breakers)
            if held > self.max_breakers and held > self._over:
                self._evict(key, now)
            return breaker

    def _now(self) -> float | None:
        """A finite clock reading, or ``None``: a failing clock postpones eviction, not a get()."""
        try:
            now = self._clock()
        except Exception:
            return None
        return now if isinstance(now, (int, float)) and math.isfinite(now) else None

    def _mark(self, tick: int, now: float) -> None:
        """Record that every tick up to ``tick`` was drawn by ``now``."""
        times = self._mark_times
        # Within ``_mark_every`` of its start the latest mark moves forward
        # rather than a new one starting: marks stay few, and a tick is never
        # left far behind the mark that bounds it.
        if times and now - self._mark_since < self._mark_every:
            self._mark_ticks[-1] = tick
            if now > times[-1]:
                times[-1] = now
            return
        self._mark_since = now
        self._mark_ticks.append(tick)
        times.append(now)

    def _used_by(self, tick: int) -> float:
        """The latest time the use that drew ``tick`` can have happened (``inf``: unknown)."""
        i = bisect_right(self._mark_ticks, tick)
        return self._mark_times[i] if i < len(self._mark_times) else _NEVER

    def _evict(self, keep: str, now: float) -> None:
        """Drop a batch of the least recently used, idle ones first. Call with the lock held."""
        breakers = self._breakers
        active = self._active
        used = self._used
        self._review_parked(now)
        # Every candidate is looked at once per batch: with batches of a tenth,
        # about ten per creation, and fewer while most breakers are parked.
        found_protected = []
        rows: list[tuple[int, str]] = []
        # Sort keys are ticks. With mixed windows, one used within its window
        # sorts after every idle one: its tick is raised past any tick drawn
        # so far. With one window for all, the least recently used are the
        # idle ones already, and the clock marks need not be read.
        later = next(self._ticks) if self._min_window != self._max_window else 0
        for key, breaker in active.items():
            if key == keep:
                continue
            if breaker.protected(now):
                found_protected.append(key)
                continue
            tick = used.get(key, -1)
            if later and now - self._used_by(tick) <= breaker.config.window:
                tick += later
            rows.append((tick, key))
        for key in found_protected:
            self._park(key, now)
        batch = max(1, self.max_breakers // 10)
        # Hold about max_breakers - batch after a batch. When the protected
        # breakers take that room, hold them plus the ``batch`` most recently
        # used others (``keep`` among them): dropping every other breaker at
        # each creation would cost a host in use its failure count, so a
        # failing host would never trip among many new keys.
        room = max(self.max_breakers + 1 - batch - len(self._parked), batch) - 1
        drop = len(rows) - room
        if drop > 0:
            # Ticks come mostly in the order keys were added: sorting is near linear.
            rows.sort()
            for _, key in rows[:drop]:
                del breakers[key]
                del active[key]
                if self._engine is not None:
                    self._engine.forget(key)
                used.pop(key, None)
            # After the drops: a breaker kept under the new epoch is still held.
            self.epoch += 1
        held = len(breakers)
        # While over the bound, the next batch waits for ``batch`` more creations
        # rather than scanning again at each one.
        self._over = held + batch - 1 if held > self.max_breakers else 0
        if len(used) > held + batch:
            # A get() racing a drop may have re-marked a dropped key. Rebuilt
            # from ``breakers`` (changed only under the lock), never by iterating
            # ``used``, which a lock-free get() may write to meanwhile; rare, so
            # amortised over the races that caused it.
            self._used = {k: used.get(k, -1) for k in breakers}
        self._forget_marks(now)

    def _review_parked(self, now: float) -> None:
        """Look again at parked breakers whose protection may have ended. Lock held."""
        parked = self._parked
        released = self._released
        while released:
            key = released.pop()  # only this method removes, under the lock
            if key in parked:
                self._recheck(key, now)
        due = self._due
        ripe = []
        while due and due[0][0] <= now:
            ripe.append(heapq.heappop(due))
        # Taken off the heap first: a breaker parked again below, even with a
        # time already due, waits for the next batch instead of looping here.
        for at, key in ripe:
            if parked.get(key) == at:  # else parked anew, or released, since
                self._recheck(key, now)

    def _recheck(self, key: str, now: float) -> None:
        """Keep ``key`` parked if still protected, else make it a candidate again. Lock held."""
        if self._breakers[key].protected(now):
            self._park(key, now)
        else:
            del self._parked[key]
            self._active[key] = self._breakers[key]

    def _park(self, key: str, now: float) -> None:
        """Take ``key``, found protected at ``now``, out of the candidates. Lock held."""
        self._active.pop(key, None)
        # Only an open breaker's protection ends by time alone; a breaker
        # forced open or disabled is freed by the notice of its reset. A time
        # already past (it changed meanwhile) means: look again next batch.
        at = self._breakers[key].next_transition_at()
        if at is None:
            at = _NEVER
        else:
            at = max(at, now)
            heapq.heappush(self._due, (at, key))
        self._parked[key] = at

    def _forget_marks(self, now: float) -> None:
        """Drop the marks older than every window but one, which still bounds older ticks."""
        times = self._mark_times
        horizon = now - self._max_window
        n = 0
        while n + 1 < len(times) and times[n + 1] < horizon:
            n += 1
        if n:
            del times[:n]
            del self._mark_ticks[:n]


def _watch(released: set[str], listener: StateListener | None) -> StateListener:
    """The ``on_state_change`` of every breaker of a registry.

    It notes the key of a breaker leaving a protected state, so the registry
    looks at a parked breaker again only when it may have been freed, then
    passes the change on to the registry's own listener. It holds the set, not
    the registry, so a breaker kept after its registry keeps nothing else alive.
    """

    def on_state_change(change: StateChange) -> object:
        if change.old in _PROTECTED_STATES:
            released.add(change.name)
        if listener is None:
            return None
        return listener(change)

    return on_state_change


def registry_from(
    registry: BreakerRegistry | None,
    config: BreakerConfig | None,
    rules: Mapping[str, BreakerConfig] | None,
    key: KeyFunc | None,
) -> BreakerRegistry:
    """Return ``registry``, or build one from ``config``, ``rules`` and ``key``.

    The integrations take either a ready registry (to share it) or the parts
    to build their own, never both.

    Raises:
        TypeError: ``registry`` together with any of the parts, or not a registry.
    """
    if registry is not None:
        if config is not None or rules is not None or key is not None:
            raise TypeError("pass either registry, or config/rules/key to build one, not both")
        if not isinstance(registry, BreakerRegistry):
            raise TypeError(f"registry must be a BreakerRegistry, got {registry!r}")
        return registry
    if key is None:
        return BreakerRegistry(config, rules=rules)
    return BreakerRegistry(config, rules=rules, key=key)
