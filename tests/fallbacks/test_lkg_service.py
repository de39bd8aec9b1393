"""``LastKnownGood`` in service-to-service traffic, without a client.

Credentials (a digest in each entry's identity), ``Cache-Control: private``,
``Set-Cookie``, ``no-store`` and ``honor_no_store``, ``Vary: *`` on a second
field line, the size accounting with the extra identity, and the DEBUG line
saying why a response was not stored. Through every client:
``tests/clients/test_clients_fallbacks.py``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest

from circuitbreaker_http import LastKnownGood
from circuitbreaker_http.testing import ManualClock

Getter = Callable[[str], "str | None"]
URL = "https://api.test/items"


def hdrs(**headers: str) -> Getter:
    """A case-insensitive header lookup, as the clients' headers objects give."""
    table = {name.replace("_", "-").lower(): value for name, value in headers.items()}
    return lambda name: table.get(name.lower())


NONE = hdrs()
ALICE = hdrs(authorization="Bearer alice")
BOB = hdrs(authorization="Bearer bob")


def store(
    lkg: LastKnownGood,
    request: Getter = NONE,
    content: bytes = b"body",
    url: str = URL,
    headers: list[tuple[str, str]] | None = None,
) -> None:
    lkg.store(url, 200, "OK", headers or [("Content-Type", "text/plain")], content, request)


def body(lkg: LastKnownGood, request: Getter, url: str = URL) -> bytes | None:
    entry = lkg.lookup(url, request)
    return None if entry is None else entry.content


# -- credentials --------------------------------------------------------------------------------


def test_the_credentials_digest() -> None:
    lkg = LastKnownGood()
    assert lkg.credentials(NONE) == b""
    assert lkg.credentials(hdrs(accept="a", x_api_key="k")) == b""  # not credentials headers
    alice = lkg.credentials(ALICE)
    assert len(alice) == 32
    assert alice == lkg.credentials(hdrs(Authorization="Bearer alice"))  # names in any case
    different = [
        lkg.credentials(BOB),
        lkg.credentials(hdrs(cookie="Bearer alice")),  # the same value, another header
        lkg.credentials(hdrs(proxy_authorization="Bearer alice")),
        lkg.credentials(hdrs(authorization="Bearer alice", cookie="s=1")),
        lkg.credentials(hdrs(authorization="")),  # present, even empty
        lkg.credentials(hdrs(authorization="", cookie="")),
    ]
    assert len({alice, *different}) == len(different) + 1
    assert b"" not in different
    # Keyed per instance: nothing kept in memory can be matched to a token elsewhere.
    assert LastKnownGood().credentials(ALICE) != alice


def test_values_cannot_be_shifted_between_credential_headers() -> None:
    lkg = LastKnownGood()
    one = lkg.credentials(hdrs(authorization="a\ncookie:1:b"))
    two = lkg.credentials(hdrs(authorization="a", cookie="b"))
    assert one != two


def test_each_token_gets_only_its_own_copy() -> None:
    lkg = LastKnownGood()
    store(lkg, ALICE, b"alice's")
    store(lkg, BOB, b"bob's")
    store(lkg, NONE, b"public")
    assert len(lkg) == 3
    assert lkg.bytes_stored == len(b"alice's") + len(b"bob's") + len(b"public")
    assert body(lkg, ALICE) == b"alice's"
    assert body(lkg, BOB) == b"bob's"
    assert body(lkg, NONE) == b"public"
    assert body(lkg, hdrs(authorization="Bearer eve")) is None
    assert body(lkg, hdrs(cookie="Bearer alice")) is None
    assert body(lkg, hdrs(authorization="Bearer alice", cookie="s=1")) is None


def test_a_newer_copy_replaces_only_the_same_tokens() -> None:
    lkg = LastKnownGood()
    store(lkg, ALICE, b"a1")
    store(lkg, BOB, b"b1")
    store(lkg, ALICE, b"a-two")
    assert len(lkg) == 2
    assert lkg.bytes_stored == len(b"a-two") + len(b"b1")
    assert (body(lkg, ALICE), body(lkg, BOB)) == (b"a-two", b"b1")


def test_vary_and_credentials_together() -> None:
    lkg = LastKnownGood()
    vary = [("Vary", "Accept")]
    store(lkg, hdrs(authorization="t", accept="a"), b"t-a", headers=vary)
    store(lkg, hdrs(authorization="t", accept="b"), b"t-b", headers=vary)
    store(lkg, hdrs(accept="a"), b"anon-a", headers=vary)
    assert len(lkg) == 3
    assert body(lkg, hdrs(authorization="t", accept="a")) == b"t-a"
    assert body(lkg, hdrs(authorization="t", accept="b")) == b"t-b"
    assert body(lkg, hdrs(authorization="t", accept="c")) is None
    assert body(lkg, hdrs(accept="a")) == b"anon-a"
    assert body(lkg, hdrs(accept="b")) is None


def test_max_entries_counts_each_tokens_copy() -> None:
    lkg = LastKnownGood(max_entries=2)
    store(lkg, ALICE)
    store(lkg, BOB)
    store(lkg, NONE)  # the third: alice's, stored first, goes
    assert len(lkg) == 2
    assert lkg.bytes_stored == 8
    assert body(lkg, ALICE) is None
    assert body(lkg, BOB) == b"body"
    assert body(lkg, NONE) == b"body"


