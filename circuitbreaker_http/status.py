"""A status page for one process's breakers, as an ASGI or a WSGI application.

``asgi_app(registry, token=None)`` and ``wsgi_app(registry, token=None)``
serve, under whatever path they are mounted at:

- ``GET /``: an HTML page (no asset from outside) listing every breaker's
  state, window counts and rates, time to retry and the recent transitions;
  it refreshes itself every 2 s from ``breakers``, a URL relative to the page,
  so it works under any mount prefix.
- ``GET /breakers``: ``{"breakers": [snapshot.as_dict(), ...], "transitions":
  [...]}``, the transitions newest first.
- ``GET /breakers/{key}``: one breaker (the key URL-encoded); 404 when the
  registry holds no such breaker, and looking never creates one.
- ``POST /breakers/{key}/open``, ``/disable``, ``/reset``: only with a
  ``token`` and a request carrying ``Authorization: Bearer <token>`` (403
  otherwise); 404 for an unknown key; GET on these paths is 405.

Both applications share one sans-I/O handler (:class:`StatusHandler`): ASGI
and WSGI differ only in how they read the request and write the answer.
Standard library only.
"""

from __future__ import annotations

import hmac
import json
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from ._breaker import CircuitBreaker
from ._core import CircuitState, StateChange, metrics_row
from ._registry import BreakerRegistry

__all__ = ["ASGIStatusApp", "Response", "StatusHandler", "WSGIStatusApp", "asgi_app", "wsgi_app"]

ACTIONS = ("open", "disable", "reset")
"""The manual actions, as the last segment of ``POST /breakers/{key}/<action>``."""

_MAX_TRANSITIONS = 200
_REASONS = {
    200: "OK",
    307: "Temporary Redirect",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
}
_JSON = "application/json"
_HALF_OPEN = CircuitState.HALF_OPEN
_DONE = {"open": "force_open", "disable": "disable", "reset": "reset"}


@dataclass(frozen=True, slots=True)
class Response:
    """What the handler answers: status, headers and the whole body.

    Attributes:
        status: The HTTP status code.
        headers: ``(name, value)`` pairs, names in lower case.
        body: The body (empty for HEAD).
    """

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes


def _json(status: int, value: Any) -> Response:
    body = json.dumps(value, separators=(",", ":")).encode()
    return _bytes(status, _JSON, body)


def _bytes(status: int, content_type: str, body: bytes, *extra: tuple[str, str]) -> Response:
    headers = (
        ("content-type", content_type),
        ("content-length", str(len(body))),
        # The page and its data are live: no cache in between may keep them.
        ("cache-control", "no-store"),
        *extra,
    )
    return Response(status, headers, body)


def _error(status: int, message: str, *extra: tuple[str, str]) -> Response:
    body = json.dumps({"error": message}).encode()
    return _bytes(status, _JSON, body, *extra)


