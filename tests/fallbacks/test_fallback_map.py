"""A ``fallback`` mapping, without a client: patterns, specificity, the per-key cache, checks.

Through every client: ``tests/clients/test_clients_fallbacks.py``.
"""

from __future__ import annotations

from typing import Any

import pytest

from circuitbreaker_http import (
    BreakerConfig,
    BreakerRegistry,
    FallbackResponse,
    LastKnownGood,
    _outcome,
)
from circuitbreaker_http._outcome import FallbackMap, Gate, check_fallback

A, B, C, D = (FallbackResponse(status) for status in (501, 502, 503, 504))


def compiled(mapping: dict[str, Any]) -> FallbackMap:
    result = check_fallback(mapping, True, "TheClient")
    assert isinstance(result, FallbackMap)
    return result


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("https://api.example.com", B),  # exact host over the glob listed first
        ("https://eu.example.com", A),
        ("https://example.com", None),  # "*.example.com" does not match the bare domain
        ("https://api.example.com/v1/payments/{id}", C),  # a path over none
        ("http://127.0.0.1:8080", D),
        ("http://127.0.0.1:9090", None),  # a pattern with a port matches that port only
        ("https://other.test", None),  # no pattern: raise
        ("not-a-url", None),
    ],
)
def test_each_key_gets_its_most_specific_patterns_fallback(key: str, expected: object) -> None:
    fallbacks = compiled(
        {
            "*.example.com": A,
            "api.example.com": B,
            "api.example.com/v1/payments/*": C,
            "127.0.0.1:8080": D,
        }
    )
    assert fallbacks.get(key) is expected
    assert fallbacks.get(key) is expected  # the cached answer is the same


def test_the_same_specificity_as_rules() -> None:
    # Whatever rules pick for a key, the fallback mapping picks the same pattern.
    patterns = ["*", "*.example.com", "api.example.com", "*.example.com/v1/*", "api.*", "*:8443"]
    registry = BreakerRegistry(
        rules={p: BreakerConfig(open_duration=10.0 + i) for i, p in enumerate(patterns)}
    )
    fallbacks = compiled({p: FallbackResponse(500 + i) for i, p in enumerate(patterns)})
    for key in (
        "https://api.example.com",
        "https://api.example.com:8443",
        "https://eu.example.com/v1/x",
        "https://api.other",
        "http://h:8443",
        "http://plain",
    ):
        index = int(registry.config_for(key).open_duration - 10.0)
        answer = fallbacks.get(key)
        assert isinstance(answer, FallbackResponse)
        assert answer.status_code == 500 + index, key


def test_a_key_that_is_not_a_url_matches_only_a_pattern_equal_to_it() -> None:
    fallbacks = compiled({"reports": A, "*": B})
    assert fallbacks.get("reports") is A
    assert fallbacks.get("reports-v2") is None  # not even "*"
    assert fallbacks.get("http://reports") is A  # a URL key: "reports" is its host


def test_the_per_key_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_outcome, "_FALLBACK_CACHE_MAX", 8)
    fallbacks = compiled({"*.test": A})
    for n in range(100):
        assert fallbacks.get(f"http://h{n}.test") is A
        assert len(fallbacks._cache) <= 8


def test_a_key_is_matched_once_then_served_from_the_cache() -> None:
    fallbacks = compiled({"*.test": A})
    calls = 0
    rule = fallbacks._rules[0]

    class Counting:
        def __getattr__(self, name: str) -> Any:
            return getattr(rule, name)

        def matches(self, key: str, parts: Any) -> bool:
            nonlocal calls
            calls += 1
            return rule.matches(key, parts)

    fallbacks._rules = (Counting(),)  # type: ignore[assignment]
    for _ in range(5):
        assert fallbacks.get("http://api.test") is A
    assert calls == 1


def test_its_last_known_goods_each_once() -> None:
    one, two = LastKnownGood(), LastKnownGood()
    fallbacks = compiled({"a.test": one, "b.test": A, "c.test": one, "d.test": two})
    assert fallbacks.lkgs == (one, two)
    assert compiled({"a.test": A}).lkgs == ()


