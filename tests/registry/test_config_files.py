"""BreakerRegistry.from_file and from_mapping: shape, inheritance, keys, errors."""

from __future__ import annotations

import dataclasses
import importlib
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from circuitbreaker_http import BreakerConfig, BreakerRegistry, by_route
from circuitbreaker_http._config_file import TOML_EXTRA, _fields
from circuitbreaker_http.testing import ManualClock

ROOT = Path(__file__).resolve().parents[2]


def toml_parser() -> ModuleType | None:
    for name in ("tomllib", "tomli"):
        try:
            return importlib.import_module(name)
        except ModuleNotFoundError:
            pass
    return None


TOML = toml_parser()
# Python 3.10 without the toml extra: only the mapping tests and the error path run.
needs_toml = pytest.mark.skipif(TOML is None, reason="no tomllib, and tomli is not installed")


def write(tmp_path: Path, text: str, name: str = "rules.toml") -> Path:
    if TOML is None:
        pytest.skip("no tomllib, and tomli is not installed")
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def toml_value(value: object) -> str:
    """A BreakerConfig value as a file spells it (None is written ``false``)."""
    if value is None or isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, frozenset):
        return "[" + ", ".join(str(v) for v in sorted(value)) + "]"
    return repr(value)


def toml_table(config: BreakerConfig) -> str:
    return "".join(
        f"{field.name} = {toml_value(getattr(config, field.name))}\n"
        for field in dataclasses.fields(BreakerConfig)
        if field.name != "classify"
    )


# --- the shape and inheritance -------------------------------------------------------------


def test_an_empty_file_gives_the_defaults(tmp_path: Path) -> None:
    registry = BreakerRegistry.from_file(write(tmp_path, ""))
    assert registry.default == BreakerConfig()
    assert registry.rules == ()
    assert registry.get("https://any.example.com").config == BreakerConfig()


def test_default_sets_only_what_it_names(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        [default]
        failure_rate = 0.25
        open_duration = 12
        """,
    )
    registry = BreakerRegistry.from_file(path)
    assert registry.default == BreakerConfig(failure_rate=0.25, open_duration=12.0)
    assert registry.get("https://api.example.com").config is registry.default


def test_a_rule_inherits_every_field_it_does_not_set_from_default(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        [default]
        failure_rate = 0.5
        open_duration = 30
        consecutive_failures = 3
        failure_statuses = [500, 503]

        [rules."payments.example.com"]
        failure_rate = 0.2

        [rules."api.example.com/v1/reports/*"]
        slow_call_duration = 5.0
        consecutive_failures = false
        """,
    )
    registry = BreakerRegistry.from_file(path)
    default = BreakerConfig(
        failure_rate=0.5, open_duration=30.0, consecutive_failures=3, failure_statuses=[500, 503]
    )
    assert registry.default == default
    payments = registry.get("https://payments.example.com").config
    assert payments == default.replace(failure_rate=0.2)
    assert payments.open_duration == 30.0 and payments.failure_statuses == {500, 503}
    reports = registry.config_for("https://api.example.com/v1/reports/{name}")
    assert reports == default.replace(slow_call_duration=5.0, consecutive_failures=None)
    # A rule in Python replaces the default; only a file's rule inherits.
    assert reports != BreakerConfig(slow_call_duration=5.0, consecutive_failures=None)


