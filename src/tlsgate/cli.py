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
from typing import TYPE_CHECKING

from tlsgate import __version__
from tlsgate.errors import CertificateError, ConfigError, ConfigProblem, StoreError, TlsgateError

if TYPE_CHECKING:
    from tlsgate.certs import inventory as certs_inventory
    from tlsgate.config.model import Config

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
    _add_certs_parser(sub)
    return parser


# Kept literal so that building the parser imports nothing heavy; a unit test
# checks it against tlsgate.certs.inventory.REVOCATION_REASONS.
_REVOCATION_REASONS = ("unspecified", "keyCompromise", "superseded", "cessationOfOperation")


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0:
        raise argparse.ArgumentTypeError("must be more than 0 seconds")
    return value


def _add_certs_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "certs",
        help="the certificate inventory: list, show, renew, revoke, export",
        description=(
            "The certificates of a node's config: files are read from disk, ACME ones "
            "from the node's store. 'renew' asks the running node to renew (its "
            "listeners answer the challenges) and waits for the outcome."
        ),
    )
    actions = p.add_subparsers(dest="certs_command", metavar="ACTION")
    actions.required = True
    a = actions.add_parser(
        "list",
        help="every certificate: key types, expiry, next renewal, last error",
        description="Every [[certificates]] entry with its state (no private key is read).",
    )
    _add_config_arg(a)
    a.add_argument("--json", action="store_true", help="machine-readable output")
    a = actions.add_parser(
        "show",
        help="everything about one certificate",
        description="Names, issuer, serial, validity, chain and renewal state of one certificate.",
    )
    _add_config_arg(a)
    a.add_argument("name", metavar="NAME")
    a.add_argument("--json", action="store_true", help="machine-readable output")
    a = actions.add_parser(
        "renew",
        help="ask the running node to renew a certificate now",
        description=(
            "Write a renew request to the store; the running node renews (when due, or "
            "always with --force) and records the outcome, which is printed. Exit 1 if "
            "the renewal failed or no node took the request within --wait seconds."
        ),
    )
    _add_config_arg(a)
    a.add_argument("name", metavar="NAME")
    a.add_argument("--force", action="store_true", help="renew even if not due")
    a.add_argument(
        "--wait",
        type=_seconds,
        default=120.0,
        metavar="SECONDS",
        help="how long to wait for the node (default: 120)",
    )
    a = actions.add_parser(
        "revoke",
        help="revoke a certificate at the ACME CA",
        description=(
            "Revoke the current certificate(s) of an ACME certificate, signed with the "
            "node's ACME account key (needs the store key). The node keeps serving it "
            "until it is renewed: follow with 'tlsgate certs renew NAME --force'."
        ),
    )
    _add_config_arg(a)
    a.add_argument("name", metavar="NAME")
    a.add_argument(
        "--reason",
        choices=_REVOCATION_REASONS,
        default="unspecified",
        help="RFC 5280 reason (default: unspecified)",
    )
    a = actions.add_parser(
        "export",
        help="write fullchain.pem and privkey.pem",
        description=(
            "Write fullchain.pem (0644) and privkey.pem (0600) into DIR, or into "
            "DIR/<key-type>/ when the certificate has several key types. ACME "
            "certificates are unsealed from the store (needs the store key)."
        ),
    )
    _add_config_arg(a)
    a.add_argument("name", metavar="NAME")
    a.add_argument("--out", required=True, type=Path, metavar="DIR", help="output directory")


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
        # the same refusal `tlsgate check` reports (tlsgate.certs.bundle.servable_bundle)
        print(f"error: {exc}", file=sys.stderr)
        print(
            f"{path}: not started: a certificate cannot be served "
            f"('tlsgate check -c {path}' lists every problem)",
            file=sys.stderr,
        )
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


