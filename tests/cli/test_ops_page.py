"""``status``, ``open``, ``disable``, ``reset`` against one process's status page (uvicorn)."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from circuitbreaker_http import BreakerRegistry, CircuitState
from circuitbreaker_http.cli import main
from circuitbreaker_http.status import asgi_app

uvicorn = pytest.importorskip("uvicorn")

TOKEN = "ops-token"
KEYS = ("https://api.example.com", "https://pay.example.com", "http://[::1]:8080")


@pytest.fixture
def registry() -> BreakerRegistry:
    registry = BreakerRegistry()
    for key in KEYS:
        registry.get(key).call(lambda: None)
    return registry


@pytest.fixture
def page(registry: BreakerRegistry) -> Iterator[str]:
    """The registry's status page under uvicorn on loopback, mounted at /ops; its URL."""
    app = asgi_app(registry, token=TOKEN)

    async def mounted(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            scope = dict(scope, root_path="/ops")
        await app(scope, receive, send)

    # Bound and listening before uvicorn starts: a client may connect at once.
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    server = uvicorn.Server(uvicorn.Config(mounted, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{sock.getsockname()[1]}/ops"
    server.should_exit = True
    thread.join(10)
    sock.close()
    app.close()


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_status_lists_every_breaker_open_ones_first(
    registry: BreakerRegistry, page: str, capsys: pytest.CaptureFixture[str]
) -> None:
    registry.get(KEYS[1]).force_open()
    code, out, err = run(capsys, "status", "--url", page)
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["KEY", "STATE", "CALLS"]
    assert lines[1].split()[:2] == [KEYS[1], "forced_open"]
    assert {line.split()[0] for line in lines[1:4]} == set(KEYS)
    assert lines[-1] == "3 breakers: 1 forced_open, 2 closed"


def test_status_json_and_match(page: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "status", "--url", page + "/", "--json", "--match", "https://*")
    assert code == 0
    rows = json.loads(out)["breakers"]
    assert [r["name"] for r in rows] == sorted(KEYS[:2])
    assert rows[0]["calls"] == 1 and rows[0]["state"] == "closed"
    assert "total_rejected" in rows[0]  # the page's own as_dict() rows
    code, out, _ = run(capsys, "status", "--url", page, "--json", "--match", "nothing*")
    assert (code, json.loads(out)) == (0, {"breakers": [], "transitions": []})


def test_status_json_has_the_pages_transitions_newest_first(
    registry: BreakerRegistry, page: str, capsys: pytest.CaptureFixture[str]
) -> None:
    registry.get(KEYS[0]).force_open()
    registry.get(KEYS[1]).force_open()
    registry.get(KEYS[0]).reset()
    code, out, _ = run(capsys, "status", "--url", page, "--json")
    assert code == 0
    moves = [(t["name"], t["old"], t["new"]) for t in json.loads(out)["transitions"]]
    assert moves == [
        (KEYS[0], "forced_open", "closed"),
        (KEYS[1], "closed", "forced_open"),
        (KEYS[0], "closed", "forced_open"),
    ]
    code, out, _ = run(capsys, "status", "--url", page, "--json", "--match", "*pay*")
    assert [t["name"] for t in json.loads(out)["transitions"]] == [KEYS[1]]


def test_open_one_key(
    registry: BreakerRegistry, page: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "open", KEYS[2], "--url", page, "--token", TOKEN)
    assert (code, err) == (0, "")
    assert out == f"{KEYS[2]}: closed -> forced_open\n"
    assert registry.get(KEYS[2]).state is CircuitState.FORCED_OPEN
    code, out, _ = run(capsys, "open", KEYS[2], "--url", page, "--token", TOKEN)
    assert (code, out) == (0, f"{KEYS[2]}: forced_open (unchanged)\n")
    code, out, _ = run(capsys, "disable", KEYS[2], "--url", page, "--token", TOKEN)
    assert (code, out) == (0, f"{KEYS[2]}: forced_open -> disabled\n")


def test_a_glob_needs_yes(
    registry: BreakerRegistry, page: str, capsys: pytest.CaptureFixture[str], monkeypatch: Any
) -> None:
    monkeypatch.setenv("CIRCUITBREAKER_HTTP_TOKEN", TOKEN)  # the token from the environment
    code, out, err = run(capsys, "open", "https://*", "--url", page)
    assert (code, out) == (2, "")
    assert "matches 2 breakers" in err and "--yes" in err and err.count("\n") == 1
    assert all(b.state is CircuitState.CLOSED for b in registry)
    code, out, err = run(capsys, "open", "https://*", "--url", page, "--yes")
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        f"{KEYS[0]}: closed -> forced_open",
        f"{KEYS[1]}: closed -> forced_open",
    ]
    code, out, _ = run(capsys, "reset", "*", "--url", page, "--yes")
    assert code == 0 and len(out.splitlines()) == 3
    assert all(b.state is CircuitState.CLOSED for b in registry)


def test_a_key_that_matches_nothing_is_an_error(
    registry: BreakerRegistry, page: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "reset", "https://nope.example", "--url", page, "--token", TOKEN)
    assert (code, out) == (1, "")
    assert err == "circuitbreaker-http reset: error: no breaker matches 'https://nope.example'\n"
    assert "https://nope.example" not in registry


def test_a_wrong_token_fails_and_changes_nothing(
    registry: BreakerRegistry, page: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "open", KEYS[0], "--url", page, "--token", "wrong")
    assert code == 1
    assert "403" in err and "token" in err and err.count("\n") == 1
    assert registry.get(KEYS[0]).state is CircuitState.CLOSED


def test_an_action_without_a_token_is_bad_usage(
    page: str, capsys: pytest.CaptureFixture[str], monkeypatch: Any
) -> None:
    monkeypatch.delenv("CIRCUITBREAKER_HTTP_TOKEN", raising=False)
    code, _, err = run(capsys, "open", KEYS[0], "--url", page)
    assert code == 2 and "--token" in err


def test_an_unreachable_page_is_one_line_and_status_1(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: connections are refused
        code, out, err = run(capsys, "status", "--url", f"http://127.0.0.1:{port}/")
    assert (code, out) == (1, "")
    assert err.startswith("circuitbreaker-http status: error: cannot reach the status page")
    assert err.count("\n") == 1


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["status", "--url", "http://x/", "--redis", "redis://x"], "not allowed with"),
        (["status"], "one of the arguments --redis --url is required"),
        (["status", "--url", "http://x/", "--prefix", "p"], "--prefix goes with --redis"),
        (["status", "--url", "http://x/", "--watch", "0"], "--watch"),
        (["status", "--url", "ftp://x/"], "http://"),
        (["open", "k", "--redis", "redis://127.0.0.1:1", "--token", "t"], "--token goes with"),
        (["open", "--url", "http://x/"], "KEY_OR_GLOB"),
    ],
)
def test_bad_usage_is_status_2(args: list[str], needle: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "circuitbreaker_http", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert needle in done.stderr
    assert "Traceback" not in done.stderr


def test_watch_prints_again_until_ctrl_c(registry: BreakerRegistry, page: str) -> None:
    child = subprocess.Popen(
        [sys.executable, "-m", "circuitbreaker_http", "status", "--url", page, "--watch", "0.2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    try:
        summaries = []
        for line in child.stdout:  # blocks on the child's own output: no sleep here
            if line.startswith("3 breakers"):
                summaries.append(line.strip())
                if len(summaries) == 1:
                    registry.get(KEYS[0]).force_open()
                if "forced_open" in line:
                    break
        child.send_signal(signal.SIGINT)
        _, err = child.communicate(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    assert summaries[0] == "3 breakers: 3 closed"
    assert summaries[-1] == "3 breakers: 1 forced_open, 2 closed"
    assert child.returncode == 0
    assert "Traceback" not in err
