"""Fallback values without a client: ``FallbackResponse`` and ``LastKnownGood``."""

from __future__ import annotations

import contextlib
import dataclasses
import random
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from circuitbreaker_http import FallbackResponse, LastKnownGood
from circuitbreaker_http._fallback import StoredResponse, stale_headers
from circuitbreaker_http.testing import ManualClock

Getter = Callable[[str], "str | None"]


def hdrs(**headers: str) -> Getter:
    """A case-insensitive header lookup, as the clients' headers objects give."""
    table = {name.replace("_", "-").lower(): value for name, value in headers.items()}
    return lambda name: table.get(name.lower())


NONE = hdrs()

# -- FallbackResponse -------------------------------------------------------------


def test_fallback_response_defaults() -> None:
    fallback = FallbackResponse()
    assert fallback.status_code == 503
    assert fallback.body == b""
    assert fallback.header_list == ()


def test_fallback_response_status_is_positional() -> None:
    assert FallbackResponse(200).status_code == 200
    with pytest.raises(TypeError):
        FallbackResponse(200, b"x")  # type: ignore[misc]


@pytest.mark.parametrize("status", [100, 200, 204, 429, 503, 599])
def test_fallback_response_accepts_statuses_100_to_599(status: int) -> None:
    assert FallbackResponse(status).status_code == status


@pytest.mark.parametrize("status", [99, 600, 0, -503, True, False, "503", 503.0, None])
def test_fallback_response_rejects_bad_statuses(status: Any) -> None:
    with pytest.raises(ValueError, match="status_code must be 100-599"):
        FallbackResponse(status)


@pytest.mark.parametrize(
    ("content", "body"),
    [
        (b"busy", b"busy"),
        ("héllo", "héllo".encode()),
        ("", b""),
        (bytearray(b"ab"), b"ab"),
        (memoryview(b"cd"), b"cd"),
    ],
)
def test_fallback_response_content(content: Any, body: bytes) -> None:
    fallback = FallbackResponse(content=content)
    assert fallback.body == body
    assert type(fallback.body) is bytes
    assert fallback.header_list == ()  # no Content-Type is invented for content


@pytest.mark.parametrize("content", [None, 5, ["a"], {"a": 1}])
def test_fallback_response_rejects_non_bytes_content(content: Any) -> None:
    with pytest.raises(ValueError, match="content must be bytes"):
        FallbackResponse(content=content)


@pytest.mark.parametrize(
    ("value", "body"),
    [
        ({"error": "busy", "n": [1, 2]}, b'{"error":"busy","n":[1,2]}'),
        ([], b"[]"),
        ({}, b"{}"),
        (0, b"0"),
        (False, b"false"),
        ("x", b'"x"'),
        ({"é": "ü"}, b'{"\\u00e9":"\\u00fc"}'),
    ],
)
def test_fallback_response_json(value: Any, body: bytes) -> None:
    fallback = FallbackResponse(json=value)
    assert fallback.body == body
    assert fallback.header_list == (("Content-Type", "application/json"),)


def test_fallback_response_json_keeps_a_given_content_type() -> None:
    for name in ("Content-Type", "content-type", "CONTENT-TYPE"):
        fallback = FallbackResponse(json={"a": 1}, headers={name: "application/problem+json"})
        assert fallback.header_list == ((name, "application/problem+json"),)


def test_fallback_response_json_adds_content_type_after_other_headers() -> None:
    fallback = FallbackResponse(json=[1], headers={"X-A": "1", "Retry-After": "5"})
    assert fallback.header_list == (
        ("X-A", "1"),
        ("Retry-After", "5"),
        ("Content-Type", "application/json"),
    )


def test_fallback_response_content_xor_json() -> None:
    with pytest.raises(ValueError, match="content or json, not both"):
        FallbackResponse(content=b"x", json={"a": 1})
    with pytest.raises(ValueError, match="content or json, not both"):
        FallbackResponse(content="x", json=[])
    # An empty content beside json is no conflict.
    assert FallbackResponse(content=b"", json=[]).body == b"[]"