def test_rule_patterns_match_as_rules_do(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        [default]
        minimum_calls = 20

        [rules."*.internal.example.com"]
        consecutive_failures = 7

        [rules."db.internal.example.com"]
        consecutive_failures = 2

        [rules."127.0.0.1:8080"]
        slow_call_duration = 0.5
        """,
    )
    registry = BreakerRegistry.from_file(path)

    def config(key: str) -> BreakerConfig:
        return registry.get(key).config

    assert config("https://cache.internal.example.com").consecutive_failures == 7
    assert config("https://db.internal.example.com").consecutive_failures == 2  # exact wins
    assert config("https://internal.example.com") == registry.default  # glob needs a label
    assert config("http://127.0.0.1:8080").slow_call_duration == 0.5
    assert config("http://127.0.0.1:8081") == registry.default
    assert {config(k).minimum_calls for k in ("https://a.b", "http://127.0.0.1:8080")} == {20}


@pytest.mark.parametrize("first", ["a*.example.com", "*i.example.com"])
def test_rules_keep_the_file_order_for_ties(tmp_path: Path, first: str) -> None:
    # Two globs of the same length both match: the one listed first wins.
    second = ({"a*.example.com", "*i.example.com"} - {first}).pop()
    text = f'[rules."{first}"]\nsuccess_threshold = 2\n[rules."{second}"]\nsuccess_threshold = 3\n'
    registry = BreakerRegistry.from_file(write(tmp_path, text))
    assert registry.config_for("https://api.example.com").success_threshold == 2


def test_keys_routes_build_a_route_key(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        [rules."127.0.0.1/users/{id}"]
        consecutive_failures = 2

        [rules."127.0.0.1/v1/reports/*"]
        slow_call_duration = 5.0

        [keys]
        routes = ["/users/{id}", "/users/me", "/v1/reports/{name}"]
        """,
    )
    registry = BreakerRegistry.from_file(path)
    key = registry.key
    assert key("GET", "http://127.0.0.1:8080/users/42") == "http://127.0.0.1:8080/users/{id}"
    assert key("GET", "http://127.0.0.1:8080/users/me") == "http://127.0.0.1:8080/users/me"
    assert key("GET", "http://127.0.0.1:8080/other") == "http://127.0.0.1:8080"
    users = registry.get(key("GET", "http://127.0.0.1:8080/users/42") or "")
    assert users.config.consecutive_failures == 2
    reports = key("GET", "http://127.0.0.1:8080/v1/reports/q3") or ""
    assert reports == "http://127.0.0.1:8080/v1/reports/{name}"
    assert registry.get(reports).config.slow_call_duration == 5.0
    assert registry.get("http://127.0.0.1:8080/users/me").config == registry.default


def test_without_keys_the_key_is_by_host_or_the_argument(tmp_path: Path) -> None:
    path = write(tmp_path, "[keys]\n")
    assert BreakerRegistry.from_file(path).key("GET", "https://A.example.com/x") == (
        "https://a.example.com"
    )
    route = by_route("/x/{id}")
    assert BreakerRegistry.from_file(path, key=route).key is route


def test_kwargs_reach_the_registry(tmp_path: Path) -> None:
    clock = ManualClock(100.0)
    changes: list[object] = []
    registry = BreakerRegistry.from_file(
        write(tmp_path, "[default]\nconsecutive_failures = 1\n"),
        max_breakers=3,
        clock=clock,
        on_state_change=changes.append,
    )
    assert registry.max_breakers == 3
    breaker = registry.get("https://a.example.com")
    with pytest.raises(RuntimeError):
        breaker.call(_boom)
    assert len(changes) == 1
    assert breaker.snapshot().at == 100.0


def _boom() -> None:
    raise RuntimeError("boom")


def test_an_unknown_registry_argument_is_a_type_error(tmp_path: Path) -> None:
    with pytest.raises(TypeError):
        BreakerRegistry.from_file(write(tmp_path, ""), max_breakrs=3)


def test_from_file_accepts_a_str_path(tmp_path: Path) -> None:
    path = write(tmp_path, "[default]\nminimum_calls = 3\n")
    assert BreakerRegistry.from_file(str(path)).default.minimum_calls == 3


def test_from_mapping_takes_the_same_shape() -> None:
    data = {
        "default": {"failure_rate": 0.3, "slow_call_duration": None},
        "rules": {"api.example.com": {"open_duration": 5}},
        "keys": {"routes": ["/items/{id}"]},
    }
    registry = BreakerRegistry.from_mapping(data)
    assert registry.default == BreakerConfig(failure_rate=0.3)
    assert registry.config_for("https://api.example.com") == registry.default.replace(
        open_duration=5.0
    )
    assert registry.key("GET", "https://x.io/items/1") == "https://x.io/items/{id}"


def test_a_subclass_builds_itself() -> None:
    class MyRegistry(BreakerRegistry):
        pass

    assert type(MyRegistry.from_mapping({})) is MyRegistry


# --- round trip of every field ---------------------------------------------------------------


def test_every_field_but_classify_can_be_set_from_a_file() -> None:
    # A field added to BreakerConfig with a type no file can spell shows up here.
    assert {name for name, spec in _fields().items() if spec.kind is None} == {"classify"}
    assert list(_fields()) == [field.name for field in dataclasses.fields(BreakerConfig)]


# A value other than the default for each field; fields BreakerConfig does not
# have (yet) are left out, those it has but this lacks keep their defaults.
CHANGED: dict[str, object] = {
    "consecutive_failures": None,
    "failure_rate": None,
    "minimum_calls": 4,
    "window": 12.5,
    "window_calls": 8,
    "slow_call_duration": 0.75,
    "slow_call_rate": 0.6,
    "open_duration": 2.0,
    "open_backoff": 1.5,
    "max_open_duration": 40.0,
    "open_jitter": 0.1,
    "half_open_max_calls": 3,
    "success_threshold": 5,
    "failure_statuses": frozenset({418, 503}),
    "respect_retry_after": False,
    "enforce": False,
}


