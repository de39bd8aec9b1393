"""Real servers on loopback for the status page: uvicorn (ASGI) and wsgiref (WSGI).

Each server is given a socket already bound to 127.0.0.1 port 0 and
listening, so a client may connect as soon as the port is known: the kernel
queues the connection until the server accepts it, and no test waits for a
server to "be ready".
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from circuitbreaker_http.status import ASGIStatusApp, WSGIStatusApp


def mount_asgi(app: Any, prefix: str, *, keep_path: bool = True) -> Any:
    """A tiny router mounting ``app`` at ``prefix``, as Starlette's ``Mount`` does.

    ``keep_path=True`` keeps the full path in ``scope["path"]`` (Starlette
    since 0.33, uvicorn's ``root_path``); ``False`` strips it (older routers).
    """

    async def router(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await app(scope, receive, send)
        path = scope["path"]
        if path != prefix and not path.startswith(prefix + "/"):
            await send({"type": "http.response.start", "status": 404, "headers": []})
            await send({"type": "http.response.body", "body": b"outside the mount"})
            return
        child = dict(scope, root_path=scope.get("root_path", "") + prefix)
        if not keep_path:
            child["path"] = path[len(prefix) :]
        await app(child, receive, send)

    return router


def mount_wsgi(app: Any, prefix: str) -> Any:
    """A tiny dispatcher mounting ``app`` at ``prefix``: moves it from PATH_INFO to SCRIPT_NAME."""

    def dispatcher(environ: dict[str, Any], start_response: Any) -> Any:
        path = environ.get("PATH_INFO", "")
        if path != prefix and not path.startswith(prefix + "/"):
            start_response("404 Not Found", [("content-type", "text/plain")])
            return [b"outside the mount"]
        environ = dict(environ)
        environ["SCRIPT_NAME"] = environ.get("SCRIPT_NAME", "") + prefix
        environ["PATH_INFO"] = path[len(prefix) :]
        return app(environ, start_response)

    return dispatcher


def _listening() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    return sock


@contextmanager
def uvicorn_server(app: Any, *, root_path: str = "") -> Iterator[str]:
    """Serve ``app`` with uvicorn in a thread; yield its base URL."""
    import uvicorn

    sock = _listening()
    config = uvicorn.Config(
        app, log_level="warning", lifespan="on", root_path=root_path, access_log=False
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
        assert not thread.is_alive(), "uvicorn did not stop"


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


class _ThreadingWSGIServer(WSGIServer):
    # One thread per request, as production WSGI servers do: the browser's
    # refreshes and a test's own requests overlap.
    daemon_threads = True

    def process_request(self, request: Any, client_address: Any) -> None:
        thread = threading.Thread(
            target=self._serve_one, args=(request, client_address), daemon=True
        )
        thread.start()

    def _serve_one(self, request: Any, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)


@contextmanager
def wsgi_server(app: Any) -> Iterator[str]:
    """Serve ``app`` with wsgiref in a thread; yield its base URL."""
    server = _ThreadingWSGIServer(("127.0.0.1", 0), _Quiet)
    server.set_app(app)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        thread.join(10)
        server.server_close()


@contextmanager
def serve(app: ASGIStatusApp | WSGIStatusApp, prefix: str = "") -> Iterator[str]:
    """Serve a status app on loopback under ``prefix``; yield the page's URL (ending in ``/``)."""
    if isinstance(app, ASGIStatusApp):
        outer = mount_asgi(app, prefix) if prefix else app
        with uvicorn_server(outer) as base:
            yield f"{base}{prefix}/"
    else:
        outer = mount_wsgi(app, prefix) if prefix else app
        with wsgi_server(outer) as base:
            yield f"{base}{prefix}/"