def _circular() -> list[Any]:
    loop: list[Any] = []
    loop.append(loop)
    return loop


@pytest.mark.parametrize(
    "value",
    [
        object(),
        {1, 2},
        b"bytes",
        {"a": 1j},
        {("tuple", "key"): 1},
        _circular(),
        float("nan"),  # would be the invalid JSON token NaN
        {"x": float("inf")},
        [float("-inf")],
    ],
)
def test_fallback_response_rejects_json_it_cannot_serialise(value: Any) -> None:
    with pytest.raises(ValueError, match="json is not serialisable"):
        FallbackResponse(json=value)


@pytest.mark.parametrize(
    "headers",
    [{"X-A": 1}, {1: "x"}, {"X-A": b"1"}, {b"X-A": "1"}, {"X-A": None}],
)
def test_fallback_response_headers_map_str_to_str(headers: Any) -> None:
    with pytest.raises(ValueError, match="headers must map str to str"):
        FallbackResponse(headers=headers)


def test_fallback_response_copies_its_headers() -> None:
    headers = {"X-A": "1"}
    fallback = FallbackResponse(headers=headers)
    headers["X-B"] = "2"
    assert fallback.header_list == (("X-A", "1"),)


def test_fallback_response_is_frozen() -> None:
    fallback = FallbackResponse()
    with pytest.raises(dataclasses.FrozenInstanceError):
        fallback.status_code = 200  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        fallback.body = b"x"  # type: ignore[misc]


def test_fallback_response_compares_by_its_arguments() -> None:
    assert FallbackResponse(503, content=b"x") == FallbackResponse(503, content=b"x")
    assert FallbackResponse(503, content=b"x") != FallbackResponse(502, content=b"x")
    assert "body" not in repr(FallbackResponse())


# -- LastKnownGood: arguments ------------------------------------------------------


def test_last_known_good_defaults() -> None:
    lkg = LastKnownGood()
    assert lkg.max_entries == 1000
    assert lkg.max_bytes == 32 * 1024 * 1024
    assert lkg.max_entry_bytes == 1024 * 1024
    assert lkg.max_age == 300.0
    assert lkg.otherwise is None
    assert len(lkg) == 0
    assert lkg.bytes_stored == 0


@pytest.mark.parametrize("name", ["max_entries", "max_bytes", "max_entry_bytes"])
@pytest.mark.parametrize("bad", [0, -1, True, 1.5, "10", None])
def test_last_known_good_sizes_must_be_positive_ints(name: str, bad: Any) -> None:
    with pytest.raises(ValueError, match=rf"LastKnownGood\.{name} must be an int >= 1"):
        LastKnownGood(**{name: bad})


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf"), True, "5", None])
def test_last_known_good_max_age_must_be_a_positive_number(bad: Any) -> None:
    with pytest.raises(ValueError, match=r"LastKnownGood\.max_age must be a number > 0"):
        LastKnownGood(max_age=bad)


def test_last_known_good_max_age_may_be_an_int() -> None:
    lkg = LastKnownGood(max_age=5)
    assert lkg.max_age == 5.0
    assert type(lkg.max_age) is float


@pytest.mark.parametrize("bad", [None, 0.0, "monotonic"])
def test_last_known_good_clock_must_be_callable(bad: Any) -> None:
    with pytest.raises(ValueError, match=r"LastKnownGood\.clock must be a zero-argument callable"):
        LastKnownGood(clock=bad)


@pytest.mark.parametrize("bad", [5, "503", b"", object()])
def test_last_known_good_otherwise_must_be_a_fallback(bad: Any) -> None:
    with pytest.raises(ValueError, match=r"LastKnownGood\.otherwise must be"):
        LastKnownGood(otherwise=bad)


@pytest.mark.parametrize("good", [None, FallbackResponse(), lambda request, error: None])
def test_last_known_good_otherwise_accepts_fallbacks(good: Any) -> None:
    assert LastKnownGood(otherwise=good).otherwise is good


