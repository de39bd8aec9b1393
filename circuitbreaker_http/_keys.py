"""Breaker keys: which breaker a request goes through.

A key names what a breaker protects. ``by_host`` (the default) keys by origin,
``by_route(...)`` by origin plus a path template, and any callable
``(method, url) -> str | None`` may stand in for either (``None``: bypass).

The integrations already hold a parsed URL, so the built-in keys also take
the parts (:meth:`HostKey.from_parts`): keying a request never reparses its
URL, and origins are cached in a small bounded dict.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Protocol
from urllib.parse import urlsplit

__all__ = [
    "DEFAULT_PORTS",
    "GuardedKey",
    "HostKey",
    "KeyFunc",
    "RouteKey",
    "by_host",
    "by_route",
    "origin",
    "split_key",
]

DEFAULT_PORTS: dict[str, int] = {"http": 80, "https": 443, "ws": 80, "wss": 443}

KeyFunc = Callable[[str, str], "str | None"]
"""``(method, url) -> key``; ``None`` means the request bypasses the breakers."""

_ORIGIN_CACHE_MAX = 4096

logger = logging.getLogger("circuitbreaker_http")


class GuardedKey:
    """A user's key function, called so that it never fails a request.

    A key function that raises, or returns something that is neither a
    ``str`` nor ``None``, makes the request bypass the breakers, as ``None``
    would. That is logged at ERROR on the 1st, 10th, 100th, ... such failure,
    so a broken key function is seen without flooding the log (and without
    reading a clock).
    """

    __slots__ = ("failures", "key")

    def __init__(self, key: KeyFunc) -> None:
        # Typed as what it may return in fact, not as what it should.
        self.key: Callable[[str, str], object] = key
        self.failures = 0

    def __repr__(self) -> str:
        return f"GuardedKey({self.key!r})"

    def __call__(self, method: str, url: str) -> str | None:
        try:
            found = self.key(method, url)
        except Exception:
            self._failed("raised", True)
            return None
        if found is None or isinstance(found, str):
            return found
        self._failed(f"returned {found!r}, not a str or None", False)
        return None

    def _failed(self, what: str, with_traceback: bool) -> None:
        self.failures = failures = self.failures + 1
        if failures == 10 ** (len(str(failures)) - 1):  # 1, 10, 100, ...
            logger.error(
                "the key function %r %s: the request bypasses the breakers "
                "(failure %d; logged at the 1st, 10th, 100th, ...)",
                self.key,
                what,
                failures,
                exc_info=with_traceback,
            )


class PartsKey(Protocol):
    """A key function that can also work from an already parsed URL."""

    def __call__(self, method: str, url: str) -> str | None: ...

    def from_parts(
        self, method: str, scheme: str, host: str, port: int | None, path: str
    ) -> str | None: ...


def _encode_host(host: str) -> str:
    """Return ``host`` as clients send it: lower case, IDNA (UTS-46) for non-ASCII labels."""
    if host.isascii():
        return host.lower()
    try:
        import idna  # installed with httpx and requests; the stdlib codec is IDNA 2003

        return idna.encode(host, uts46=True).decode("ascii")
    except ImportError:  # pragma: no cover - only without either client installed
        return host.encode("idna").decode("ascii").lower()
    except Exception:
        # An odd host never fails a request: key it as it came.
        return host.lower()


def origin(scheme: str, host: str, port: int | None) -> str:
    """Return the origin key ``scheme://host[:port]``.

    ``host`` must already be encoded as sent (ASCII); it is lower-cased, put in
    brackets when it is an IPv6 address, and the port is dropped when it is the
    scheme's default.
    """
    scheme = scheme.lower()
    host = host.lower()
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    if port is None or DEFAULT_PORTS.get(scheme) == port:
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


def _parse(url: str) -> tuple[str, str, int | None, str]:
    parts = urlsplit(url)
    host = parts.hostname or ""
    try:
        port = parts.port
    except ValueError:
        port = None
    return parts.scheme, _encode_host(host), port, parts.path


class HostKey:
    """Key a request by its origin: ``scheme://host[:port]`` (the default key).

    Example keys: ``https://api.example.com``, ``http://127.0.0.1:8080``,
    ``http://[::1]:8080``.
    """

    __slots__ = ("_cache",)

    def __init__(self) -> None:
        self._cache: dict[tuple[str, str, int | None], str] = {}

    def __repr__(self) -> str:
        return "by_host"

    def __call__(self, method: str, url: str) -> str | None:
        """Return the origin key of ``url``; ``None`` (no breaker) if unreadable or hostless."""
        try:
            scheme, host, port, _ = _parse(url)
        except ValueError:
            return None
        return self.from_parts(method, scheme, host, port, "")

    def from_parts(
        self, method: str, scheme: str, host: str, port: int | None, path: str
    ) -> str | None:
        """Return the origin key from URL parts (``host`` already encoded as sent).

        A URL without a scheme or a host (``http:///path``, ``file:///x``,
        ``mailto:a@b``, ``""``) gets ``None``, no breaker: otherwise every such
        request would share one stray breaker keyed ``"://"``.
        """
        if not host or not scheme:
            return None
        cache = self._cache
        parts = (scheme, host, port)
        key = cache.get(parts)
        if key is None:
            key = origin(scheme, host, port)
            if len(cache) >= _ORIGIN_CACHE_MAX:
                cache.clear()  # rotating hosts must not grow memory
            cache[parts] = key
        return key


by_host = HostKey()
"""Key each request by its origin, ``scheme://host[:port]``."""

