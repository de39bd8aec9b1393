"""Per-request options: ``options()`` as a contextvar, and merging ``request.extensions``."""

from __future__ import annotations

import asyncio
import contextvars
import sys
import threading
import types
from typing import Any

import pytest

from circuitbreaker_http import RequestOptions, options
from circuitbreaker_http._options import EXTENSION, current_options, request_options


def test_outside_any_block_there_are_no_options() -> None:
    assert current_options() is None
    assert EXTENSION == "circuit_breaker"


def test_defaults() -> None:
    assert RequestOptions() == RequestOptions(bypass=False, key=None)


def test_a_block_sets_and_restores() -> None:
    with options(bypass=True) as opts:
        assert opts == RequestOptions(bypass=True, key=None)
        assert current_options() is opts
    assert current_options() is None
    with options(key="payments") as opts:
        assert opts == RequestOptions(bypass=False, key="payments")
        assert current_options() == opts
    assert current_options() is None


def test_an_empty_block_sets_the_defaults() -> None:
    with options() as opts:
        assert opts == RequestOptions()
        assert current_options() == RequestOptions()
    assert current_options() is None


def test_the_block_is_restored_when_it_raises() -> None:
    with pytest.raises(KeyError), options(bypass=True):
        raise KeyError("x")
    assert current_options() is None


def test_nesting_overrides_only_the_fields_set() -> None:
    with options(key="outer"):
        with options(bypass=True) as inner:
            assert inner == RequestOptions(bypass=True, key="outer")
            with options(key="innermost") as innermost:
                assert innermost == RequestOptions(bypass=True, key="innermost")
            with options(bypass=False) as unbypassed:
                assert unbypassed == RequestOptions(bypass=False, key="outer")
            with options() as same:
                assert same == inner
            assert current_options() == inner
        assert current_options() == RequestOptions(bypass=False, key="outer")
    assert current_options() is None