def changed_config() -> BreakerConfig:
    names = {field.name for field in dataclasses.fields(BreakerConfig)}
    return BreakerConfig(**{name: v for name, v in CHANGED.items() if name in names})


@pytest.mark.parametrize(
    "config", [BreakerConfig(), changed_config()], ids=["defaults", "every-field-changed"]
)
def test_every_field_round_trips_through_a_file(tmp_path: Path, config: BreakerConfig) -> None:
    path = write(tmp_path, "[default]\n" + toml_table(config) + '[rules."a.example.com"]\n')
    registry = BreakerRegistry.from_file(path)
    assert registry.default == config
    assert registry.config_for("https://a.example.com") == config
    for field in dataclasses.fields(BreakerConfig):
        value = getattr(registry.default, field.name)
        assert type(value) is type(getattr(config, field.name)), field.name


def test_an_int_is_stored_as_a_float_in_a_float_field(tmp_path: Path) -> None:
    registry = BreakerRegistry.from_file(write(tmp_path, "[default]\nwindow = 60\n"))
    assert registry.default.window == 60.0 and type(registry.default.window) is float


def test_failure_statuses_becomes_a_frozenset(tmp_path: Path) -> None:
    path = write(tmp_path, "[default]\nfailure_statuses = [503, 500, 503]\n")
    assert BreakerRegistry.from_file(path).default.failure_statuses == frozenset({500, 503})


def test_a_mapping_may_give_any_collection_of_statuses() -> None:
    for statuses in ([502], (502,), {502}, frozenset({502})):
        data = {"default": {"failure_statuses": statuses}}
        assert BreakerRegistry.from_mapping(data).default.failure_statuses == {502}


# --- errors ------------------------------------------------------------------------------


def file_error(tmp_path: Path, text: str, **kwargs: Any) -> str:
    with pytest.raises(ValueError) as info:
        BreakerRegistry.from_file(write(tmp_path, text), **kwargs)
    return str(info.value)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("failure_rate = 'high'", "failure_rate: expected a number, got 'high'"),
        ("failure_rate = true", "failure_rate: expected a number or false (off)"),
        ("window = true", "window: expected a number, got True"),
        ("window = false", "window: expected a number, got False"),
        ("minimum_calls = 2.0", "minimum_calls: expected an integer, got 2.0"),
        ("minimum_calls = '3'", "minimum_calls: expected an integer, got '3'"),
        ("consecutive_failures = 2.5", "consecutive_failures: expected an integer"),
        ("respect_retry_after = 1", "respect_retry_after: expected true or false"),
        ("failure_statuses = 503", "failure_statuses: expected an array of integers"),
        (
            "failure_statuses = [500, '503']",
            "failure_statuses: expected an array of integers, got [500, '503']",
        ),
        ("failure_statuses = [true]", "failure_statuses: expected an array"),
        ("failur_rate = 0.3", "failur_rate: unknown field (did you mean failure_rate?)"),
        ("colour = 'red'", "colour: unknown field"),
        ("open_duration = 1e400", "open_duration must be a finite number"),
    ],
)
@pytest.mark.parametrize("in_rule", [False, True], ids=["default", "rule"])
def test_a_bad_field_names_the_file_the_table_and_the_field(
    tmp_path: Path, line: str, message: str, in_rule: bool
) -> None:
    header = '[rules."api.example.com"]' if in_rule else "[default]"
    text = f"{header}\n{line}\n"
    assert file_error(tmp_path, text).startswith(f"{tmp_path / 'rules.toml'}: {header} {message}")


def test_the_message_of_the_docs_example(tmp_path: Path) -> None:
    path = write(tmp_path, '[rules."api.example.com"]\nfailure_rate = "high"\n')
    with pytest.raises(ValueError) as info:
        BreakerRegistry.from_file(path)
    assert str(info.value) == (
        f"{path}: [rules.\"api.example.com\"] failure_rate: expected a number, got 'high'"
    )