_PARAM = re.compile(r"^\{[^/{}]+\}$")
_BAD_LITERAL = re.compile(r"[{}?#]")


class RouteKey:
    """Key a request by its origin and the most specific matching path template.

    Built by :func:`by_route`. A path matching no template falls back to the
    origin key, so raw paths never become keys.
    """

    __slots__ = ("_cache", "_host", "_regex", "_templates_by_group", "templates")

    def __init__(self, templates: tuple[str, ...]) -> None:
        if not templates:
            raise ValueError("by_route needs at least one path template")
        self.templates = templates
        self._host = HostKey()
        ranked: list[tuple[int, int, tuple[str | None, ...], str]] = []
        for order, template in enumerate(templates):
            if not isinstance(template, str) or not template.startswith("/"):
                raise ValueError(f"by_route: a template must start with '/', got {template!r}")
            segments = _segments(template)
            for segment in segments:
                if _BAD_LITERAL.search(segment) and not _PARAM.match(segment):
                    # It would be taken literally and silently never match.
                    raise ValueError(
                        f"by_route: bad segment {segment!r} in template {template!r}: "
                        "a parameter is a whole segment such as '{id}', and a "
                        "template has no query or fragment"
                    )
            pattern = tuple(None if _PARAM.match(s) else s for s in segments)
            literal = sum(s is not None for s in pattern)
            ranked.append((-literal, order, pattern, template))
        # One anchored alternation, most literal segments first, then the order
        # listed: the regex engine tries alternatives in that order.
        ranked.sort(key=lambda entry: (entry[0], entry[1]))
        alternatives = [
            "(" + "/".join("[^/]+" if s is None else re.escape(s) for s in pattern) + ")"
            for _, _, pattern, _ in ranked
        ]
        self._regex = re.compile("|".join(alternatives))
        self._templates_by_group = [template for _, _, _, template in ranked]
        # Paths seen recently -> template: bounded, so rotating paths cost
        # only a regex match each, never memory.
        self._cache: dict[str, str | None] = {}

    def __repr__(self) -> str:
        return f"by_route{self.templates!r}"

    def match(self, path: str) -> str | None:
        """Return the most specific template matching ``path``, or ``None``."""
        cache = self._cache
        try:
            return cache[path]
        except KeyError:
            pass
        found = self._regex.fullmatch(path.strip("/"))
        template = None if found is None else self._templates_by_group[found.lastindex - 1]  # type: ignore[operator]
        if len(cache) >= _ORIGIN_CACHE_MAX:
            cache.clear()
        cache[path] = template
        return template

    def __call__(self, method: str, url: str) -> str | None:
        """Return the route key of ``url``; ``None`` (no breaker) if unreadable or hostless."""
        try:
            scheme, host, port, path = _parse(url)
        except ValueError:
            return None
        return self.from_parts(method, scheme, host, port, path)

    def from_parts(
        self, method: str, scheme: str, host: str, port: int | None, path: str
    ) -> str | None:
        """Return the route key from URL parts (``host`` already encoded as sent).

        A URL without a scheme or a host gets ``None``, as with :data:`by_host`.
        """
        base = self._host.from_parts(method, scheme, host, port, path)
        if base is None:
            return None
        template = self.match(path)
        return base if template is None else base + template


def _segments(path: str) -> tuple[str, ...]:
    path = path.strip("/")
    return tuple(path.split("/")) if path else ()


def by_route(*templates: str) -> RouteKey:
    """Key requests by origin plus the most specific matching path template.

    ``{name}`` matches one path segment; the template with the most literal
    segments wins, then the first listed; a path matching none falls back to
    the origin key. A trailing slash is ignored.

    Example:
        ``by_route("/users/{id}", "/users/me", "/orders/{id}/items")`` keys
        ``GET http://127.0.0.1:8080/users/42`` as
        ``http://127.0.0.1:8080/users/{id}``.

    Raises:
        ValueError: no template, one not starting with ``/``, or a segment that
            mixes a ``{name}`` with other text (or holds ``?`` or ``#``).
    """
    return RouteKey(templates)


def _is_port(text: str) -> bool:
    # ASCII only: str.isdigit() accepts digits such as "²" that int() rejects.
    return text.isascii() and text.isdigit()


def split_key(key: str) -> tuple[str, str, int | None, str] | None:
    """Split a URL-shaped key into ``(scheme, host, effective port, path)``, else ``None``."""
    scheme, sep, rest = key.partition("://")
    if not sep or not scheme:
        return None
    slash = rest.find("/")
    hostport, path = (rest, "") if slash < 0 else (rest[:slash], rest[slash:])
    port: int | None = None
    if hostport.startswith("["):
        end = hostport.find("]")
        if end < 0:
            return None
        host, tail = hostport[: end + 1], hostport[end + 1 :]
        if tail.startswith(":") and _is_port(tail[1:]):
            port = int(tail[1:])
        elif tail:
            return None
    else:
        host, colon, port_text = hostport.partition(":")
        if colon:
            if not _is_port(port_text):
                return None
            port = int(port_text)
    if not host:
        return None
    if port is None:
        port = DEFAULT_PORTS.get(scheme.lower())
    return scheme.lower(), host.lower(), port, path