def test_a_gate_gives_each_key_its_fallback() -> None:
    lkg = LastKnownGood()
    fallbacks = compiled({"a.test": lkg, "b.test": A})
    gate = Gate(BreakerRegistry(), fallbacks, lambda: 0.0, lambda r: ("GET", "u"))
    assert gate.lkg is lkg  # some key stores: responses need a tee
    assert gate.fallback_of("http://a.test") is lkg
    assert gate.fallback_of("http://b.test") is A
    assert gate.fallback_of("http://c.test") is None
    none_stores = Gate(BreakerRegistry(), compiled({"*": A}), lambda: 0.0, lambda r: ("", ""))
    assert none_stores.lkg is None  # the hot path needs no tee at all
    single = Gate(BreakerRegistry(), lkg, lambda: 0.0, lambda r: ("", ""))
    assert single.fallback_of("anything") is lkg


def test_a_tee_only_for_the_keys_whose_fallback_is_a_last_known_good() -> None:
    one, two = LastKnownGood(), LastKnownGood()
    gate = Gate(
        BreakerRegistry(),
        compiled({"one.test": one, "two.test": two, "*": A}),
        lambda: 0.0,
        lambda r: ("GET", "u"),
    )

    def tee(key: str) -> Any:
        return gate.tee_for(key, "GET", key + "/x", lambda name: None, 200, "OK", list)

    assert tee("http://one.test").lkg is one
    assert tee("http://two.test").lkg is two
    assert tee("http://three.test") is None
    assert tee("other") is None


# -- checked when built ------------------------------------------------------------------------


def test_an_empty_mapping_raises_for_every_key() -> None:
    assert compiled({}).get("http://a.test") is None


def test_none_in_a_mapping_means_raise() -> None:
    fallbacks = compiled({"*": A, "private.test": None})
    assert fallbacks.get("http://private.test") is None
    assert fallbacks.get("http://public.test") is A


@pytest.mark.parametrize("pattern", [1, None, b"api.test", ("a", "b")])
def test_a_pattern_must_be_a_str(pattern: Any) -> None:
    with pytest.raises(
        TypeError, match=r"TheClient: the patterns of a fallback mapping must be str"
    ):
        check_fallback({pattern: A}, True, "TheClient")


@pytest.mark.parametrize(
    ("pattern", "says"),
    [
        ("", "must be a non-empty str"),
        ("[::1:8080", "unclosed '\\['"),
        ("h:80x", "bad port '80x'"),
        (":8080", "has no host"),
    ],
)
def test_a_bad_pattern_is_a_value_error_naming_it(pattern: str, says: str) -> None:
    with pytest.raises(ValueError, match=rf"^TheClient: fallback mapping: .*{says}") as caught:
        check_fallback({"*": A, pattern: B}, True, "TheClient")
    assert "rules:" not in str(caught.value)


def test_the_message_shows_the_signature_of_a_callable_of_the_wrong_shape() -> None:
    def fallback(request: object) -> None: ...

    with pytest.raises(TypeError) as caught:
        check_fallback({"api.test": fallback}, False, "TheClient")
    message = str(caught.value)
    assert message.startswith(
        "TheClient: fallback['api.test'] must be a fallback callable taking (request, error), got "
    )
    assert message.endswith("with the signature (request: 'object') -> 'None'")


def test_the_values_are_checked_before_the_patterns() -> None:
    # A wrong value is named by its pattern even when another pattern is bad too.
    with pytest.raises(TypeError, match=r"fallback\['a.test'\]"):
        check_fallback({"a.test": 42, "": A}, True, "TheClient")


def test_a_mapping_is_checked_as_the_client_is_async_or_not() -> None:
    async def fallback(request: object, error: object) -> None: ...

    assert isinstance(check_fallback({"*": fallback}, True, "TheClient"), FallbackMap)
    with pytest.raises(TypeError, match=r"^TheClient cannot await .*: fallback\['\*'\] is"):
        check_fallback({"*": fallback}, False, "TheClient")
