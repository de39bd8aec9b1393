"""``BreakerRegistry``: one breaker per key, configured by pattern, bounded in size.

Lookups of an existing breaker take no lock (a dict read and a dict write,
each atomic); only creating a breaker takes the registry's lock. Past
``max_breakers`` the registry drops about the least recently used breakers in
a batch, so the cost of eviction is spread over many creations.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from threading import Lock

from . import _clock
from ._breaker import CircuitBreaker, StateListener
from ._core import BreakerConfig, BreakerSnapshot
from ._keys import KeyFunc, _encode_host, by_host, split_key

__all__ = ["BreakerRegistry", "Rule", "compile_rules", "registry_from"]



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
            recently used are dropped, except those forced open or disabled by
            hand and those whose open period has not ended.
        clock: The clock every breaker reads (``time.monotonic`` by default).
        on_state_change: Called with every breaker's :class:`StateChange`.

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
    ) -> None:
        if default is None:
            default = BreakerConfig()
        elif not isinstance(default, BreakerConfig):
            raise ValueError(f"default must be a BreakerConfig, got {default!r}")
        if not callable(key):
            raise ValueError(f"key must be by_host, by_route(...) or a callable, got {key!r}")
        if isinstance(max_breakers, bool) or not isinstance(max_breakers, int) or max_breakers < 1:
            raise ValueError(f"max_breakers must be an int >= 1, got {max_breakers!r}")
        self.default = default
        self.rules = compile_rules(rules)
        self.key = key
        self.max_breakers = max_breakers
        self._clock = clock
        self._on_state_change = on_state_change
        self._breakers: dict[str, CircuitBreaker] = {}
        # key -> tick of its last use: an approximate LRU that costs one dict
        # write per request and no lock (``next`` on a C counter is atomic).
        self._used: dict[str, int] = {}
        self._ticks = itertools.count()
        self._lock = Lock()

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
            self._breakers[key] = breaker
            self._used[key] = next(self._ticks)
            if len(self._breakers) > self.max_breakers:
                self._evict(keep=key)
            return breaker

    def _evict(self, keep: str) -> None:
        """Drop about the least recently used tenth of the breakers. Call with the lock held."""
        used = self._used
        now = self._clock()
        candidates = []
        for key, breaker in self._breakers.items():
            if key == keep or breaker.protected(now):
                continue
            candidates.append((used.get(key, -1), key))
        # Batches of a tenth keep eviction amortised O(log n) per creation.
        excess = len(self._breakers) - self.max_breakers
        target = max(excess, self.max_breakers // 10, 1)
        candidates.sort()
        breakers = self._breakers
        for _, key in candidates[:target]:
            del breakers[key]
        # Rebuilt from ``breakers`` (changed only under the lock), never by
        # iterating ``used``, which a lock-free get() may write to meanwhile;
        # a get() racing this may have re-marked a dropped key.
        self._used = {k: used.get(k, -1) for k in breakers}


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