# -- LastKnownGood: what may be stored and answered ---------------------------------


@pytest.mark.parametrize(
    ("method", "headers", "eligible"),
    [
        ("GET", NONE, True),
        ("HEAD", NONE, True),
        ("GET", hdrs(accept="text/html", user_agent="x"), True),
        ("POST", NONE, False),
        ("PUT", NONE, False),
        ("PATCH", NONE, False),
        ("DELETE", NONE, False),
        ("OPTIONS", NONE, False),
        # Credentials no longer refuse a request: it is kept apart under their
        # digest (test_lkg_credentials.py).
        ("GET", hdrs(Authorization="Bearer t"), True),
        ("HEAD", hdrs(authorization="Basic x"), True),
        ("GET", hdrs(Cookie="session=1"), True),
        ("POST", hdrs(Authorization="Bearer t"), False),
    ],
)
def test_request_eligible(method: str, headers: Getter, eligible: bool) -> None:
    assert LastKnownGood.request_eligible(method, headers) is eligible
    assert LastKnownGood().request_eligible(method, headers) is eligible


@pytest.mark.parametrize(
    ("status", "headers", "storable"),
    [
        (200, NONE, True),
        (201, NONE, True),
        (203, NONE, True),
        (204, NONE, True),
        (299, NONE, True),
        (206, NONE, False),  # a partial body is not the resource
        (199, NONE, False),
        (300, NONE, False),
        (304, NONE, False),
        (404, NONE, False),
        (500, NONE, False),
        (200, hdrs(set_cookie="a=1"), True),  # stored without it
        (200, hdrs(cache_control="no-store"), False),
        (200, hdrs(cache_control="No-Store"), False),
        (200, hdrs(cache_control="private"), False),
        (200, hdrs(cache_control='private="Set-Cookie"'), False),
        (200, hdrs(cache_control="max-age=60, private"), False),
        (200, hdrs(cache_control="public , no-store"), False),
        (200, hdrs(cache_control="no-cache"), True),
        (200, hdrs(cache_control="public, max-age=60"), True),
        (200, hdrs(cache_control="no-storage, privately"), True),
        (200, hdrs(vary="*"), False),
        (200, hdrs(vary="Accept, *"), False),
        (200, hdrs(vary="Accept, Accept-Encoding"), True),
        (200, hdrs(vary="X-Star*"), True),  # "*" is a token character: only "*" alone is Vary: *
    ],
)
def test_response_storable(status: int, headers: Getter, storable: bool) -> None:
    assert LastKnownGood().response_storable(status, headers) is storable


# -- LastKnownGood: store and lookup -----------------------------------------------

URL = "https://api.test/items"


def store(
    lkg: LastKnownGood,
    content: bytes = b"body",
    url: str = URL,
    headers: list[tuple[str, str]] | None = None,
    request: Getter = NONE,
    status: int = 200,
) -> None:
    lkg.store(url, status, "OK", headers or [("Content-Type", "text/plain")], content, request)


def test_store_and_lookup() -> None:
    clock = ManualClock(50.0)
    lkg = LastKnownGood(clock=clock)
    assert lkg.lookup(URL, NONE) is None
    store(lkg, b"hello", headers=[("Content-Type", "text/plain"), ("ETag", '"1"')], status=203)
    entry = lkg.lookup(URL, NONE)
    assert isinstance(entry, StoredResponse)
    assert entry.status_code == 203
    assert entry.reason == "OK"
    assert entry.headers == (("Content-Type", "text/plain"), ("ETag", '"1"'))
    assert entry.content == b"hello"
    assert entry.stored_at == 50.0
    assert entry.vary == ()
    assert len(lkg) == 1
    assert lkg.bytes_stored == 5
    assert lkg.lookup(URL + "/other", NONE) is None
    assert lkg.lookup(URL + "?page=2", NONE) is None


