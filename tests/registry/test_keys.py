"""Breaker keys: ``by_host`` normalisation, ``by_route`` matching, ``split_key``. No network."""

from __future__ import annotations

import idna
import pytest

from circuitbreaker_http import by_host, by_route
from circuitbreaker_http._keys import (
    _ORIGIN_CACHE_MAX,
    DEFAULT_PORTS,
    HostKey,
    RouteKey,
    origin,
    split_key,
)

# -- by_host ------------------------------------------------------------------

HOST_KEYS = [
    # plain origins; path, query, fragment and user info never reach the key
    ("https://api.example.com", "https://api.example.com"),
    ("https://api.example.com/v1/users?id=1#top", "https://api.example.com"),
    ("http://user:secret@api.example.com:8080/x", "http://api.example.com:8080"),
    ("http://127.0.0.1:8080/a/b", "http://127.0.0.1:8080"),
    # scheme and host in lower case
    ("HTTPS://API.Example.COM/Path", "https://api.example.com"),
    ("Http://LOCALHOST:9000", "http://localhost:9000"),
    # default ports dropped, explicit non-default kept (also the other scheme's default)
    ("http://example.com:80/", "http://example.com"),
    ("https://example.com:443/", "https://example.com"),
    ("http://example.com:443/", "http://example.com:443"),
    ("https://example.com:80/", "https://example.com:80"),
    ("https://example.com:8443/", "https://example.com:8443"),
    ("ws://example.com:80/socket", "ws://example.com"),
    ("wss://example.com:443/socket", "wss://example.com"),
    ("wss://example.com:444/socket", "wss://example.com:444"),
    # IPv6 in brackets, lower case, default port dropped
    ("http://[::1]:8080/", "http://[::1]:8080"),
    ("http://[::1]/", "http://[::1]"),
    ("http://[::1]:80/", "http://[::1]"),
    ("https://[2001:DB8::1]:443/x", "https://[2001:db8::1]"),
    ("https://[2001:db8::1]:8443", "https://[2001:db8::1]:8443"),
    # IDNA 2008 / UTS-46, as the idna package encodes
    ("http://bücher.example/", "http://xn--bcher-kva.example"),
    ("http://BÜCHER.Example/", "http://xn--bcher-kva.example"),
    ("https://bücher.example:443/", "https://xn--bcher-kva.example"),
    ("https://bücher.example:8443/", "https://xn--bcher-kva.example:8443"),
    # IDNA 2008 keeps ß (IDNA 2003, the stdlib codec, would map it to "fass.de")
    ("https://faß.de/", "https://xn--fa-hia.de"),
    ("https://例え.jp/", "https://xn--r8jz45g.jp"),
]


@pytest.mark.parametrize(("url", "expected"), HOST_KEYS)
def test_by_host(url: str, expected: str) -> None:
    assert by_host("GET", url) == expected
    # The method never changes an origin key.
    assert by_host("POST", url) == expected


@pytest.mark.parametrize("host", ["bücher.example", "faß.de", "例え.jp", "Bücher.Example"])
def test_by_host_encodes_as_the_idna_package_does(host: str) -> None:
    encoded = idna.encode(host, uts46=True).decode("ascii")
    assert by_host("GET", f"https://{host}/x") == f"https://{encoded}"


@pytest.mark.parametrize("host", ["bücher.example", "faß.de", "例え.jp", "BÜCHER.example"])
def test_by_host_agrees_with_the_host_httpx_sends(host: str) -> None:
    httpx = pytest.importorskip("httpx")
    sent = httpx.URL(f"https://{host}/").raw_host.decode("ascii")
    assert by_host("GET", f"https://{host}/") == f"https://{sent}"


def test_by_host_from_parts_matches_the_url_form() -> None:
    key = HostKey()
    assert key.from_parts("GET", "https", "api.example.com", 443, "/x") == "https://api.example.com"
    assert (
        key.from_parts("GET", "HTTP", "API.example.com", 8080, "") == "http://api.example.com:8080"
    )
    assert key.from_parts("GET", "http", "::1", 8080, "/") == "http://[::1]:8080"
    assert key.from_parts("GET", "http", "::1", None, "/") == "http://[::1]"
    for url, expected in HOST_KEYS:
        if url.isascii():
            assert key("GET", url) == expected


def test_by_host_survives_an_unencodable_host() -> None:
    # A host idna rejects is keyed as it came, never failing the request.
    assert by_host("GET", "http://a☃b.example/") == "http://a☃b.example"


def test_by_host_survives_a_bad_port() -> None:
    assert by_host("GET", "http://example.com:99999/") == "http://example.com"


def test_origin_brackets_ipv6_once() -> None:
    assert origin("http", "::1", 8080) == "http://[::1]:8080"
    assert origin("http", "[::1]", 8080) == "http://[::1]:8080"
    assert origin("HTTPS", "Example.COM", 443) == "https://example.com"
    assert origin("https", "example.com", None) == "https://example.com"
    assert origin("ftp", "example.com", 21) == "ftp://example.com:21"
    assert DEFAULT_PORTS["http"] == 80
    assert DEFAULT_PORTS["https"] == 443