class StatusHandler:
    """The sans-I/O heart of the status page: a request's parts in, a :class:`Response` out.

    It subscribes to the registry's :class:`StateChange` events to keep the
    latest transitions (a bounded ring); :meth:`close` unsubscribes.

    Args:
        registry: The registry whose breakers it shows.
        token: The bearer token that allows the POST actions; ``None`` makes
            the page read-only.
        max_transitions: How many recent transitions to keep.

    Raises:
        TypeError: ``registry`` is not a :class:`BreakerRegistry`, or ``token``
            is neither ``None`` nor a non-empty ``str``.
    """

    def __init__(
        self,
        registry: BreakerRegistry,
        *,
        token: str | None = None,
        max_transitions: int = _MAX_TRANSITIONS,
    ) -> None:
        if not isinstance(registry, BreakerRegistry):
            raise TypeError(f"registry must be a BreakerRegistry, got {registry!r}")
        if token is not None and (not isinstance(token, str) or not token):
            raise TypeError("token must be None or a non-empty str")
        self.registry = registry
        self._token = None if token is None else token.encode()
        self._transitions: deque[dict[str, Any]] = deque(maxlen=max_transitions)
        self._lock = threading.Lock()
        # name -> (breaker, metrics row, JSON fragment). A breaker whose row is
        # unchanged since the fragment was encoded needs no new snapshot: equal
        # rows mean nothing a snapshot shows moved (apart from its ``at``, which
        # then truthfully says when that view was taken). This keeps a refresh
        # of 10,000 mostly idle breakers within the 200 ms budget.
        self._cache: dict[str, tuple[CircuitBreaker, tuple[Any, ...], bytes]] = {}
        self._unsubscribe = registry.subscribe(self._on_change, StateChange)

    def close(self) -> None:
        """Stop following the registry's transitions."""
        self._unsubscribe()

    def _on_change(self, change: StateChange) -> None:
        item = {
            "name": change.name,
            "old": change.old.value,
            "new": change.new.value,
            "reason": change.reason,
            "at": change.at,
            # The event's ``at`` is the breakers' clock (monotonic): the wall
            # time lets the page say "12 s ago" and an operator match logs.
            "time": time.time(),
        }
        with self._lock:
            self._transitions.append(item)

    # -- routing -----------------------------------------------------------------

    def handle(
        self,
        method: str,
        path: str,
        *,
        segments: list[str] | None = None,
        authorization: str | None = None,
        prefix: str = "",
    ) -> Response:
        """Answer one request.

        Args:
            method: The HTTP method, upper case.
            path: The path below the mount point, percent-decoded (``""`` for
                the mount point itself, else starting with ``/``).
            segments: The same path split on ``/`` *before* decoding (each
                segment decoded), when the server passed the raw path: then a
                key holding ``/`` (every URL key does) is read exactly.
            authorization: The ``Authorization`` header, if any.
            prefix: The mount point (ASGI ``root_path``, WSGI ``SCRIPT_NAME``),
                for the redirect from the bare mount point to the page.

        Returns:
            The response; its body is empty for HEAD.
        """
        response = self._route(method, path, segments, authorization, prefix)
        if method == "HEAD":
            return Response(response.status, response.headers, b"")
        return response

    def _route(
        self,
        method: str,
        path: str,
        segments: list[str] | None,
        authorization: str | None,
        prefix: str,
    ) -> Response:
        reading = method in ("GET", "HEAD")
        if path == "":
            # The page fetches URLs relative to itself: it must end with a slash.
            return _bytes(307, "text/plain", b"", ("location", prefix + "/"))
        if path == "/":
            if not reading:
                return _error(405, f"{method} is not allowed here", ("allow", "GET, HEAD"))
            return _bytes(200, "text/html; charset=utf-8", PAGE)
        if path in ("/breakers", "/breakers/"):
            if not reading:
                return _error(405, f"{method} is not allowed here", ("allow", "GET, HEAD"))
            return _bytes(200, _JSON, self.breakers_json())
        if not path.startswith("/breakers/"):
            return _error(404, f"no such page: {path}")
        key, action = self._key_and_action(path, segments)
        if action is None:
            if not reading:
                return _error(405, f"{method} is not allowed here", ("allow", "GET, HEAD"))
            if key not in self.registry:
                return _error(404, f"no breaker {key!r}")
            return _json(200, self.registry.get(key).snapshot().as_dict())
        if method != "POST":
            # Never change anything on GET: a link or a prefetch must not open a circuit.
            return _error(405, f"{method} is not allowed on an action; use POST", ("allow", "POST"))
        if self._token is None:
            return _error(403, "this status page is read-only: it was started without a token")
        if not self._authorized(authorization):
            return _error(403, "missing or wrong bearer token")
        if key not in self.registry:
            # Never registry.get() here: a mistyped key must not create a breaker.
            return _error(404, f"no breaker {key!r}")
        breaker = self.registry.get(key)
        old = breaker.state
        getattr(breaker, _DONE[action])()
        snap = breaker.snapshot()
        return _json(
            200,
            {
                "action": action,
                "old": old.value,
                "new": snap.state.value,
                "breaker": snap.as_dict(),
            },
        )

    def _key_and_action(self, path: str, segments: list[str] | None) -> tuple[str, str | None]:
        if segments is not None and len(segments) >= 3:
            # ["", "breakers", <key>, (<action>)]: a key's own "/" came as %2F.
            if len(segments) == 3:
                return segments[2], None
            if len(segments) == 4 and segments[3] in ACTIONS:
                return segments[2], segments[3]
            # Unencoded slashes: fall through to reading the decoded path.
        rest = path[len("/breakers/") :]
        head, _, last = rest.rpartition("/")
        if head and last in ACTIONS and rest not in self.registry:
            return head, last
        return rest, None

    def _authorized(self, authorization: str | None) -> bool:
        assert self._token is not None
        if authorization is None:
            return False
        scheme, _, given = authorization.partition(" ")
        if scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(given.strip().encode(), self._token)

    # -- the data ----------------------------------------------------------------

    def transitions(self) -> list[dict[str, Any]]:
        """The recent transitions as dicts, newest first."""
        with self._lock:
            items = list(self._transitions)
        items.reverse()
        return items

    def breakers_json(self) -> bytes:
        """The body of ``GET /breakers``: every breaker's ``as_dict()`` and the transitions."""
        old = self._cache
        new: dict[str, tuple[CircuitBreaker, tuple[Any, ...], bytes]] = {}
        parts: list[bytes] = []
        dumps = json.JSONEncoder(separators=(",", ":"), check_circular=False).encode
        for breaker in self.registry:
            name = breaker.name
            hit = old.get(name)
            entry = None
            if hit is not None and hit[0] is breaker:
                row = tuple(breaker.metrics())
                # Half-open: the trials in flight are not in the row.
                if row == hit[1] and row[0] is not _HALF_OPEN:
                    entry = hit
            if entry is None:
                snap = breaker.snapshot()
                entry = (breaker, metrics_row(snap), dumps(snap.as_dict()).encode())
            new[name] = entry
            parts.append(entry[2])
        self._cache = new  # one assignment: concurrent requests each see a whole cache
        transitions = json.dumps(self.transitions(), separators=(",", ":")).encode()
        return b'{"breakers":[' + b",".join(parts) + b'],"transitions":' + transitions + b"}"


