"""The simulate and tune commands: table, JSON, a PNG, tune --write loading back, errors."""

from __future__ import annotations

import itertools
import json
import struct
from pathlib import Path

import pytest

from circuitbreaker_http import BreakerRegistry
from circuitbreaker_http.cli import main
from circuitbreaker_http.simulate import scenario, simulate, tune

SMALL = ["--scenario", "outage", "--duration", "120", "--rate", "10", "--seed", "3"]


def test_simulate_prints_a_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", *SMALL]) == 0
    out = capsys.readouterr().out
    header = out.splitlines()[0].split()
    assert header[:5] == ["key", "config", "requests", "reached", "short"]
    line = next(x for x in out.splitlines() if x.startswith("https://api.example.com"))
    requests, reached, short = (int(v) for v in line.split()[2:5])
    assert requests == reached + short and short > 0
    assert "outages of https://api.example.com:" in out


def test_simulate_json_with_two_config_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "lax.toml").write_text("[default]\nconsecutive_failures = 50\nfailure_rate = 0.9\n")
    (tmp_path / "tight.toml").write_text("[default]\nconsecutive_failures = 2\n")
    argv = [
        "simulate",
        *SMALL,
        "--json",
        "--config",
        str(tmp_path / "lax.toml"),
        "--config",
        str(tmp_path / "tight.toml"),
    ]
    assert main(argv) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["configs"] == ["lax", "tight"]
    lax, tight = data["totals"]
    assert tight["failures_reached"] < lax["failures_reached"]
    assert data["rows"] == lax["requests"]


def test_simulate_plot_writes_a_png(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("matplotlib")
    out = tmp_path / "outage.png"
    assert main(["simulate", *SMALL, "--plot", str(out)]) == 0
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])  # the IHDR chunk
    assert 800 <= width <= 2000 and 300 <= height <= 2000
    assert len(data) > 20_000
    assert f"plot written to {out}" in capsys.readouterr().out


def test_simulate_reads_a_log_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "log.csv"
    log.write_text("timestamp,key,status,duration\n0,k,503,0.1\n1,k,oops,0.1\n2,k,200,0.1\n")
    assert main(["simulate", str(log)]) == 0
    out = capsys.readouterr().out
    assert "skipped 1 rows" in out and "log.csv:3: bad status 'oops'" in out
    assert main(["simulate", str(log), "--strict"]) == 1
    assert capsys.readouterr().err.strip().endswith("log.csv:3: bad status 'oops'")


def test_usage_errors_are_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "give either a LOG or --scenario NAME" in err
    assert main(["tune", *SMALL, "--objective", "best"]) == 2
    assert "unknown objective 'best'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stopped:
        main(["simulate", "--scenario", "meltdown"])
    assert stopped.value.code == 2


def test_missing_files_and_bad_configs_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["simulate", str(tmp_path / "nope.log")]) == 1
    assert "nope.log: no such file" in capsys.readouterr().err
    bad = tmp_path / "bad.toml"
    bad.write_text("[default]\nfailure_rat = 0.5\n")
    assert main(["simulate", *SMALL, "--config", str(bad)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "bad.toml" in err and "failure_rat" in err


def test_tune_writes_a_file_that_loads_back(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "rules.toml"
    argv = [
        "tune",
        "--scenario",
        "flapping",
        "--duration",
        "200",
        "--rate",
        "10",
        "--samples",
        "5",
        "--processes",
        "2",
        "--write",
        str(target),
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "recommended (knee):" in out and "on the frontier" in out
    loaded = BreakerRegistry.from_file(target).default
    # The written file is the recommendation: replaying it gives its score again.
    result = tune(scenario("flapping", duration=200, rate=10), samples=5, processes=1)
    assert loaded == result.recommended.config
    again = simulate(scenario("flapping", duration=200, rate=10), configs=loaded).totals()
    assert again.failures_reached == result.recommended.failures_reached
    assert again.healthy_refused == result.recommended.healthy_refused


def test_tune_frontier_and_objectives() -> None:
    source = scenario("slow_recovery", duration=200, rate=10, seed=2)
    knee = tune(source, samples=12, processes=1, seed=4)
    assert knee.candidates[0].name == "start" and len(knee.candidates) == 13
    front = knee.frontier
    assert all(
        a.failures_reached <= b.failures_reached and a.healthy_refused > b.healthy_refused
        for a, b in itertools.pairwise(front)
    )
    for c in knee.candidates:  # nothing off the frontier beats a frontier point on both
        assert any(
            f.failures_reached <= c.failures_reached and f.healthy_refused <= c.healthy_refused
            for f in front
        )
    strict = tune(source, samples=12, processes=1, seed=4, objective="cost:0")
    assert strict.recommended.failures_reached == front[0].failures_reached
    lenient = tune(source, samples=12, processes=1, seed=4, objective="cost:1000")
    assert lenient.recommended.healthy_refused == front[-1].healthy_refused
    assert tune(source, samples=12, processes=1, seed=4).as_dict() == knee.as_dict()
