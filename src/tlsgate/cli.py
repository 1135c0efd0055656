"""The ``tlsgate`` command line. The only place that calls ``sys.exit``.

Exit status: 0 success, 2 usage or config error, 1 any other failure
(DESIGN.md §4).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from tlsgate import __version__
from tlsgate.errors import CertificateError, ConfigError, ConfigProblem, TlsgateError

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


def _default_config() -> str:
    return os.environ.get("TLSGATE_CONFIG") or "tlsgate.toml"


def _add_config_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-c",
        "--config",
        default=None,
        metavar="FILE",
        help="config file (default: $TLSGATE_CONFIG or ./tlsgate.toml)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tlsgate",
        description="A TLS-first load balancer: terminate TLS, route HTTP, keep certificates.",
    )
    parser.add_argument("--version", action="version", version=f"tlsgate {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("serve", help="run a node", description="Run a node until SIGTERM/SIGINT.")
    _add_config_arg(p)

    p = sub.add_parser(
        "check",
        help="validate a config",
        description="Validate a config file and its certificates; print every problem.",
    )
    _add_config_arg(p)

    p = sub.add_parser(
        "demo",
        help="run a self-contained demo node",
        description=(
            "Start three demo app servers and a node in front of them with a certificate "
            "from a throwaway local CA; print what to try."
        ),
    )
    p.add_argument("--data-dir", default="tlsgate-demo", type=Path, help="default: ./tlsgate-demo")
    p.add_argument("--https-port", type=int, default=8443)
    p.add_argument("--http-port", type=int, default=8080)
    p.add_argument(
        "--app-ports",
        default="9001,9002,9003",
        help="three comma-separated ports for the demo app servers",
    )
    return parser


def _print_problems(problems: Sequence[ConfigProblem]) -> None:
    for p in problems:
        print(f"error: {p}", file=sys.stderr)


def cmd_check(path: str) -> int:
    from tlsgate.certs.bundle import check_certificate_files
    from tlsgate.config.loader import load_config
    from tlsgate.features import unsupported_features

    try:
        config = load_config(path)
    except ConfigError as exc:
        _print_problems(exc.problems)
        print(f"{path}: {len(exc.problems)} problem(s)", file=sys.stderr)
        return EXIT_USAGE
    problems = unsupported_features(config) + check_certificate_files(config)
    if problems:
        _print_problems(problems)
        print(f"{path}: {len(problems)} problem(s)", file=sys.stderr)
        return EXIT_USAGE
    print(
        f"{path}: configuration OK ({len(config.listeners)} listener(s), "
        f"{len(config.routes)} route(s), {len(config.backends)} backend(s), "
        f"{len(config.certificates)} certificate(s))"
    )
    return EXIT_OK


def cmd_serve(path: str) -> int:
    from tlsgate.supervisor import serve

    try:
        return serve(path)
    except ConfigError as exc:
        _print_problems(exc.problems)
        return EXIT_USAGE
    except CertificateError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except TlsgateError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILURE


def cmd_demo(args: argparse.Namespace) -> int:
    from tlsgate.demo import run_demo

    try:
        ports = tuple(int(p) for p in str(args.app_ports).split(","))
    except ValueError:
        ports = ()
    if len(ports) != 3:
        print("error: --app-ports takes three comma-separated port numbers", file=sys.stderr)
        return EXIT_USAGE
    status: int = run_demo(
        args.data_dir,
        https_port=args.https_port,
        http_port=args.http_port,
        app_ports=(ports[0], ports[1], ports[2]),
    )
    return status


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "check":
            return cmd_check(args.config or _default_config())
        if args.command == "serve":
            return cmd_serve(args.config or _default_config())
        return cmd_demo(args)  # the subparsers admit only these three
    except KeyboardInterrupt:
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