def test_origin_cache_stays_bounded_under_many_hosts() -> None:
    key = HostKey()
    hosts = 3 * _ORIGIN_CACHE_MAX
    for i in range(hosts):
        assert key("GET", f"http://h{i}.example:8080/p") == f"http://h{i}.example:8080"
        assert len(key._cache) <= _ORIGIN_CACHE_MAX
    # Still right after the cache has been cleared and refilled.
    assert key("GET", "http://h0.example:8080/") == "http://h0.example:8080"
    assert key("GET", f"http://h{hosts - 1}.example:8080/") == f"http://h{hosts - 1}.example:8080"


def test_route_key_origin_cache_stays_bounded() -> None:
    key = by_route("/users/{id}")
    for i in range(2 * _ORIGIN_CACHE_MAX + 10):
        assert key("GET", f"http://h{i}.test/users/{i}") == f"http://h{i}.test/users/{{id}}"
    assert len(key._host._cache) <= _ORIGIN_CACHE_MAX


def test_origin_cache_is_keyed_on_all_parts() -> None:
    key = HostKey()
    assert key("GET", "http://a.test:81/") == "http://a.test:81"
    assert key("GET", "http://a.test:82/") == "http://a.test:82"
    assert key("GET", "https://a.test:81/") == "https://a.test:81"
    assert key("GET", "http://b.test:81/") == "http://b.test:81"
    assert key("GET", "http://a.test/") == "http://a.test"


def test_by_host_repr() -> None:
    assert repr(by_host) == "by_host"


# -- by_route -----------------------------------------------------------------

ORIGIN = "http://127.0.0.1:8080"
ROUTES = by_route("/users/{id}", "/users/me", "/orders/{id}/items", "/")


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/users/42", "/users/{id}"),
        ("/users/me", "/users/me"),  # more literal segments win over the order listed
        ("/users/you", "/users/{id}"),
        ("/orders/7/items", "/orders/{id}/items"),
        ("/users/42/", "/users/{id}"),  # a trailing slash is ignored
        ("/orders/7/items/", "/orders/{id}/items"),
        ("/users/42?expand=1", "/users/{id}"),  # the query is not part of the path
        ("/users/42#frag", "/users/{id}"),
        ("/", "/"),
        ("", "/"),
        # No template matches: the origin key, never the raw path.
        ("/users", None),
        ("/users/", None),
        ("/users//", None),
        ("/users/42/extra", None),
        ("/orders/7", None),
        ("/orders//items", None),  # {id} needs a non-empty segment
        ("/Users/42", None),  # paths are case-sensitive
        ("/other/42", None),
    ],
)
def test_by_route(path: str, expected: str | None) -> None:
    want = ORIGIN if expected is None else ORIGIN + expected
    assert ROUTES("GET", ORIGIN + path) == want


def test_by_route_normalises_the_origin_part() -> None:
    key = by_route("/users/{id}")
    assert key("GET", "HTTP://Example.COM:80/users/1") == "http://example.com/users/{id}"
    assert (
        key("GET", "https://bücher.example/users/1") == "https://xn--bcher-kva.example/users/{id}"
    )
    assert key("GET", "http://[::1]:8080/users/1") == "http://[::1]:8080/users/{id}"
    assert key("GET", "http://[::1]:8080/nope") == "http://[::1]:8080"


def test_by_route_param_matches_exactly_one_non_empty_segment() -> None:
    key = by_route("/a/{x}/b")
    assert key.match("/a/1/b") == "/a/{x}/b"
    assert key.match("/a/anything-at-all.json/b") == "/a/{x}/b"
    assert key.match("/a//b") is None
    assert key.match("/a/1/2/b") is None
    assert key.match("/a/b") is None


def test_by_route_most_literal_segments_win_whatever_the_order() -> None:
    for templates in [
        ("/{a}/{b}", "/a/{b}", "/a/b"),
        ("/a/b", "/a/{b}", "/{a}/{b}"),
        ("/a/{b}", "/a/b", "/{a}/{b}"),
    ]:
        key = by_route(*templates)
        assert key.match("/a/b") == "/a/b", templates
        assert key.match("/a/c") == "/a/{b}", templates
        assert key.match("/z/c") == "/{a}/{b}", templates


def test_by_route_ties_go_to_the_first_listed() -> None:
    assert by_route("/{a}/x", "/x/{b}").match("/x/x") == "/{a}/x"
    assert by_route("/x/{b}", "/{a}/x").match("/x/x") == "/x/{b}"
    # Different parameter names in the same place are still a tie.
    assert by_route("/u/{id}", "/u/{name}").match("/u/1") == "/u/{id}"


def test_by_route_trailing_slash_in_a_template_is_kept_in_the_key() -> None:
    key = by_route("/users/{id}/")
    assert key.match("/users/1") == "/users/{id}/"
    assert key("GET", "http://h.test/users/1/") == "http://h.test/users/{id}/"


