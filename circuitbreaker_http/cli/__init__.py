"""The ``circuitbreaker-http`` command (also ``python -m circuitbreaker_http``).

Each command lives in a module of its own and is imported only when it runs,
so ``--help`` and ``--version`` need no extra installed.
"""

from __future__ import annotations

import argparse

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="circuitbreaker-http",
        description="circuitbreaker-http command line.",
    )
    parser.add_argument("--version", action="version", version=f"circuitbreaker-http {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo",
        help="run the demo: a flaky loopback upstream and an httpx client through the breakers",
    )
    demo.add_argument(
        "--duration", type=float, default=30.0, help="seconds to run (default 30, min 2, max 600)"
    )
    demo.add_argument(
        "--rate",
        type=float,
        default=20.0,
        help="requests per second per host (default 20, max 200)",
    )
    from ._ops import add_ops
    from ._simulate import add_simulate, add_tune

    add_ops(commands)
    add_simulate(commands)
    add_tune(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line.

    Args:
        argv: The arguments after the command's name (``sys.argv[1:]`` when ``None``).

    Returns:
        The exit status: 0 ok, 1 failed, 2 bad usage, 130 interrupted (Ctrl-C).
    """
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command in ("simulate", "tune"):
        from ._simulate import run_simulate, run_tune

        return run_simulate(args) if args.command == "simulate" else run_tune(args)
    if args.command in ("status", "open", "disable", "reset"):
        from ._ops import run_ops

        return run_ops(args)
    if not 2.0 <= args.duration <= 600.0:
        parser.error("--duration must be between 2 and 600 seconds")
    if not 0.5 <= args.rate <= 200.0:
        parser.error("--rate must be between 0.5 and 200")
    try:
        import httpx  # noqa: F401
    except ImportError:
        parser.exit(2, 'the demo needs httpx: pip install "circuitbreaker-http[demo]"\n')
    from ._demo import run_demo

    try:
        return run_demo(duration=args.duration, rate=args.rate)
    except KeyboardInterrupt:
        # Ctrl-C before the demo's own loop (which stops cleanly) or during its
        # summary: exit as an interrupted command does, without a traceback.
        return 130