def test_options_takes_its_arguments_by_position_too() -> None:
    # API.md writes options(bypass=False, key=None), with no keyword-only marker.
    with options(True, "k") as value:
        assert value == RequestOptions(bypass=True, key="k")


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"bypass": "yes"}, "bypass"),
        ({"bypass": 1}, "bypass"),
        ({"bypass": 0}, "bypass"),
        ({"key": 5}, "key"),
        ({"key": b"payments"}, "key"),
        ({"key": ("a",)}, "key"),
    ],
)
def test_bad_types_raise_type_error_naming_the_field(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(TypeError, match=f"options: {field} must be"), options(**kwargs):
        pass  # pragma: no cover - never entered
    assert current_options() is None


def test_a_bad_inner_block_leaves_the_outer_in_force() -> None:
    with options(key="outer") as outer:
        with pytest.raises(TypeError), options(key=5):  # type: ignore[arg-type]
            pass  # pragma: no cover - never entered
        assert current_options() is outer


# -- threads: each has its own context ---------------------------------------------


def _run_in_thread(fn: Any) -> Any:
    result: list[Any] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            result.append(fn())
        except BaseException as exc:  # pragma: no cover - re-raised below
            errors.append(exc)

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return result[0]


# Python 3.14 can make new threads inherit the caller's context (free-threaded default).
INHERITS = bool(getattr(sys.flags, "thread_inherit_context", 0))


@pytest.mark.skipif(INHERITS, reason="threads inherit the context on this interpreter")
def test_a_new_thread_does_not_inherit_the_block() -> None:
    with options(bypass=True, key="k"):
        assert _run_in_thread(current_options) is None


def test_a_thread_sees_the_block_when_the_context_is_copied() -> None:
    with options(bypass=True, key="k"):
        ctx = contextvars.copy_context()
    assert current_options() is None
    assert _run_in_thread(lambda: ctx.run(current_options)) == RequestOptions(True, "k")


def test_a_threads_block_stays_in_that_thread() -> None:
    entered = threading.Event()
    release = threading.Event()
    seen: list[RequestOptions | None] = []

    def worker() -> None:
        with options(key="thread"):
            entered.set()
            release.wait(5)
            seen.append(current_options())

    with options(key="main"):
        thread = threading.Thread(target=worker)
        thread.start()
        assert entered.wait(5)
        assert current_options() == RequestOptions(key="main")
        release.set()
        thread.join()
    assert seen == [RequestOptions(key="thread")]
    assert current_options() is None


# -- asyncio: each task runs in a copy of its creator's context -----------------


def test_asyncio_tasks_copy_the_context() -> None:
    async def child() -> RequestOptions | None:
        seen = current_options()
        with options(bypass=True):  # changes the task's own copy only
            await asyncio.sleep(0)
        return seen

    async def main() -> None:
        with options(key="outer"):
            task = asyncio.create_task(child())
        # Created inside the block, the task keeps it after the block has ended.
        assert current_options() is None
        assert await task == RequestOptions(key="outer")
        assert current_options() is None
        with options(key="again"):
            assert await asyncio.create_task(child()) == RequestOptions(key="again")
            assert current_options() == RequestOptions(key="again")

    asyncio.run(main())


def test_concurrent_tasks_do_not_see_each_others_blocks() -> None:
    async def main() -> None:
        a_entered = asyncio.Event()
        b_entered = asyncio.Event()

        async def a() -> RequestOptions | None:
            with options(key="a"):
                a_entered.set()
                await b_entered.wait()
                return current_options()

        async def b() -> RequestOptions | None:
            await a_entered.wait()
            with options(bypass=True):
                b_entered.set()
                await asyncio.sleep(0)
                return current_options()

        got = await asyncio.gather(a(), b())
        assert got == [RequestOptions(key="a"), RequestOptions(bypass=True)]
        assert current_options() is None

    asyncio.run(main())


# -- request_options: a request's extension over the options in force ------------


@pytest.mark.parametrize(
    ("extension", "expected"),
    [
        ({"bypass": True}, RequestOptions(bypass=True)),
        ({"key": "k"}, RequestOptions(key="k")),
        ({"bypass": True, "key": "k"}, RequestOptions(bypass=True, key="k")),
        ({}, RequestOptions()),
        ({"bypass": False}, RequestOptions()),
        # malformed values are ignored, never failing the request
        ({"bypass": "yes"}, RequestOptions()),
        ({"bypass": 1}, RequestOptions()),
        ({"key": 5}, RequestOptions()),
        ({"key": None}, RequestOptions()),
        ({"key": b"k"}, RequestOptions()),
        ({"other": 1}, RequestOptions()),
        (types.MappingProxyType({"key": "k"}), RequestOptions(key="k")),
    ],
)
def test_request_options_outside_a_block(extension: Any, expected: RequestOptions) -> None:
    assert request_options(extension) == expected


@pytest.mark.parametrize("extension", [None, "bypass", ["bypass"], 5, {"bypass"}, True])
def test_a_non_mapping_extension_is_ignored(extension: Any) -> None:
    assert request_options(extension) is None
    with options(key="outer") as outer:
        assert request_options(extension) is outer


@pytest.mark.parametrize(
    ("extension", "expected"),
    [
        ({}, RequestOptions(bypass=True, key="outer")),
        ({"bypass": False}, RequestOptions(bypass=False, key="outer")),
        ({"key": "inner"}, RequestOptions(bypass=True, key="inner")),
        ({"bypass": False, "key": "inner"}, RequestOptions(bypass=False, key="inner")),
        ({"bypass": "no", "key": 7}, RequestOptions(bypass=True, key="outer")),
    ],
)
def test_the_extension_wins_over_the_block(extension: Any, expected: RequestOptions) -> None:
    with options(bypass=True, key="outer"):
        assert request_options(extension) == expected
        # Merging never changes the options in force.
        assert current_options() == RequestOptions(bypass=True, key="outer")
