"""Instructions per httpx request in the request thread, with and without ``RedisStorage``.

A benchmark that prints, not a test. Timing cannot resolve the +0.5 µs aim of
a fleet's per-request overhead on a noisy 2-core machine; instruction counts
can. Each contender runs in its own process under ``valgrind --tool=callgrind
--separate-threads=yes`` twice (100 and 400 requests after a warm-up), and
the figure is the main thread's count difference over 300 requests, so the
syncer thread's rounds (which are not on the request path) are left out.

    .venv/bin/python benchmarks/bench_redis_instructions.py

Needs valgrind and a Redis on 127.0.0.1:6379.
"""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import tempfile
from pathlib import Path

URL = "http://bench.test/users/42"


def child(mode: str, n: int) -> None:
    """Send ``n`` requests through a breaker transport (after 50 to warm up)."""
    import httpx

    from circuitbreaker_http import BreakerRegistry
    from circuitbreaker_http.httpx import CircuitBreakerTransport

    storage = None
    if mode == "redis":
        import redis

        from circuitbreaker_http.redis import RedisStorage

        client = redis.Redis(host="127.0.0.1", port=6379)
        storage = RedisStorage(client, prefix=f"cbh-bench-ir-{os.getpid()}")
    registry = BreakerRegistry(storage=storage)
    inner = httpx.MockTransport(lambda request: httpx.Response(200, content=b"ok"))
    with httpx.Client(transport=CircuitBreakerTransport(inner, registry=registry)) as http:
        for _ in range(50):
            http.get(URL)
        gc.disable()
        for _ in range(n):
            http.get(URL)
    if storage is not None:
        storage.close()


def main_thread_ir(out: Path) -> int:
    """The instruction total of the main thread's callgrind file (``<out>-01``)."""
    for line in Path(f"{out}-01").read_text().splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise RuntimeError(f"no summary in {out}-01")


def main() -> None:
    """Run the four callgrind processes (two at a time) and print the table."""
    with tempfile.TemporaryDirectory() as tmp:
        runs = {(m, n): Path(tmp) / f"cg.{m}.{n}" for m in ("memory", "redis") for n in (100, 400)}
        env = {**os.environ, "PYTHONHASHSEED": "0"}
        procs = []
        for (mode, n), out in runs.items():
            cmd = [
                "valgrind",
                "--tool=callgrind",
                "--separate-threads=yes",
                f"--callgrind-out-file={out}",
                sys.executable,
                __file__,
                "--child",
                mode,
                str(n),
            ]
            procs.append(subprocess.Popen(cmd, env=env, stderr=subprocess.DEVNULL))
            if len(procs) == 2:
                for proc in procs:
                    proc.wait()
                procs = []
        per = {
            mode: (main_thread_ir(runs[(mode, 400)]) - main_thread_ir(runs[(mode, 100)])) / 300
            for mode in ("memory", "redis")
        }
    print("instructions per httpx request, request thread only (callgrind, 400 - 100 requests)")
    print(f"  memory-only registry   {per['memory']:12,.0f} Ir")
    print(f"  with RedisStorage      {per['redis']:12,.0f} Ir")
    diff = per["redis"] - per["memory"]
    print(f"  difference             {diff:+12,.0f} Ir  (layout noise is about +/-1,500 Ir)")
    print("  aim: <= +0.5 us per request (about +6,000 Ir at ~12 Ir/ns)")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        child(sys.argv[2], int(sys.argv[3]))
    else:
        main()