def test_the_path_is_named_as_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path, "[default]\nwindow = 'long'\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=r"^rules\.toml: \[default\] window: "):
        BreakerRegistry.from_file("rules.toml")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        # BreakerConfig's own checks, with the file and the table in front.
        ("[default]\nfailure_rate = 1.5", "[default] failure_rate must be None or 0 < x <= 1"),
        ("[default]\nminimum_calls = 0", "[default] minimum_calls must be an int >= 1, got 0"),
        ("[default]\nfailure_statuses = [42]", "[default] failure_statuses must be HTTP statuses"),
        ("[default]\nwindow = nan", "[default] window must be a finite number"),
        # Valid alone, invalid with what the rule inherits: the rule is named.
        (
            '[default]\nopen_duration = 60\n[rules."a.example.com"]\nmax_open_duration = 30',
            '[rules."a.example.com"] max_open_duration must be a finite number >= open_duration',
        ),
    ],
)
def test_breaker_config_errors_get_the_file_and_table(
    tmp_path: Path, text: str, message: str
) -> None:
    assert file_error(tmp_path, text).startswith(f"{tmp_path / 'rules.toml'}: {message}")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[defaults]\nwindow = 1", "unknown table [defaults] (did you mean default?)"),
        ("[limits]\nwindow = 1", "unknown table [limits];"),
        ('[rule."a.com"]\nwindow = 1', "unknown table [rule] (did you mean rules?)"),
        ("failure_rate = 0.2", "top level failure_rate: BreakerConfig fields go under [default]"),
        ("title = 'x'", "unknown table [title];"),
        ("default = 5", "[default] must be a table of BreakerConfig fields, got 5"),
        ("rules = 5", '[rules] must hold [rules."pattern"] tables, got 5'),
        ("[rules]\n'a.com' = 0.5", '[rules."a.com"] must be a table of BreakerConfig fields'),
        ("keys = 5", "[keys] must be a table, got 5"),
        ("[keys]\nroute = ['/a']", "[keys] route: unknown field (did you mean routes?)"),
        ("[keys]\nroutes = '/a'", "[keys] routes: expected an array of strings, got '/a'"),
        ("[keys]\nroutes = ['/a', 1]", "[keys] routes: expected an array of strings"),
        ("[keys]\nroutes = []", "[keys] routes: "),
        ("[keys]\nroutes = ['users/{id}']", "[keys] routes: "),
        ('[rules."a.com:x"]\nwindow = 1', "[rules.\"a.com:x\"] bad pattern: bad port 'x'"),
        ('[rules.""]\nwindow = 1', '[rules.""] bad pattern: a pattern must be a non-empty str'),
        (
            "[rules.api.example.com]\nwindow = 1",
            '[rules."api"] example: unknown field (a pattern with dots must be quoted',
        ),
    ],
)
def test_a_bad_table_names_the_file_and_the_table(tmp_path: Path, text: str, message: str) -> None:
    assert file_error(tmp_path, text).startswith(f"{tmp_path / 'rules.toml'}: {message}")


def test_classify_cannot_come_from_a_file(tmp_path: Path) -> None:
    message = file_error(tmp_path, "[default]\nclassify = 'mymodule.classify'\n")
    assert message.startswith(f"{tmp_path / 'rules.toml'}: [default] classify: cannot be set")
    assert "BreakerConfig.replace(classify=" in message
    with pytest.raises(ValueError, match=r"^<mapping>: \[default\] classify: cannot be set"):
        BreakerRegistry.from_mapping({"default": {"classify": lambda call: None}})


def test_key_routes_and_a_key_argument_conflict(tmp_path: Path) -> None:
    message = file_error(tmp_path, "[keys]\nroutes = ['/a/{id}']\n", key=by_route("/b/{id}"))
    assert message.startswith(f"{tmp_path / 'rules.toml'}: [keys] routes and the key= argument")


@pytest.mark.parametrize("name", ["default", "rules"])
def test_default_or_rules_as_an_argument_is_a_type_error(tmp_path: Path, name: str) -> None:
    path = write(tmp_path, "")
    with pytest.raises(TypeError, match=f"^{name}=: the configuration gives these"):
        BreakerRegistry.from_file(path, **{name: {}})
    with pytest.raises(TypeError, match=f"^{name}=: the configuration gives these"):
        BreakerRegistry.from_mapping({}, **{name: {}})


def test_a_toml_syntax_error_names_the_file_and_the_line(tmp_path: Path) -> None:
    text = '[default]\nfailure_rate = 0.5\nopen_duration = \n[rules."a.com"]\n'
    message = file_error(tmp_path, text)
    assert message.startswith(f"{tmp_path / 'rules.toml'}: invalid TOML: ")
    assert "line 3" in message