def test_max_bytes_counts_each_tokens_copy() -> None:
    lkg = LastKnownGood(max_bytes=10, max_entry_bytes=10)
    store(lkg, ALICE, b"123456")
    store(lkg, BOB, b"1234")
    assert lkg.bytes_stored == 10
    store(lkg, NONE, b"1")
    assert lkg.bytes_stored == 5
    assert len(lkg) == 2
    assert body(lkg, ALICE) is None
    lkg.clear()
    assert (len(lkg), lkg.bytes_stored) == (0, 0)
    assert body(lkg, BOB) is None


def test_the_digest_is_computed_from_the_request_headers_at_store_and_lookup() -> None:
    # The integrations hand in the request's headers.get; nothing else says who asked.
    seen: list[str] = []

    def spy(name: str) -> str | None:
        seen.append(name)
        return "Bearer alice" if name == "authorization" else None

    lkg = LastKnownGood()
    store(lkg, spy)
    assert {"authorization", "cookie", "proxy-authorization"} <= set(seen)
    assert body(lkg, ALICE) == b"body"


# -- what a response may be stored with -------------------------------------------------------

PRIVATE = "Cache-Control: private on a request without credentials"


@pytest.mark.parametrize(
    ("headers", "credentialed", "honor_no_store", "reason"),
    [
        (NONE, False, True, None),
        (hdrs(cache_control="private"), False, True, PRIVATE),
        (hdrs(cache_control="private"), True, True, None),
        (hdrs(cache_control='private="Set-Cookie", max-age=60'), True, True, None),
        (hdrs(cache_control="no-store"), True, True, "Cache-Control: no-store"),
        (hdrs(cache_control="no-store"), False, False, None),
        (hdrs(cache_control="no-store, private"), False, False, PRIVATE),
        (hdrs(cache_control="no-store, private"), True, False, None),
        (hdrs(set_cookie="lb=1"), False, True, None),
        (hdrs(vary="*"), True, False, "Vary: *"),
        (hdrs(vary="Accept , *"), False, True, "Vary: *"),
    ],
)
def test_refusal(
    headers: Getter, credentialed: bool, honor_no_store: bool, reason: str | None
) -> None:
    lkg = LastKnownGood(honor_no_store=honor_no_store)
    assert lkg.refusal(200, headers, credentialed) == reason


@pytest.mark.parametrize("status", [100, 199, 206, 300, 304, 404, 500])
def test_refusal_of_a_status(status: int) -> None:
    assert LastKnownGood().refusal(status, NONE, True) == f"status {status}"


def test_response_storable_asks_the_request_for_credentials() -> None:
    lkg = LastKnownGood()
    private = hdrs(cache_control="private")
    assert not lkg.response_storable(200, private)
    assert not lkg.response_storable(200, private, NONE)
    assert lkg.response_storable(200, private, ALICE)


def test_honor_no_store_defaults_to_true_and_must_be_a_bool() -> None:
    assert LastKnownGood().honor_no_store is True
    assert LastKnownGood(honor_no_store=False).honor_no_store is False
    for bad in (0, 1, "no", None):
        with pytest.raises(ValueError, match=r"LastKnownGood\.honor_no_store must be a bool"):
            LastKnownGood(honor_no_store=bad)  # type: ignore[arg-type]


def test_set_cookie_is_stripped_from_what_is_stored() -> None:
    lkg = LastKnownGood()
    headers = [
        ("Content-Type", "text/plain"),
        ("Set-Cookie", "lb=node-7; Path=/"),
        ("set-cookie", "session=secret"),
        ("Set-Cookie2", "old=1"),
        ("ETag", '"1"'),
    ]
    store(lkg, headers=headers)
    entry = lkg.lookup(URL, NONE)
    assert entry is not None
    assert entry.headers == (("Content-Type", "text/plain"), ("ETag", '"1"'))


def test_vary_star_on_a_second_field_line_is_not_stored(caplog: pytest.LogCaptureFixture) -> None:
    # A client whose headers.get gives the first line only (aiohttp) shows "Accept".
    caplog.set_level(logging.DEBUG, logger="circuitbreaker_http")
    lkg = LastKnownGood()
    store(lkg, headers=[("Vary", "Accept"), ("Vary", "*")])
    assert len(lkg) == 0
    assert [r.getMessage() for r in caplog.records] == [
        f"Last-Known-Good did not store the response to {URL}: Vary: *"
    ]


@pytest.mark.parametrize(
    ("options", "size", "limit"),
    [({"max_entry_bytes": 4}, 5, "max_entry_bytes"), ({"max_bytes": 4}, 5, "max_bytes")],
)
def test_a_body_too_large_is_logged(
    caplog: pytest.LogCaptureFixture, options: dict[str, Any], size: int, limit: str
) -> None:
    caplog.set_level(logging.DEBUG, logger="circuitbreaker_http")
    lkg = LastKnownGood(**options)
    store(lkg, content=b"x" * size)
    assert len(lkg) == 0
    [record] = caplog.records
    assert record.name == "circuitbreaker_http" and record.levelno == logging.DEBUG
    assert record.msg == "Last-Known-Good did not store the response to %s: %s"
    assert record.args == (URL, f"a body of {size} bytes, over {limit}")


def test_max_age_still_applies_to_credentialed_copies() -> None:
    clock = ManualClock()
    lkg = LastKnownGood(max_age=10, clock=clock)
    store(lkg, ALICE)
    clock.advance(10.5)
    assert body(lkg, ALICE) is None


def test_request_eligible_is_about_the_method_only() -> None:
    assert LastKnownGood.request_eligible("GET")
    assert LastKnownGood.request_eligible("HEAD", ALICE)
    assert not LastKnownGood.request_eligible("POST", NONE)