def test_a_newer_response_replaces_the_older() -> None:
    lkg = LastKnownGood()
    store(lkg, b"old!")
    store(lkg, b"newer")
    entry = lkg.lookup(URL, NONE)
    assert entry is not None
    assert entry.content == b"newer"
    assert len(lkg) == 1
    assert lkg.bytes_stored == 5


def test_store_copies_the_body() -> None:
    lkg = LastKnownGood()
    body = bytearray(b"abc")
    lkg.store(URL, 200, "OK", [], body, NONE)  # type: ignore[arg-type]
    body[0] = ord("z")
    entry = lkg.lookup(URL, NONE)
    assert entry is not None
    assert entry.content == b"abc"
    assert type(entry.content) is bytes


def test_vary_is_honoured() -> None:
    lkg = LastKnownGood()
    store(lkg, b"json", headers=[("Vary", "Accept")], request=hdrs(accept="application/json"))
    assert len(lkg) == 1

    def found(request: Getter) -> bytes | None:
        entry = lkg.lookup(URL, request)
        return None if entry is None else entry.content

    assert found(hdrs(Accept="application/json")) == b"json"
    assert found(hdrs(accept="text/html")) is None
    assert found(NONE) is None

    store(lkg, b"html", headers=[("Vary", "Accept")], request=hdrs(accept="text/html"))
    assert len(lkg) == 2
    assert lkg.bytes_stored == 8
    assert found(hdrs(accept="text/html")) == b"html"
    assert found(hdrs(accept="application/json")) == b"json"

    # The same variant again replaces only itself.
    store(lkg, b"json2", headers=[("Vary", "Accept")], request=hdrs(accept="application/json"))
    assert len(lkg) == 2
    assert lkg.bytes_stored == 9
    assert found(hdrs(accept="application/json")) == b"json2"
    assert found(hdrs(accept="text/html")) == b"html"


def test_vary_on_an_absent_request_header() -> None:
    lkg = LastKnownGood()
    store(lkg, headers=[("Vary", "Accept-Language")])
    entry = lkg.lookup(URL, NONE)
    assert entry is not None
    assert entry.vary == (("accept-language", None),)
    assert lkg.lookup(URL, hdrs(accept_language="de")) is None


def test_vary_on_several_headers_in_any_case_and_form() -> None:
    lkg = LastKnownGood()
    request = hdrs(accept="a", accept_language="de")
    store(lkg, headers=[("VARY", "Accept-Language , ACCEPT"), ("vary", "accept")], request=request)
    entry = lkg.lookup(URL, request)
    assert entry is not None
    assert entry.vary == (("accept", "a"), ("accept-language", "de"))
    assert lkg.lookup(URL, hdrs(accept="a", accept_language="fr")) is None
    assert lkg.lookup(URL, hdrs(accept="b", accept_language="de")) is None


def test_max_entries_drops_the_least_recently_stored() -> None:
    lkg = LastKnownGood(max_entries=2)
    store(lkg, url="u1")
    store(lkg, url="u2")
    store(lkg, url="u1")  # stored again: now the most recent
    store(lkg, url="u3")
    assert len(lkg) == 2
    assert lkg.lookup("u2", NONE) is None
    assert lkg.lookup("u1", NONE) is not None
    assert lkg.lookup("u3", NONE) is not None


def test_max_entries_counts_vary_variants() -> None:
    lkg = LastKnownGood(max_entries=2)
    for accept in ("a", "b"):
        store(lkg, url="u1", headers=[("Vary", "Accept")], request=hdrs(accept=accept))
    assert len(lkg) == 2
    store(lkg, url="u2")
    assert len(lkg) <= 2
    assert lkg.lookup("u2", NONE) is not None


