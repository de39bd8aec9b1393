"""The status page's endpoints over real servers on loopback: uvicorn (ASGI) and wsgiref (WSGI)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any
from urllib.parse import quote

import pytest

from circuitbreaker_http import BreakerConfig, BreakerRegistry, CircuitState
from circuitbreaker_http.status import asgi_app, wsgi_app

from .servers import mount_asgi, serve, uvicorn_server

httpx = pytest.importorskip("httpx")
pytest.importorskip("uvicorn")

TOKEN = "s3cret-token"
KEYS = ("http://127.0.0.1:8080", "https://api.example.com", "http://h.example/users/{id}")
Serve = Callable[..., AbstractContextManager[str]]


def q(key: str) -> str:
    return quote(key, safe="")


@pytest.fixture
def registry() -> BreakerRegistry:
    registry = BreakerRegistry(BreakerConfig(consecutive_failures=2))
    for key in KEYS:
        registry.get(key)
    return registry


@pytest.fixture(params=["asgi", "wsgi"])
def served(request: pytest.FixtureRequest) -> Iterator[Serve]:
    """Serve a page with the app kind under test: ``served(registry, token=..., prefix=...)``."""
    apps: list[Any] = []
    make = asgi_app if request.param == "asgi" else wsgi_app

    def start(registry: BreakerRegistry, *, token: str | None = None, prefix: str = "") -> Any:
        app = make(registry, token=token)
        apps.append(app)
        return serve(app, prefix)

    yield start
    for app in apps:
        app.close()


def trip(registry: BreakerRegistry, key: str) -> None:
    breaker = registry.get(key)
    for _ in range(2):
        with pytest.raises(RuntimeError), breaker:
            raise RuntimeError("upstream down")


def test_breakers_json_has_every_snapshot_and_recent_transitions_newest_first(
    registry: BreakerRegistry, served: Serve
) -> None:
    with served(registry) as url:
        trip(registry, KEYS[0])
        registry.get(KEYS[1]).force_open()
        answer = httpx.get(url + "breakers")
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "application/json"
    assert answer.headers["cache-control"] == "no-store"
    body = answer.json()
    assert set(body) == {"breakers", "transitions"}
    by_name = {item["name"]: item for item in body["breakers"]}
    assert set(by_name) == set(KEYS)
    for key in KEYS:
        expected = registry.get(key).snapshot().as_dict()
        assert set(by_name[key]) == set(expected)
        assert by_name[key]["state"] == expected["state"]
    assert by_name[KEYS[0]]["state"] == "open"
    assert by_name[KEYS[0]]["failures"] == 2
    assert by_name[KEYS[0]]["retry_after"] > 0
    assert by_name[KEYS[0]]["last_failure"] == "RuntimeError"
    newest, older = body["transitions"]
    assert newest["name"] == KEYS[1]
    assert (newest["old"], newest["new"]) == ("closed", "forced_open")
    assert newest["reason"] == "force_open"
    assert (older["name"], older["new"]) == (KEYS[0], "open")
    assert older["reason"] == "consecutive_failures"
    assert set(newest) == {"name", "old", "new", "reason", "at", "time"}


def test_a_second_read_shows_what_changed_in_between(
    registry: BreakerRegistry, served: Serve
) -> None:
    # The handler reuses the JSON of breakers whose numbers did not move:
    # what did move must still show.
    with served(registry) as url, httpx.Client() as client:
        first = {b["name"]: b for b in client.get(url + "breakers").json()["breakers"]}
        registry.get(KEYS[2]).call(lambda: None)
        registry.get(KEYS[1]).disable()
        second = {b["name"]: b for b in client.get(url + "breakers").json()["breakers"]}
    assert first[KEYS[2]]["calls"] == 0 and second[KEYS[2]]["calls"] == 1
    assert second[KEYS[1]]["state"] == "disabled"
    assert second[KEYS[0]] == first[KEYS[0]]


def test_one_breaker_by_its_encoded_key(registry: BreakerRegistry, served: Serve) -> None:
    with served(registry) as url, httpx.Client() as client:
        for key in KEYS:
            answer = client.get(url + "breakers/" + q(key))
            assert answer.status_code == 200, answer.text
            assert answer.json()["name"] == key
            assert set(answer.json()) == set(registry.get(key).snapshot().as_dict())


def test_a_key_ending_like_an_action_is_still_a_breaker(served: Serve) -> None:
    registry = BreakerRegistry()
    registry.get("http://h.example/v1/open")
    with served(registry) as url:
        answer = httpx.get(url + "breakers/" + q("http://h.example/v1/open"))
    assert answer.status_code == 200
    assert answer.json()["name"] == "http://h.example/v1/open"


def test_an_unknown_key_is_404_and_the_registry_does_not_grow(
    registry: BreakerRegistry, served: Serve
) -> None:
    with served(registry, token=TOKEN) as url, httpx.Client() as client:
        missing = "http://nope.example"
        got = client.get(url + "breakers/" + q(missing))
        acted = client.post(
            url + "breakers/" + q(missing) + "/open",
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
        nowhere = client.get(url + "elsewhere")
    for answer in (got, acted, nowhere):
        assert answer.status_code == 404
        assert answer.headers["content-type"] == "application/json"
        assert answer.json()["error"]
    assert "nope.example" in got.json()["error"]
    assert missing not in registry
    assert len(registry) == len(KEYS)


@pytest.mark.parametrize("action", ["open", "disable", "reset"])
def test_get_on_an_action_is_405_and_changes_nothing(
    registry: BreakerRegistry, served: Serve, action: str
) -> None:
    with served(registry, token=TOKEN) as url:
        answer = httpx.get(
            url + "breakers/" + q(KEYS[0]) + "/" + action,
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
    assert answer.status_code == 405
    assert answer.headers["allow"] == "POST"
    assert "POST" in answer.json()["error"]
    assert registry.get(KEYS[0]).state is CircuitState.CLOSED


def test_post_on_a_read_only_path_is_405(registry: BreakerRegistry, served: Serve) -> None:
    with served(registry, token=TOKEN) as url, httpx.Client() as client:
        auth = {"Authorization": f"Bearer {TOKEN}"}
        for path in ("", "breakers", "breakers/" + q(KEYS[0])):
            answer = client.post(url + path, headers=auth)
            assert answer.status_code == 405, path
            assert "GET" in answer.headers["allow"]


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}, {"Authorization": "Basic x"}],
    ids=["none", "wrong", "no-scheme", "basic"],
)
def test_an_action_without_the_token_is_403(
    registry: BreakerRegistry, served: Serve, headers: dict[str, str]
) -> None:
    with served(registry, token=TOKEN) as url:
        answer = httpx.post(url + "breakers/" + q(KEYS[0]) + "/open", headers=headers)
    assert answer.status_code == 403
    assert "token" in answer.json()["error"]
    assert registry.get(KEYS[0]).state is CircuitState.CLOSED


def test_without_a_token_the_page_is_read_only(registry: BreakerRegistry, served: Serve) -> None:
    with served(registry) as url:
        answer = httpx.post(
            url + "breakers/" + q(KEYS[0]) + "/open", headers={"Authorization": "Bearer anything"}
        )
    assert answer.status_code == 403
    assert "read-only" in answer.json()["error"]
    assert registry.get(KEYS[0]).state is CircuitState.CLOSED


def test_the_actions_change_the_breaker(registry: BreakerRegistry, served: Serve) -> None:
    key = KEYS[2]  # a route key: slashes and braces in it
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with served(registry, token=TOKEN) as url, httpx.Client(headers=auth) as client:
        opened = client.post(url + "breakers/" + q(key) + "/open")
        assert opened.status_code == 200, opened.text
        assert registry.get(key).state is CircuitState.FORCED_OPEN
        assert (opened.json()["old"], opened.json()["new"]) == ("closed", "forced_open")
        assert opened.json()["breaker"]["state"] == "forced_open"
        disabled = client.post(url + "breakers/" + q(key) + "/disable")
        assert disabled.json()["new"] == "disabled"
        assert registry.get(key).state is CircuitState.DISABLED
        reset = client.post(url + "breakers/" + q(key) + "/reset")
        assert (reset.json()["old"], reset.json()["new"]) == ("disabled", "closed")
        assert registry.get(key).state is CircuitState.CLOSED
        reasons = [t["reason"] for t in client.get(url + "breakers").json()["transitions"]]
    assert reasons == ["reset", "disable", "force_open"]


def test_the_page_is_html_with_no_outside_asset_and_relative_fetches(
    registry: BreakerRegistry, served: Serve
) -> None:
    with served(registry) as url:
        page = httpx.get(url)
        head = httpx.head(url)
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    html = page.text
    assert 'fetch("breakers"' in html
    for outside in ("http://", "https://", "src=", "href=", "@import", "url("):
        assert outside not in html, outside
    assert head.status_code == 200 and head.content == b""


@pytest.mark.parametrize("prefix", ["/ops", "/ops/status"])
def test_under_a_mount_prefix_the_pages_fetches_resolve(
    registry: BreakerRegistry, served: Serve, prefix: str
) -> None:
    with served(registry, token=TOKEN, prefix=prefix) as url, httpx.Client() as client:
        assert url.endswith(prefix + "/")
        bare = client.get(url.rstrip("/"))
        # The bare mount point sends the browser to the page's own URL, with
        # the slash that relative fetches need.
        assert bare.status_code == 307
        assert bare.headers["location"] == prefix + "/"
        page = client.get(url)
        assert page.status_code == 200
        # What the page fetches, resolved as a browser resolves it against the page's URL.
        data = client.get(httpx.URL(url).join("breakers"))
        assert data.status_code == 200
        assert {b["name"] for b in data.json()["breakers"]} == set(KEYS)
        one = client.get(httpx.URL(url).join("breakers/" + q(KEYS[2])))
        assert one.json()["name"] == KEYS[2]
        acted = client.post(
            httpx.URL(url).join("breakers/" + q(KEYS[2]) + "/open"),
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
        assert acted.status_code == 200
        assert client.get(url.rstrip("/") + "-not-the-mount").status_code == 404


def test_an_asgi_router_that_strips_the_prefix_from_path(registry: BreakerRegistry) -> None:
    app = asgi_app(registry)
    try:
        with uvicorn_server(mount_asgi(app, "/ops", keep_path=False)) as base:
            bare = httpx.get(base + "/ops")
            one = httpx.get(base + "/ops/breakers/" + q(KEYS[2]))
    finally:
        app.close()
    assert bare.headers["location"] == "/ops/"
    assert one.json()["name"] == KEYS[2]


def test_uvicorn_root_path_behind_a_proxy_that_strips_it(registry: BreakerRegistry) -> None:
    # uvicorn --root-path /ops: the proxy forwards /ops/x as /x.
    app = asgi_app(registry)
    try:
        with uvicorn_server(app, root_path="/ops") as base:
            page = httpx.get(base + "/")
            one = httpx.get(base + "/breakers/" + q(KEYS[2]))
    finally:
        app.close()
    assert page.status_code == 200
    assert 'fetch("breakers"' in page.text
    assert one.json()["name"] == KEYS[2]


def test_bad_arguments() -> None:
    with pytest.raises(TypeError, match="registry"):
        asgi_app(object())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="token"):
        wsgi_app(BreakerRegistry(), token="")