def _raw_segments(raw: str | None, full: str, prefix: str) -> list[str] | None:
    """Split the raw path below the mount point into decoded segments, when it is trustworthy.

    ``raw`` is the path as sent (percent-encoded); ``full`` the decoded path
    including ``prefix``. The raw path may or may not include the prefix (a
    proxy may have stripped it); anything else is not used.
    """
    if raw is None:
        return None
    raw = raw.split("?", 1)[0]
    parts = raw.split("/")
    decoded = unquote(raw, errors="surrogateescape")
    if prefix and decoded == full:
        parts = ["", *parts[len(prefix.split("/")) :]]
    elif decoded != full[len(prefix) :] and decoded != full:
        return None
    return [unquote(part, errors="surrogateescape") for part in parts]


def _below(path: str, prefix: str) -> str:
    if prefix and path.startswith(prefix):
        return path[len(prefix) :]
    return path


Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class ASGIStatusApp:
    """The status page as an ASGI 3 application (see :func:`asgi_app`).

    Attributes:
        handler: The shared :class:`StatusHandler`.
    """

    def __init__(self, handler: StatusHandler) -> None:
        self.handler = handler

    def close(self) -> None:
        """Stop following the registry's transitions."""
        self.handler.close()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one ASGI connection scope (``http``; ``lifespan`` is acknowledged)."""
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            raise ValueError(f"the status page serves HTTP, not {scope['type']!r}")
        prefix = str(scope.get("root_path", "")).rstrip("/")
        full = str(scope["path"])
        # ASGI servers and routers differ on whether ``path`` includes root_path.
        path = _below(full, prefix)
        if not full.startswith(prefix):
            full = prefix + full
        raw = scope.get("raw_path")
        segments = _raw_segments(raw.decode("latin-1") if raw else None, full, prefix)
        authorization = None
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                authorization = value.decode("latin-1")
        response = self.handler.handle(
            str(scope["method"]).upper(),
            path,
            segments=segments,
            authorization=authorization,
            prefix=prefix,
        )
        await send(
            {
                "type": "http.response.start",
                "status": response.status,
                "headers": [(n.encode(), v.encode("latin-1")) for n, v in response.headers],
            }
        )
        await send({"type": "http.response.body", "body": response.body})


StartResponse = Callable[..., Any]


class WSGIStatusApp:
    """The status page as a WSGI application (see :func:`wsgi_app`).

    Attributes:
        handler: The shared :class:`StatusHandler`.
    """

    def __init__(self, handler: StatusHandler) -> None:
        self.handler = handler

    def close(self) -> None:
        """Stop following the registry's transitions."""
        self.handler.close()

    def __call__(
        self, environ: Mapping[str, Any], start_response: StartResponse
    ) -> Iterable[bytes]:
        """Serve one WSGI request."""

        # PEP 3333: the CGI variables are str holding latin-1 bytes; URLs are UTF-8.
        def text(name: str) -> str:
            value = str(environ.get(name, ""))
            return value.encode("latin-1").decode("utf-8", "surrogateescape")

        prefix = text("SCRIPT_NAME").rstrip("/")
        path = text("PATH_INFO")
        # waitress and gunicorn pass the raw request line's path; wsgiref does not.
        raw = environ.get("RAW_URI") or environ.get("REQUEST_URI")
        segments = _raw_segments(str(raw) if raw else None, prefix + path, prefix)
        auth = environ.get("HTTP_AUTHORIZATION")
        response = self.handler.handle(
            str(environ.get("REQUEST_METHOD", "GET")).upper(),
            path,
            segments=segments,
            authorization=None if auth is None else str(auth),
            prefix=prefix,
        )
        status = f"{response.status} {_REASONS.get(response.status, '')}".rstrip()
        start_response(status, list(response.headers))
        return [response.body]