def cmd_certs(args: argparse.Namespace) -> int:
    import asyncio

    from tlsgate.config.loader import load_config

    path = args.config or _default_config()
    try:
        config = load_config(path)
        return asyncio.run(_certs(args, config))
    except ConfigError as exc:
        _print_problems(exc.problems)
        return EXIT_USAGE
    except TlsgateError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILURE


async def _certs(args: argparse.Namespace, config: Config) -> int:
    import json

    from tlsgate.certs import inventory as inv

    action: str = args.certs_command
    name: str = getattr(args, "name", "")
    # A wrong NAME is a usage error (exit 2), whatever the state of the store.
    if action in ("renew", "revoke"):
        inv.require_acme(config, name, action)
    elif action != "list":
        inv.find_certificate(config, name)
    if action in ("list", "show"):
        async with inv.node_store(config, unseal=False) as store:
            if action == "list":
                infos = await inv.list_certificates(config, store)
                if args.json:
                    print(json.dumps({"certificates": [i.to_json() for i in infos]}, indent=2))
                else:
                    print(inv.format_table(infos))
                return EXIT_OK
            info = await inv.describe_certificate(config, name, store)
        print(json.dumps(info.to_json(), indent=2) if args.json else inv.format_details(info))
        return EXIT_OK
    if action == "renew":
        async with inv.node_store(config, unseal=False) as store:
            if store is None:
                raise StoreError(
                    f"no store at {config.store.url}: no node has run with this config"
                )
            result = await inv.request_renewal(
                config, name, store, force=args.force, wait=args.wait
            )
        return _report_renewal(result, args.wait)
    if action == "revoke":
        async with inv.node_store(config, unseal=True) as store:
            if store is None:
                raise StoreError(f"no store at {config.store.url}: nothing was issued")
            results = await inv.revoke_certificate(config, name, store, reason=args.reason)
        failed = False
        for r in results:
            if r.error:
                failed = True
                print(
                    f"error: {name} ({r.key_type}) serial 0x{r.serial}: {r.error}", file=sys.stderr
                )
            else:
                print(f"{name} ({r.key_type}): revoked serial 0x{r.serial} ({args.reason})")
        if not failed:
            print(
                f"the node serves the revoked certificate until it is replaced: "
                f"tlsgate certs renew {name} --force"
            )
        return EXIT_FAILURE if failed else EXIT_OK
    # export
    async with inv.node_store(config, unseal=True) as store:
        exported = await inv.export_certificate(config, name, store, args.out)
    for e in exported:
        print(
            f"{name} ({e.key_type}): {e.fullchain}, {e.privkey} "
            f"(valid until {e.not_after:%Y-%m-%d %H:%M UTC})"
        )
    return EXIT_OK


def _report_renewal(result: certs_inventory.RenewalResult, wait: float) -> int:
    if not result.picked_up:
        print(
            f"error: no running node picked up the renew request for {result.name!r} "
            f"within {wait:g}s (is 'tlsgate serve' running with this config and store?); "
            "the request was withdrawn",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    renewed = set(result.renewed())
    for k in result.after:
        if k.last_error:
            print(
                f"error: {result.name} ({k.key_type}): renewal failed: {k.last_error}",
                file=sys.stderr,
            )
        elif k.key_type in renewed:
            until = f"{k.not_after:%Y-%m-%d %H:%M UTC}" if k.not_after else "?"
            since = f"{k.renew_at:%Y-%m-%d %H:%M UTC}" if k.renew_at else "?"
            print(
                f"{result.name} ({k.key_type}): renewed: sha256 {k.fingerprint_sha256[:16]}, "
                f"valid until {until}, next renewal from {since}"
            )
        else:
            print(f"{result.name} ({k.key_type}): not due, unchanged (renew anyway with --force)")
    return EXIT_OK if result.ok else EXIT_FAILURE


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "check":
            return cmd_check(args.config or _default_config())
        if args.command == "serve":
            return cmd_serve(args.config or _default_config())
        if args.command == "certs":
            return cmd_certs(args)
        return cmd_demo(args)  # the subparsers admit only these
    except KeyboardInterrupt:
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
