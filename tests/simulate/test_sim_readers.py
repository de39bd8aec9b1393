"""The log readers on small samples of each real format, bad rows included."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from circuitbreaker_http.simulate import CANCELLED, LogError, Request, detect_format, read_log

CSV = """timestamp,url,status,error,duration,method
1700000000.0,https://api.example.com/a,200,,0.05,get
1700000000.5,https://api.example.com/b,,ReadTimeout,5,POST
1700000001,https://api.example.com/c,abc,,0.1,GET
2023-11-14T22:13:22Z,https://api.example.com/d,503,,0.2,
1700000003,https://api.example.com/e,200,,,GET
1700000004,https://api.example.com/f,200
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_csv_rows_and_skipped_rows_name_their_line(tmp_path: Path) -> None:
    source = read_log(write(tmp_path, "log.csv", CSV))
    rows = list(source)
    assert rows == [
        Request(1700000000.0, "https://api.example.com/a", None, "GET", 200, None, 0.05),
        Request(1700000000.5, "https://api.example.com/b", None, "POST", None, "ReadTimeout", 5.0),
        Request(1700000002.0, "https://api.example.com/d", None, "GET", 503, None, 0.2),
    ]
    stats = source.stats
    assert (stats.rows, stats.skipped) == (3, 3)
    assert stats.reasons[0].endswith("log.csv:4: bad status 'abc'")
    assert stats.reasons[1].endswith("log.csv:6: no duration")
    assert stats.reasons[2].endswith("log.csv:7: 3 fields where the header has 6")


def test_csv_strict_raises_at_the_first_bad_row(tmp_path: Path) -> None:
    source = read_log(write(tmp_path, "log.csv", CSV), strict=True)
    with pytest.raises(LogError) as caught:
        list(source)
    assert caught.value.line == 4
    assert "log.csv:4: bad status 'abc'" in str(caught.value)


def test_csv_header_without_the_columns_is_an_error_of_the_file(tmp_path: Path) -> None:
    source = read_log(write(tmp_path, "log.csv", "when,where\n1,2\n"))
    with pytest.raises(LogError, match=r"log\.csv:1: CSV header lacks timestamp, url or key"):
        list(source)


def test_json_lines_with_keys_and_rfc3339(tmp_path: Path) -> None:
    lines = [
        {
            "timestamp": "2024-05-01T12:00:00.250+02:00",
            "key": "payments",
            "status": 502,
            "duration": 0.3,
        },
        {"timestamp": 10, "url": "http://x.test/", "error": "ConnectError", "duration": "0.01"},
        "not json",
        {"timestamp": 11, "url": "http://x.test/", "status": 200, "duration": -1},
        [1, 2],
    ]
    text = "\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines)
    source = read_log(write(tmp_path, "log.jsonl", text + "\n\n"))
    assert source.format == "jsonl"
    rows = list(source)
    assert rows[0] == Request(1714557600.25, "", "payments", "GET", 502, None, 0.3)
    assert rows[1] == Request(10.0, "http://x.test/", None, "GET", None, "ConnectError", 0.01)
    assert len(rows) == 2
    assert source.stats.skipped == 3
    assert ":3: not JSON" in source.stats.reasons[0]
    assert ":4: bad duration -1" in source.stats.reasons[1]
    assert ":5: expected a JSON object, got list" in source.stats.reasons[2]


NGINX = (
    '203.0.113.7 - - [14/Nov/2023:22:13:20 +0000] "GET /v1/items?page=2 HTTP/1.1" 200 512'
    ' "-" "curl/8.4.0" 0.120\n'
    '203.0.113.7 - alice [14/Nov/2023:22:13:21 +0000] "POST /v1/pay HTTP/1.1" 502 157'
    ' "https://shop.example/" "Mozilla/5.0 (X11; Linux x86_64)" 1.002 1.001\n'
    '203.0.113.9 - - [14/Nov/2023:22:13:21 +0000] "GET /v1/slow HTTP/2.0" 499 0 "-" "k6" 30.000\n'
    "this is not an access log line\n"
    '203.0.113.9 - - [14/Nov/2023:22:13:22 +0000] "GET / HTTP/1.1" 200 1 "-" "k6" -\n'
)