def asgi_app(registry: BreakerRegistry, *, token: str | None = None) -> ASGIStatusApp:
    """The status page of ``registry`` as an ASGI application.

    Mount it anywhere (Starlette ``Mount("/status", app)``, FastAPI
    ``app.mount(...)``, or serve it alone); it follows ``root_path``.

    Args:
        registry: The registry whose breakers it shows.
        token: The bearer token that allows ``POST`` actions; ``None`` (the
            default) serves a read-only page.

    Returns:
        The application; its ``close()`` stops following the registry's transitions.

    Raises:
        TypeError: a bad ``registry`` or ``token``.
    """
    return ASGIStatusApp(StatusHandler(registry, token=token))


def wsgi_app(registry: BreakerRegistry, *, token: str | None = None) -> WSGIStatusApp:
    """The status page of ``registry`` as a WSGI application.

    Mount it anywhere (a dispatcher setting ``SCRIPT_NAME``, such as
    Werkzeug's ``DispatcherMiddleware``); it follows ``SCRIPT_NAME``.

    Args:
        registry: The registry whose breakers it shows.
        token: The bearer token that allows ``POST`` actions; ``None`` (the
            default) serves a read-only page.

    Returns:
        The application; its ``close()`` stops following the registry's transitions.

    Raises:
        TypeError: a bad ``registry`` or ``token``.
    """
    return WSGIStatusApp(StatusHandler(registry, token=token))