def test_by_route_from_parts_matches_the_url_form() -> None:
    key = by_route("/users/{id}")
    assert (
        key.from_parts("GET", "http", "h.test", 8080, "/users/1") == "http://h.test:8080/users/{id}"
    )
    assert key.from_parts("GET", "https", "h.test", 443, "/nope") == "https://h.test"


def test_by_route_keeps_its_templates_and_repr() -> None:
    key = by_route("/a/{x}", "/b")
    assert isinstance(key, RouteKey)
    assert key.templates == ("/a/{x}", "/b")
    assert repr(key) == "by_route('/a/{x}', '/b')"


@pytest.mark.parametrize(
    ("templates", "message"),
    [
        ((), "at least one"),
        (("users/{id}",), "must start with '/'"),
        (("",), "must start with '/'"),
        ((None,), "must start with '/'"),
        ((b"/users",), "must start with '/'"),
        (("/ok", 5), "must start with '/'"),
        (("/users/{id",), "bad segment"),
        (("/users/id}",), "bad segment"),
        (("/users/{}",), "bad segment"),
        (("/users/{id}.json",), "bad segment"),
        (("/files/x{id}",), "bad segment"),
        (("/users/{a/b}",), "bad segment"),
        (("/users/{id}?x=1",), "bad segment"),
        (("/users#top",), "bad segment"),
    ],
)
def test_by_route_rejects_bad_templates(templates: tuple[object, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        by_route(*templates)  # type: ignore[arg-type]


# -- split_key ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("https://api.example.com", ("https", "api.example.com", 443, "")),
        ("http://api.example.com", ("http", "api.example.com", 80, "")),
        ("http://api.example.com:80", ("http", "api.example.com", 80, "")),
        ("https://api.example.com:8443", ("https", "api.example.com", 8443, "")),
        ("http://127.0.0.1:8080/users/{id}", ("http", "127.0.0.1", 8080, "/users/{id}")),
        ("HTTP://API.Example.com/Users/{Id}", ("http", "api.example.com", 80, "/Users/{Id}")),
        ("http://[::1]:8080", ("http", "[::1]", 8080, "")),
        ("http://[::1]", ("http", "[::1]", 80, "")),
        ("https://[2001:DB8::1]/x", ("https", "[2001:db8::1]", 443, "/x")),
        ("wss://example.com", ("wss", "example.com", 443, "")),
        ("custom://example.com", ("custom", "example.com", None, "")),
        ("custom://example.com:7/a", ("custom", "example.com", 7, "/a")),
    ],
)
def test_split_key(key: str, expected: tuple[str, str, int | None, str]) -> None:
    assert split_key(key) == expected


@pytest.mark.parametrize(
    "key",
    [
        "payments",
        "",
        "://api.example.com",
        "http://",
        "http:///path",
        "http://:8080",
        "http://host:",
        "http://host:abc",
        "http://host:80x",
        "http://host:²",  # a digit to str.isdigit(), not to int()
        "http://host:١٢",
        "http://[::1",
        "http://[::1]x",
        "http://[::1]:",
        "http://[::1]:²",
    ],
)
def test_split_key_rejects_non_url_keys(key: str) -> None:
    assert split_key(key) is None


def test_split_key_round_trips_every_built_in_key() -> None:
    for url, key in HOST_KEYS:
        parts = split_key(key)
        assert parts is not None, url
        scheme, host, port, path = parts
        assert path == ""
        assert origin(scheme, host, port) == key
    route_key = ROUTES("GET", "http://[::1]:9000/users/1")
    assert route_key is not None
    assert split_key(route_key) == ("http", "[::1]", 9000, "/users/{id}")


@pytest.mark.parametrize("url", ["http://[::1", "http://[zz]/"])
def test_an_unreadable_url_gets_no_key_rather_than_an_error(url: str) -> None:
    assert by_host("GET", url) is None
    assert by_route("/x")("GET", url) is None


def test_an_out_of_range_port_is_dropped_from_the_key() -> None:
    assert by_host("GET", "http://h:99999999999/") == "http://h"


HOSTLESS = ["http:///path", "https:///", "file:///x", "mailto:a@b", "", "http://:80/", "//h/x"]


@pytest.mark.parametrize("url", HOSTLESS)
def test_a_url_without_a_host_or_scheme_gets_no_key(url: str) -> None:
    # Not one stray breaker "://" shared by every such request: no breaker at all.
    assert by_host("GET", url) is None
    assert by_route("/path", "/{any}")("GET", url) is None


def test_from_parts_without_a_host_or_scheme_gets_no_key() -> None:
    route = by_route("/path", "/{any}")
    for key in (HostKey(), route):
        assert key.from_parts("GET", "http", "", None, "/path") is None
        assert key.from_parts("GET", "http", "", 8080, "/path") is None
        assert key.from_parts("GET", "", "h.test", None, "/path") is None
        assert key.from_parts("GET", "", "", None, "") is None
    assert route.from_parts("GET", "http", "h.test", None, "/path") == "http://h.test/path"