def test_max_bytes_drops_the_least_recently_stored() -> None:
    lkg = LastKnownGood(max_bytes=10, max_entry_bytes=10)
    store(lkg, b"123456", url="u1")
    store(lkg, b"1234", url="u2")
    assert lkg.bytes_stored == 10
    assert len(lkg) == 2
    store(lkg, b"1", url="u3")
    assert lkg.bytes_stored == 5
    assert lkg.lookup("u1", NONE) is None
    assert lkg.lookup("u2", NONE) is not None
    assert lkg.lookup("u3", NONE) is not None


def test_max_entry_bytes() -> None:
    lkg = LastKnownGood(max_entry_bytes=4)
    store(lkg, b"1234", url="fits")
    store(lkg, b"12345", url="too-big")
    assert lkg.lookup("fits", NONE) is not None
    assert lkg.lookup("too-big", NONE) is None
    assert lkg.bytes_stored == 4
    # A too-big newer response leaves the older one in place.
    store(lkg, b"12345", url="fits")
    entry = lkg.lookup("fits", NONE)
    assert entry is not None
    assert entry.content == b"1234"


def test_a_body_larger_than_max_bytes_is_not_stored_and_evicts_nothing() -> None:
    lkg = LastKnownGood(max_bytes=8, max_entry_bytes=100)
    store(lkg, b"1234", url="u1")
    store(lkg, b"5678", url="u2")
    store(lkg, b"123456789", url="huge")
    assert lkg.lookup("huge", NONE) is None
    assert lkg.lookup("u1", NONE) is not None
    assert lkg.lookup("u2", NONE) is not None
    assert lkg.bytes_stored == 8
    assert len(lkg) == 2


def test_an_empty_body_is_stored() -> None:
    lkg = LastKnownGood()
    store(lkg, b"", status=204)
    entry = lkg.lookup(URL, NONE)
    assert entry is not None
    assert entry.content == b""
    assert lkg.bytes_stored == 0
    assert len(lkg) == 1


def test_max_age_and_age() -> None:
    clock = ManualClock(1000.0)
    lkg = LastKnownGood(max_age=300, clock=clock)
    store(lkg)
    entry = lkg.lookup(URL, NONE)
    assert entry is not None
    assert lkg.age(entry) == 0
    clock.advance(12.7)
    assert lkg.age(entry) == 12
    clock.set(1300.0)
    assert lkg.lookup(URL, NONE) is entry  # exactly max_age old: still served
    assert lkg.age(entry) == 300
    clock.advance(0.001)
    assert lkg.lookup(URL, NONE) is None
    # Storing again makes it fresh.
    store(lkg, b"again")
    fresh = lkg.lookup(URL, NONE)
    assert fresh is not None
    assert fresh.content == b"again"


def test_an_expired_variant_does_not_hide_a_fresh_one() -> None:
    clock = ManualClock()
    lkg = LastKnownGood(max_age=10, clock=clock)
    store(lkg, b"old", headers=[("Vary", "Accept")], request=hdrs(accept="a"))
    clock.advance(8)
    store(lkg, b"new", headers=[("Vary", "Accept")], request=hdrs(accept="b"))
    clock.advance(5)
    assert lkg.lookup(URL, hdrs(accept="a")) is None
    entry = lkg.lookup(URL, hdrs(accept="b"))
    assert entry is not None
    assert entry.content == b"new"


def test_age_is_never_negative() -> None:
    entry = StoredResponse(200, "OK", (), b"", stored_at=100.0, vary=())
    assert LastKnownGood(clock=ManualClock(50.0)).age(entry) == 0


def test_clear() -> None:
    lkg = LastKnownGood()
    store(lkg, url="u1")
    store(lkg, url="u2")
    lkg.clear()
    assert len(lkg) == 0
    assert lkg.bytes_stored == 0
    assert lkg.lookup("u1", NONE) is None
    store(lkg, b"after", url="u1")
    assert len(lkg) == 1
    assert lkg.bytes_stored == 5


def test_stale_headers() -> None:
    assert stale_headers(0) == [("Age", "0"), ("Warning", '110 - "Response is Stale"')]
    assert stale_headers(42)[0] == ("Age", "42")


