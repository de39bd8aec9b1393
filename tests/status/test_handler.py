"""The sans-I/O handler and the WSGI/ASGI shells without a server: raw paths, prefixes, HEAD."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from circuitbreaker_http import BreakerRegistry
from circuitbreaker_http.status import StatusHandler, asgi_app, wsgi_app

ROUTE = "http://h.example/v1/{id}/open"  # a route key that ends like an action
OTHER = "http://h.example/v1/{id}"


def registry() -> BreakerRegistry:
    registry = BreakerRegistry()
    registry.get(ROUTE)
    registry.get(OTHER)
    return registry


def call_wsgi(app: Any, environ: dict[str, Any]) -> tuple[str, dict[str, str], bytes]:
    seen: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]]) -> None:
        seen["status"], seen["headers"] = status, dict(headers)

    body = b"".join(app(environ, start_response))
    return seen["status"], seen["headers"], body


def test_wsgi_with_a_raw_uri_reads_encoded_slashes_exactly() -> None:
    app = wsgi_app(registry(), token="t")
    try:
        # As waitress or gunicorn pass it: PATH_INFO decoded, the raw URI as sent.
        encoded = "http%3A%2F%2Fh.example%2Fv1%2F%7Bid%7D"
        environ = {
            "REQUEST_METHOD": "GET",
            "SCRIPT_NAME": "/ops",
            "PATH_INFO": "/breakers/http://h.example/v1/{id}/open",
            "REQUEST_URI": f"/ops/breakers/{encoded}/open?x=1",
        }
        status, headers, _ = call_wsgi(app, environ)
        assert status == "405 Method Not Allowed"  # GET on OTHER's action, not ROUTE itself
        assert headers["allow"] == "POST"
        environ["REQUEST_URI"] = f"/ops/breakers/{encoded}%2Fopen"
        status, _, body = call_wsgi(app, environ)
        assert status == "200 OK"
        assert json.loads(body)["name"] == ROUTE
    finally:
        app.close()


def test_asgi_raw_path_with_and_without_the_prefix() -> None:
    app = asgi_app(registry())
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    encoded = b"http%3A%2F%2Fh.example%2Fv1%2F%7Bid%7D%2Fopen"
    scopes = [
        # Starlette's Mount: path and raw_path keep the prefix.
        {"path": "/ops/breakers/" + ROUTE, "raw_path": b"/ops/breakers/" + encoded},
        # uvicorn --root-path behind a proxy that strips it: raw_path does not.
        {"path": "/ops/breakers/" + ROUTE, "raw_path": b"/breakers/" + encoded},
    ]
    try:
        for extra in scopes:
            sent.clear()
            scope = {"type": "http", "method": "GET", "root_path": "/ops", "headers": [], **extra}
            asyncio.run(app(scope, receive, send))
            assert sent[0]["status"] == 200, sent
            assert json.loads(sent[1]["body"])["name"] == ROUTE
    finally:
        app.close()


def test_head_answers_headers_only_and_unknown_pages_are_404() -> None:
    handler = StatusHandler(registry())
    try:
        head = handler.handle("HEAD", "/breakers")
        assert head.status == 200 and head.body == b""
        assert dict(head.headers)["content-length"] != "0"
        missing = handler.handle("GET", "/nothing")
        assert missing.status == 404 and json.loads(missing.body)["error"]
    finally:
        handler.close()


def test_transitions_are_bounded_and_close_stops_following() -> None:
    reg = BreakerRegistry()
    handler = StatusHandler(reg, max_transitions=3)
    breaker = reg.get("k")
    for _ in range(3):
        breaker.force_open()
        breaker.reset()
    assert [t["reason"] for t in handler.transitions()] == ["reset", "force_open", "reset"]
    handler.close()
    breaker.force_open()
    assert handler.transitions()[0]["reason"] == "reset"