# The page: one file, no asset from outside. It fetches "breakers" relative to
# itself (so any mount prefix works), never overlaps two fetches, renders rows
# as one string (fast for 10,000), and escapes every key: keys come from the
# requests the process made, so they are not trusted as HTML.
PAGE = b"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>circuit breakers</title>
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}
header{padding:10px 16px;background:#1d2330;color:#fff;display:flex;gap:16px;align-items:center;
flex-wrap:wrap}
header h1{font-size:16px;margin:0}
#summary span{margin-right:10px}
#updated{margin-left:auto;opacity:.8}
#updated.stale{color:#ffb3b3;opacity:1}
main{padding:12px 16px}
.bar{display:flex;gap:12px;align-items:center;margin-bottom:8px}
#filter{font:inherit;padding:5px 8px;width:28em;max-width:100%}
table{border-collapse:collapse;width:100%;background:#fff}
th,td{padding:3px 8px;border-bottom:1px solid #e3e6ea;text-align:right;white-space:nowrap}
th{position:sticky;top:0;background:#eef0f3}
td.name,th.name{text-align:left;white-space:normal;word-break:break-all}
td.state{text-align:left}
.s{display:inline-block;padding:0 6px;border-radius:3px;font-size:12px;color:#fff}
.closed{background:#2e7d32}.open{background:#c62828}.half_open{background:#ef6c00}
.forced_open{background:#6a1b9a}.disabled{background:#607d8b}
#transitions{font-size:13px;margin-top:16px}
#transitions li{white-space:nowrap;overflow:hidden;text-overflow:ellipsis}
#more{color:#666;padding:6px 0;min-height:1px}
#all{color:#1565c0;cursor:pointer;text-decoration:underline}
</style></head><body>
<header><h1>circuit breakers</h1><div id="summary"></div><div id="updated">loading...</div></header>
<main>
<div class="bar"><input id="filter" type="search" placeholder="filter: part of a key or a state"
 autofocus><label><input id="problems" type="checkbox"> not closed only</label>
<span id="count"></span></div>
<table><thead><tr><th class="name">breaker</th><th>state</th><th>calls</th><th>failures</th>
<th>failure rate</th><th>slow</th><th>slow rate</th><th>retry in</th><th>last failure</th>
<th>rejected</th></tr></thead><tbody id="rows"></tbody></table>
<div id="more"></div>
<h2 style="font-size:15px">recent transitions</h2><ol id="transitions"></ol>
</main>
<script>
"use strict";
var data = {breakers: [], transitions: []}, fetchedAt = 0, failures = 0;
var ORDER = {open: 0, forced_open: 1, half_open: 2, disabled: 3, closed: 4};
window.__cbh = {renders: 0, lastRenderMs: 0, firstRenderAt: 0};
function esc(s) {
  return String(s).replace(/[&<>"']/g, function (c) {
    return {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c];
  });
}
function pct(x) { return x === null || x === undefined ? "" : (100 * x).toFixed(1) + " %"; }
function secs(x) {
  if (x === null || x === undefined) return "";
  x = Math.max(0, x - (Date.now() - fetchedAt) / 1000);
  return x < 100 ? x.toFixed(1) + " s" : Math.round(x) + " s";
}
function ago(t) {
  var s = Math.max(0, Date.now() / 1000 - t);
  return s < 60 ? Math.round(s) + " s ago" : s < 3600 ? Math.round(s / 60) + " min ago"
    : Math.round(s / 3600) + " h ago";
}
var CHUNK = 500, drawn = 0, shown = [];
function row(b) {
  return '<tr data-name="' + esc(b.name) + '"><td class="name">' + esc(b.name) +
    '</td><td class="state"><span class="s ' + esc(b.state) + '">' + esc(b.state) +
    "</span></td><td>" + b.calls + "</td><td>" + b.failures + "</td><td>" +
    pct(b.failure_rate) + "</td><td>" + b.slow_calls + "</td><td>" + pct(b.slow_call_rate) +
    '</td><td class="retry">' + secs(b.retry_after) + "</td><td>" +
    esc(b.last_failure === null ? "" : b.last_failure) + "</td><td>" + b.total_rejected +
    "</td></tr>";
}
function more() {
  var html = [], end = Math.min(shown.length, drawn + CHUNK), i;
  for (i = drawn; i < end; i++) html.push(row(shown[i]));
  document.getElementById("rows").insertAdjacentHTML("beforeend", html.join(""));
  drawn = end;
  var left = shown.length - drawn;
  document.getElementById("more").innerHTML = left > 0 ? left +
    ' more below: scroll, narrow the filter, or <a id="all" role="button">draw all</a>' : "";
}
function render(keep) {
  var t0 = performance.now();
  var words = document.getElementById("filter").value.trim().toLowerCase().split(/\\s+/)
    .filter(Boolean);
  var problems = document.getElementById("problems").checked;
  var counts = {}, b, i, j, hay, ok, want = keep ? Math.max(drawn, CHUNK) : CHUNK;
  shown = [];
  for (i = 0; i < data.breakers.length; i++) {
    b = data.breakers[i];
    counts[b.state] = (counts[b.state] || 0) + 1;
    if (problems && b.state === "closed") continue;
    hay = (b.name + " " + b.state).toLowerCase();
    ok = true;
    for (j = 0; j < words.length; j++) if (hay.indexOf(words[j]) < 0) { ok = false; break; }
    if (ok) shown.push(b);
  }
  shown.sort(function (a, c) {
    return (ORDER[a.state] - ORDER[c.state]) || (a.name < c.name ? -1 : a.name > c.name ? 1 : 0);
  });
  // Rows are drawn 500 at a time as the table scrolls into view: a refresh of
  // 10,000 breakers then costs what the screen shows, not the whole fleet.
  document.getElementById("rows").textContent = "";
  drawn = 0;
  while (drawn < Math.min(want, shown.length)) more();
  if (!shown.length) document.getElementById("more").textContent = "";
  document.getElementById("count").textContent =
    shown.length + " of " + data.breakers.length + " shown";
  var sum = [];
  for (var s in ORDER) if (counts[s]) sum.push('<span><span class="s ' + s + '">' + s +
    "</span> " + counts[s] + "</span>");
  document.getElementById("summary").innerHTML = sum.join("");
  var tr = [];
  for (i = 0; i < data.transitions.length && i < 50; i++) {
    var e = data.transitions[i];
    tr.push("<li>" + ago(e.time) + ": <b>" + esc(e.name) + "</b> " + esc(e.old) + " &rarr; " +
      esc(e.new) + " (" + esc(e.reason) + ")</li>");
  }
  document.getElementById("transitions").innerHTML = tr.join("") || "<li>none yet</li>";
  var c = window.__cbh;
  c.renders++; c.lastRenderMs = performance.now() - t0;
  if (!c.firstRenderAt && fetchedAt) c.firstRenderAt = performance.now();
}
function drawAll() {
  var t0 = performance.now();
  while (drawn < shown.length) more();
  window.__cbh.lastRenderMs = performance.now() - t0;
}
document.getElementById("more").addEventListener("click", function (ev) {
  if (ev.target.id === "all") drawAll();
});
new IntersectionObserver(function (seen) {
  if (seen[0].isIntersecting && drawn < shown.length) more();
}, {rootMargin: "400px"}).observe(document.getElementById("more"));
function refresh() {
  fetch("breakers", {cache: "no-store", headers: {accept: "application/json"}})
    .then(function (r) { if (!r.ok) throw new Error("HTTP " + r.status); return r.json(); })
    .then(function (d) {
      data = d; fetchedAt = Date.now(); failures = 0;
      var u = document.getElementById("updated");
      u.className = ""; u.textContent = "updated " + new Date().toLocaleTimeString();
      render(true);
    })
    .catch(function (err) {
      failures++;
      var u = document.getElementById("updated");
      u.className = "stale";
      u.textContent = "stale: " + failures + " refresh(es) failed (" + err.message + ")";
    })
    .then(function () { setTimeout(refresh, 2000); });
}
var timer = null;
function later() { clearTimeout(timer); timer = setTimeout(render, 60); }
document.getElementById("filter").addEventListener("input", later);
document.getElementById("problems").addEventListener("change", render);
refresh();
</script></body></html>
"""
