"""The status page mounted at /status in an ASGI app, served by uvicorn, operated by hand.

Run it as it is: ``python examples/status_page.py`` (needs httpx and uvicorn:
both are in the ``dev`` extra). It serves an app on loopback whose
``/status`` is :func:`circuitbreaker_http.status.asgi_app`, sends traffic to a
flaky upstream through the breakers, reads the page's JSON, forces a breaker
open and resets it with the token, the way ``circuitbreaker-http open --url``
does, and ends by itself in about a second.

In Starlette or FastAPI the mount is one line:
``app.mount("/status", asgi_app(registry, token=...))``
(or ``Mount("/status", app=...)`` in ``routes``); here a few lines of plain
ASGI do the same so that the example needs no framework.
"""

from __future__ import annotations

import secrets
import socket
import threading
from typing import Any
from urllib.parse import quote

import httpx
import uvicorn

from circuitbreaker_http import BreakerConfig, BreakerRegistry, CircuitOpenError
from circuitbreaker_http.httpx import CircuitBreakerTransport
from circuitbreaker_http.status import asgi_app
from circuitbreaker_http.testing import FlakyServer


def make_app(status: Any) -> Any:
    """The service: its own routes, and the status page mounted at /status."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        if scope["type"] == "http" and (path == "/status" or path.startswith("/status/")):
            # What a router's Mount does: the prefix moves to root_path, so the
            # page's relative links and fetches stay under /status/.
            await status(
                dict(scope, root_path=scope.get("root_path", "") + "/status"), receive, send
            )
            return
        if scope["type"] == "lifespan":
            await status(scope, receive, send)  # nothing to start: acknowledge it
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"the service itself\n"})

    return app


def main() -> None:
    token = secrets.token_urlsafe(16)  # in production: from your secret store
    registry = BreakerRegistry(BreakerConfig(consecutive_failures=3))
    status = asgi_app(registry, token=token)

    # Bound before uvicorn starts, so the client may connect at once.
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    server = uvicorn.Server(uvicorn.Config(make_app(status), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    service = f"http://127.0.0.1:{sock.getsockname()[1]}"

    try:
        with (
            FlakyServer() as upstream,
            httpx.Client(transport=CircuitBreakerTransport(registry=registry)) as through_breakers,
        ):
            upstream.set_mode("failing", status=503)  # the upstream fails: its breaker trips
            for _ in range(4):
                try:
                    through_breakers.get(f"{upstream.url}/api/users")
                except CircuitOpenError as exc:
                    print(f"short-circuited: {exc}")
            upstream.set_mode("healthy")

            with httpx.Client(base_url=service) as ops:
                bare = ops.get("/status")
                print(f"GET /status -> {bare.status_code}, to {bare.headers['location']}")
                page = ops.get("/status/")
                print(f"GET /status/ -> {page.status_code} {page.headers['content-type']}")
                for breaker in ops.get("/status/breakers").json()["breakers"]:
                    print(
                        f"  {breaker['name']}: {breaker['state']}, {breaker['failures']} of "
                        f"{breaker['calls']} calls failed, retry in {breaker['retry_after']:.0f} s"
                    )
                key = quote(upstream.url, safe="")  # the breaker's key: the upstream's origin
                refused = ops.post(f"/status/breakers/{key}/reset")
                print(
                    f"POST reset without the token -> {refused.status_code}: "
                    f"{refused.json()['error']}"
                )
                auth = {"Authorization": f"Bearer {token}"}
                done = ops.post(f"/status/breakers/{key}/reset", headers=auth).json()
                print(f"POST reset with the token -> {done['old']} -> {done['new']}")
                again = through_breakers.get(f"{upstream.url}/api/users")
                print(f"the upstream again, through its breaker: {again.status_code}")
                done = ops.post(f"/status/breakers/{key}/open", headers=auth).json()
                print(f"POST open -> {done['old']} -> {done['new']}")
                for change in ops.get("/status/breakers").json()["transitions"]:
                    print(f"  transition: {change['old']} -> {change['new']} ({change['reason']})")
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
        status.close()


if __name__ == "__main__":
    main()