def test_nginx_combined_with_request_time(tmp_path: Path) -> None:
    path = write(tmp_path, "access.log", NGINX)
    assert detect_format(path) == "nginx"
    source = read_log(path, base_url="https://shop.example")
    rows = list(source)
    end = 1700000000.0  # 14/Nov/2023:22:13:20 +0000
    assert rows[0] == Request(
        end - 0.12, "https://shop.example/v1/items?page=2", None, "GET", 200, None, 0.12
    )
    # The line is written when the request ends: it started $request_time earlier.
    assert rows[1] == Request(
        end + 1 - 1.002, "https://shop.example/v1/pay", None, "POST", 502, None, 1.002
    )
    assert rows[2].error == CANCELLED and rows[2].status is None  # 499: the client gave up
    assert len(rows) == 3
    assert source.stats.skipped == 2
    assert "access.log:4: not an nginx combined line" in source.stats.reasons[0]
    assert "access.log:5: no $request_time" in source.stats.reasons[1]


ENVOY = [
    {
        "start_time": "2023-11-14T22:13:20.123Z",
        "method": "GET",
        "path": "/api/v1/locations",
        "protocol": "HTTP/1.1",
        "response_code": 200,
        "response_flags": "-",
        "bytes_received": 0,
        "bytes_sent": 312,
        "duration": 57,
        "upstream_service_time": "55",
        "x_forwarded_for": None,
        "user_agent": "curl/8.4.0",
        "request_id": "cc21d9b0-cf5c-432b-8c7e-98aeb7988cd2",
        "authority": "locations.internal:8080",
        "upstream_host": "10.0.2.1:80",
    },
    {
        "start_time": "2023-11-14T22:13:21.000Z",
        "method": "POST",
        "path": "/api/v1/locations",
        "response_code": 503,
        "response_flags": "UF,URX",
        "duration": "1003",
        "authority": "locations.internal:8080",
    },
    {
        "start_time": "2023-11-14T22:13:22.000Z",
        "path": "/api/v1/locations",
        "response_code": 0,
        "response_flags": "DC",
        "duration": 10,
        "authority": "locations.internal:8080",
    },
    {"start_time": "yesterday", "response_code": 200, "duration": 1, "authority": "a"},
    {"start_time": "2023-11-14T22:13:23Z", "response_code": 200, "duration": 1},
]


def test_envoy_json_access_log(tmp_path: Path) -> None:
    text = "\n".join(json.dumps(record) for record in ENVOY) + "\n"
    path = write(tmp_path, "envoy.log", text)
    assert detect_format(path) == "envoy"
    source = read_log(path)
    rows = list(source)
    assert rows[0] == Request(
        1700000000.123,
        "http://locations.internal:8080/api/v1/locations",
        None,
        "GET",
        200,
        None,
        0.057,
    )
    # An upstream failure flag is the outcome, whatever status Envoy made up.
    assert (rows[1].status, rows[1].error, rows[1].duration) == (None, "UF,URX", 1.003)
    assert rows[2].error == CANCELLED
    assert len(rows) == 3
    assert source.stats.skipped == 2
    assert "envoy.log:4: bad timestamp 'yesterday'" in source.stats.reasons[0]
    assert "envoy.log:5: no authority" in source.stats.reasons[1]


def test_a_source_reads_its_file_anew_each_time(tmp_path: Path) -> None:
    source = read_log(write(tmp_path, "log.csv", CSV))
    assert list(source) == list(source)
    assert source.stats.rows == 3


def test_unknown_format_and_undetectable_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown log format 'xml'"):
        read_log(write(tmp_path, "a.log", "x"), "xml")
    with pytest.raises(ValueError, match="cannot tell the log's format"):
        read_log(write(tmp_path, "b.log", "hello\n"))