def test_a_file_that_is_not_utf8_names_the_file(tmp_path: Path) -> None:
    write(tmp_path, "")  # skips without a parser
    path = tmp_path / "latin1.toml"
    path.write_bytes("[default]\n# caf\xe9\n".encode("latin-1"))
    with pytest.raises(ValueError, match=f"^{path}: not UTF-8 text"):
        BreakerRegistry.from_file(path)


@needs_toml
def test_a_missing_file_raises_file_not_found_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(FileNotFoundError) as info:
        BreakerRegistry.from_file(path)
    assert info.value.filename == str(path)


def test_mapping_errors_name_the_mapping() -> None:
    def error(data: Any) -> str:
        with pytest.raises(ValueError) as info:
            BreakerRegistry.from_mapping(data)
        return str(info.value)

    assert error([({})]).startswith("<mapping>: expected a mapping of tables")
    assert error({"default": {"window": "1"}}) == (
        "<mapping>: [default] window: expected a number, got '1'"
    )
    assert error({"default": {"minimum_calls": None}}).startswith(
        "<mapping>: [default] minimum_calls: expected an integer, got None"
    )
    assert error({"rules": {1: {}}}) == "<mapping>: [rules] 1: a pattern must be a string"
    assert error({"default": {1: 2}}).startswith("<mapping>: [default] 1: unknown field")
    assert error({"default": {"failure_statuses": "500"}}).startswith(
        "<mapping>: [default] failure_statuses: expected an array of integers"
    )


def test_the_first_error_leaves_nothing_half_built(tmp_path: Path) -> None:
    # A bad rule after good ones fails the whole call: no registry at all.
    text = '[rules."a.com"]\nwindow = 5\n[rules."b.com"]\nwindow = -1\n'
    assert '[rules."b.com"] window must be' in file_error(tmp_path, text)


# --- the TOML parser on Python 3.10 ------------------------------------------------------


def block_toml(monkeypatch: pytest.MonkeyPatch, tomli: object = None) -> None:
    # A None entry in sys.modules makes its import raise ModuleNotFoundError.
    monkeypatch.setitem(sys.modules, "tomllib", None)
    monkeypatch.setitem(sys.modules, "tomli", tomli)


def test_without_tomllib_or_tomli_the_error_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "rules.toml"  # not write(): this runs without a parser too
    path.write_text("[default]\n", encoding="utf-8")
    block_toml(monkeypatch)
    with pytest.raises(ImportError) as info:
        BreakerRegistry.from_file(path)
    assert TOML_EXTRA in str(info.value)
    assert 'pip install "circuitbreaker-http[toml]"' in str(info.value)
    assert str(path) in str(info.value)
    # A mapping needs no parser.
    assert BreakerRegistry.from_mapping({"default": {"window": 5}}).default.window == 5.0


def test_without_tomllib_tomli_is_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "[default]\nwindow = 7\n")
    calls: list[str] = []
    real = TOML

    class FakeTomli:
        @staticmethod
        def loads(text: str) -> dict[str, Any]:
            calls.append(text)
            assert real is not None
            result: dict[str, Any] = real.loads(text)
            return result

    block_toml(monkeypatch, FakeTomli)
    registry = BreakerRegistry.from_file(path)
    assert registry.default.window == 7.0
    assert calls == ["[default]\nwindow = 7\n"]


@needs_toml
def test_the_toml_extra_brings_tomli_before_python_311() -> None:
    assert TOML is not None
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    extras = TOML.loads(text)["project"]["optional-dependencies"]
    assert extras["toml"] == ["tomli>=2; python_version < '3.11'"]


def test_importing_the_package_loads_no_toml_parser() -> None:
    code = (
        "import sys, circuitbreaker_http\n"
        "assert 'tomllib' not in sys.modules, 'tomllib'\n"
        "assert 'circuitbreaker_http._config_file' not in sys.modules\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.stdout.strip() == "ok", done.stderr


# --- the example file ---------------------------------------------------------------------


@needs_toml
def test_the_example_file_loads() -> None:
    registry = BreakerRegistry.from_file(ROOT / "examples" / "breakers.toml")
    assert registry.rules
    reports = registry.key("GET", "http://127.0.0.1:1234/api/reports/q3") or ""
    assert reports.endswith("/api/reports/{name}")
    config: Callable[[str], BreakerConfig] = registry.config_for
    assert config(reports) != registry.default
    assert config(reports).open_duration == registry.default.open_duration  # inherited


@needs_toml
def test_the_example_shows_inheritance_and_a_rule_at_work() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "config_file.py")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "/api/users/42 -> short-circuited (open)" in done.stdout
    assert "/api/reports/q3 -> 503 (its rule allows more failures)" in done.stdout