# -- LastKnownGood: threads ------------------------------------------------------------


@contextlib.contextmanager
def busy_switching() -> Iterator[None]:
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(old)


def test_store_and_lookup_from_several_threads() -> None:
    lkg = LastKnownGood(max_entries=25, max_bytes=400, max_entry_bytes=40)
    urls = [f"https://api.test/{i}" for i in range(40)]
    barrier = threading.Barrier(8)
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        rng = random.Random(n)
        try:
            barrier.wait()
            for _ in range(4000):
                url = rng.choice(urls)
                if rng.random() < 0.6:
                    body = url.encode()[-rng.randrange(1, 20) :]
                    vary = rng.choice(["a", "b"])
                    store(
                        lkg, body, url=url, headers=[("Vary", "Accept")], request=hdrs(accept=vary)
                    )
                else:
                    entry = lkg.lookup(url, hdrs(accept=rng.choice(["a", "b"])))
                    assert entry is None or url.encode().endswith(entry.content)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    with busy_switching():
        threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert errors == []
    # The counters agree with what is really held, and the bounds hold.
    found = [
        entry
        for url in urls
        for accept in ("a", "b")
        if (entry := lkg.lookup(url, hdrs(accept=accept))) is not None
    ]
    assert len(lkg) == len(found)
    assert lkg.bytes_stored == sum(len(entry.content) for entry in found)
    assert 0 < len(lkg) <= 25
    assert lkg.bytes_stored <= 400


# -- Age: one value, the stored response's own age plus the time since ---------------


def served_age(lkg: LastKnownGood, entry: StoredResponse) -> list[str]:
    """The Age values of ``entry`` served as the integrations build it."""
    headers = [*entry.headers, *stale_headers(lkg.age(entry))]
    return [value for name, value in headers if name.lower() == "age"]


@pytest.mark.parametrize(
    ("age_headers", "own"),
    [
        ([], 0),
        ([("Age", "100")], 100),
        ([("age", "007")], 7),
        ([("AGE", " 100 ")], 100),
        ([("Age", "100, 5")], 100),  # a list: the first member (RFC 9111 §5.1)
        ([("Age", "100"), ("Age", "5")], 100),  # two field lines: the first
        ([("Age", "garbage")], 0),  # not delta-seconds: ignored
        ([("Age", "-3")], 0),
        ([("Age", "1.5")], 0),
        ([("Age", "")], 0),
        ([("Age", "²")], 0),  # a digit to str.isdigit(), not to HTTP
        ([("Age", "9" * 50)], 2**31),  # past what a cache may send
    ],
)
def test_a_stored_age_is_served_as_one_value_added_to_the_time_since(
    age_headers: list[tuple[str, str]], own: int
) -> None:
    clock = ManualClock(1000.0)
    lkg = LastKnownGood(clock=clock)
    store(lkg, headers=[("Content-Type", "text/plain"), *age_headers, ("ETag", '"1"')])
    entry = lkg.lookup(URL, NONE)
    assert entry is not None
    assert entry.age == own
    assert entry.headers == (("Content-Type", "text/plain"), ("ETag", '"1"'))
    clock.advance(5.5)
    assert lkg.age(entry) == min(own + 5, 2**31)
    assert served_age(lkg, entry) == [str(min(own + 5, 2**31))]


def test_max_age_counts_from_when_a_response_was_stored() -> None:
    # The stored response's own age is reported, not held against it.
    clock = ManualClock()
    lkg = LastKnownGood(max_age=10, clock=clock)
    store(lkg, headers=[("Age", "1000")])
    clock.advance(10)
    entry = lkg.lookup(URL, NONE)
    assert entry is not None
    assert lkg.age(entry) == 1010


def test_a_stored_response_without_an_own_age_defaults_to_zero() -> None:
    entry = StoredResponse(200, "OK", (), b"", stored_at=100.0, vary=())
    assert entry.age == 0
    assert LastKnownGood(clock=ManualClock(103.0)).age(entry) == 3
