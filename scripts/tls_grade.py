"""Grade a default tlsgate https listener with testssl.sh (``make tls-grade``).

How this works: a throwaway local CA (``tlsgate.ca.local.LocalCA``) issues an
ECDSA P-256 and an RSA 2048 certificate for ``tlsgate.test``; a node is started
with what a user writes for an https listener and nothing more -- a ``bind``,
the two ``[[certificates]]`` files and a backend (``tlsgate.demo_app``) -- so
every TLS setting is tlsgate's default. testssl.sh (the Debian package, 3.0.8)
then runs its default set of checks against it (everything but ``-E`` and
``-g``: protocols, cipher categories, forward secrecy, server preferences,
server defaults and certificates, HTTP headers, vulnerabilities, each cipher,
client simulations), 80 to 200 s on two cores:

* ``--ip 127.0.0.1 --nodns none``: connect to the node, send ``tlsgate.test`` as
  SNI and check the certificates against that name, look nothing up in DNS;
* ``--add-ca CA``: testssl adds the throwaway CA to each trust store it checks
  (Mozilla, Apple, Linux, Microsoft, Java), so the chain of trust is judged as it
  would be for a certificate from a CA the clients know; a chain-of-trust
  finding is then a real one;
* ``--jsonfile``, ``--warnings batch``, ``--quiet``, ``--color 0``. No
  ``--severity``: the OK and INFO findings are kept in the record, since they
  are what documents the defaults (protocols, ciphers, groups, tickets).

Each finding at MEDIUM or above is attributable to tlsgate unless it matches an
entry of :data:`NOT_TLSGATE`, a short list of (finding id, finding text) pairs,
each with the party responsible and why; there is no blanket ignore. A WARN is a
check that did not run. :data:`EXPECTED_WARNINGS` are facts about the scanning
machine; :data:`SCANNER_RACES` are checks testssl 3.0.8 cannot run reliably (its
ticket resumption check races TLS 1.3's post-handshake tickets), which the
script then runs itself with ``openssl s_client`` (:func:`recheck`); any other
WARN makes the run incomplete.

The record (the node's config, versions, the summary, each finding at MEDIUM or
above with its verdict, and testssl's findings as it wrote them) goes to
``bench/results/tls-grade-<UTC time>.json``, testssl's console output beside it
as ``.log``. ``--keep`` leaves the node up after the scan, until Ctrl-C, and
keeps its work directory.

Exit status: 0 when no finding at MEDIUM or above is attributable to tlsgate
and the scan completed, 1 when one is, 2 when the run could not grade (testssl
missing or failed, the node did not start, a check did not run).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tlsgate import keyfiles
from tlsgate.ca.local import LeafKeyType, LocalCA

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
HOST = "tlsgate.test"  # the certificates' name, sent as SNI; never resolved
NAMES = (HOST, "localhost")
READY_LINE = "tlsgate ready"

# testssl's severities, most severe first; WARN and FATAL are scan problems
SEVERITIES = ("CRITICAL", "HIGH", "MEDIUM", "LOW", "OK", "INFO", "WARN", "FATAL")
GATING = ("CRITICAL", "HIGH", "MEDIUM")
# testssl exits with 242..255 when it could not scan at all (ERR_CHILD..ERR_BASH);
# below that its status counts problems, which the findings say better
TESTSSL_FATAL_STATUS = 242


class GradeError(Exception):
    """The run cannot produce a grade (exit status 2)."""


@dataclass(frozen=True)
class Finding:
    """One entry of testssl's flat JSON (``--jsonfile``)."""

    id: str
    severity: str
    finding: str
    ip: str = ""
    port: str = ""
    cve: str = ""
    cwe: str = ""
    hint: str = ""


@dataclass(frozen=True)
class Attribution:
    """A finding that is not tlsgate's: who is responsible for it, and why.

    ``id`` and ``finding`` are regular expressions that must match the whole
    finding id (testssl numbers certificates: ``cert_revocation <cert#2>``) and
    the whole finding text.
    """

    id: str
    finding: str
    party: str
    reason: str

    def matches(self, finding: Finding) -> bool:
        return bool(
            re.fullmatch(self.id, finding.id) and re.fullmatch(self.finding, finding.finding)
        )


NOT_TLSGATE: tuple[Attribution, ...] = (
    Attribution(
        id=r"cert_revocation( <cert#\d+>)?",
        finding=r"Neither CRL nor OCSP URI provided",
        party="the throwaway test CA",
        reason=(
            "tlsgate.ca.local.LocalCA issues leaves without a CRL distribution point or "
            "an OCSP URI; a public CA puts them in the certificate, tlsgate serves the "
            "certificate files it is given as they are"
        ),
    ),
    Attribution(
        id=r"security_headers",
        finding=r"--",
        party="the app server",
        reason=(
            "testssl looks for X-Frame-Options, Content-Security-Policy, "
            "X-Content-Type-Options and the like in the response to /: the "
            "application's headers, which tlsgate relays as the app server sends them "
            "(it adds only Strict-Transport-Security, when the listener sets hsts); "
            "the backend of this run, tlsgate.demo_app, sends none"
        ),
    ),
)

EXPECTED_WARNINGS: dict[str, str] = {
    "engine_problem": (
        "the scanning machine's /usr/bin/openssl has no GOST engine: testssl cannot "
        "offer GOST ciphers, which no mainstream client does either"
    ),
}


# WARNs of checks that testssl 3.0.8 cannot run reliably, and that this script
# runs itself instead (:func:`recheck`): finding id -> (finding text, why)
SCANNER_RACES: dict[str, tuple[str, str]] = {
    "sessionresumption_ticket": (
        r"check failed because of connect problem",
        "testssl 3.0.8 runs `openssl s_client -sess_out` with its input at EOF, so "
        "s_client quits right after the handshake, often before the server's TLS 1.3 "
        "NewSessionTicket has arrived; the session it saves is empty and the resuming "
        "connection fails. On the development machine 21 of 60 such s_client runs saved "
        "nothing against tlsgate, 19 of 60 against nginx 1.22 with the same certificate. "
        "The script checks ticket resumption itself: s_client kept open for a second, "
        "then -sess_in, TLS 1.2 and TLS 1.3",
    ),
}


@dataclass(frozen=True)
class Recheck:
    """The script's own run of a check testssl could not complete."""

    id: str
    passed: bool
    detail: str


@dataclass(frozen=True)
class Verdict:
    """A finding at MEDIUM or above and whether it is tlsgate's."""

    finding: Finding
    tlsgate: bool
    party: str
    reason: str


@dataclass(frozen=True)
class Grade:
    counts: dict[str, int]
    verdicts: tuple[Verdict, ...]
    low: tuple[Finding, ...]
    expected_warnings: tuple[Finding, ...]
    rechecks: tuple[Recheck, ...]
    problems: tuple[str, ...]  # why the scan is incomplete; empty when it completed

    @property
    def attributable(self) -> tuple[Verdict, ...]:
        return tuple(v for v in self.verdicts if v.tlsgate)

    @property
    def exit_status(self) -> int:
        if self.attributable:
            return 1
        return 2 if self.problems else 0


# --------------------------------------------------------------------------- findings


def parse_findings(text: str) -> list[Finding]:
    """testssl's flat JSON (a list of objects with id/severity/finding) as findings.

    Raises:
        GradeError: not that format (testssl was cut short, or another version).
    """
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise GradeError(f"testssl's JSON is unreadable (cut short?): {exc}") from None
    if not isinstance(data, list):
        raise GradeError("testssl's JSON is not a list of findings (was it --jsonfile-pretty?)")
    findings = []
    for n, entry in enumerate(data):
        if not isinstance(entry, dict) or not all(
            isinstance(entry.get(key), str) for key in ("id", "severity", "finding")
        ):
            raise GradeError(f"testssl's finding #{n} has no id, severity and finding: {entry!r}")
        if entry["severity"] not in SEVERITIES:
            raise GradeError(f"testssl's finding {entry['id']!r}: unknown severity {entry!r}")
        findings.append(
            Finding(**{k: str(v) for k, v in entry.items() if k in Finding.__dataclass_fields__})
        )
    return findings


def classify(finding: Finding) -> Verdict:
    """Whether a finding is tlsgate's: it is, unless :data:`NOT_TLSGATE` says otherwise."""
    for entry in NOT_TLSGATE:
        if entry.matches(finding):
            return Verdict(finding, tlsgate=False, party=entry.party, reason=entry.reason)
    return Verdict(
        finding,
        tlsgate=True,
        party="tlsgate",
        reason="no entry of NOT_TLSGATE matches: a tlsgate default or behaviour",
    )


def races(findings: Sequence[Finding]) -> list[str]:
    """The ids of the WARNs that are :data:`SCANNER_RACES`, for :func:`recheck`."""
    return [
        f.id
        for f in findings
        if f.severity == "WARN"
        and f.id in SCANNER_RACES
        and re.fullmatch(SCANNER_RACES[f.id][0], f.finding)
    ]


def grade(findings: Sequence[Finding], rechecks: Sequence[Recheck] = ()) -> Grade:
    """Count, classify, and tell whether every check ran (here or in ``rechecks``)."""
    counts = Counter(f.severity for f in findings)
    problems = []
    expected = []
    raced = races(findings)
    done = {r.id: r for r in rechecks}
    for f in findings:
        if f.severity == "FATAL":
            problems.append(f"testssl gave up: {f.id}: {f.finding}")
        elif f.severity != "WARN":
            continue
        elif f.id in EXPECTED_WARNINGS:
            expected.append(f)
        elif f.id in raced and f.id in done:
            if not done[f.id].passed:
                problems.append(
                    f"{f.id}: testssl could not run it, nor could the script: {done[f.id].detail}"
                )
        else:
            problems.append(f"a check did not run: {f.id}: {f.finding}")
    if not any(f.id == "scanTime" for f in findings):
        problems.append("testssl did not finish (its scanTime entry is missing)")
    return Grade(
        counts={s: counts.get(s, 0) for s in SEVERITIES},
        verdicts=tuple(classify(f) for f in findings if f.severity in GATING),
        low=tuple(f for f in findings if f.severity == "LOW"),
        expected_warnings=tuple(expected),
        rechecks=tuple(r for r in rechecks if r.id in raced),
        problems=tuple(problems),
    )


def offered(findings: Sequence[Finding], rechecks: Sequence[Recheck] = ()) -> dict[str, str]:
    """What the listener offered, from the OK/INFO findings that say it (by testssl id).

    A check testssl could not run shows the script's own result instead.
    """
    by_id = {f.id: f.finding for f in findings}
    for r in rechecks:
        by_id[r.id] = f"{'' if r.passed else 'FAILED: '}{r.detail} (the script's check)"
    protocols = ("SSLv2", "SSLv3", "TLS1", "TLS1_1", "TLS1_2", "TLS1_3")
    shown = {
        "protocols": ", ".join(f"{p} {by_id[p]}" for p in protocols if p in by_id),
        "TLS 1.2 ciphers (server order)": by_id.get("cipherorder_TLSv1_2", "none"),
        "TLS 1.3 ciphers (server order)": by_id.get("cipherorder_TLSv1_3", "none"),
        "server cipher order": by_id.get("cipher_order", "?"),
        "ECDHE groups": by_id.get("PFS_ECDHE_curves", "none"),
        "finite-field groups": by_id.get("DH_groups", "none"),
        "ALPN": by_id.get("ALPN", "?"),
        "session tickets": by_id.get("TLS_session_ticket", "?"),
        "resumption (ticket / ID)": (
            f"{by_id.get('sessionresumption_ticket', '?')} / "
            f"{by_id.get('sessionresumption_ID', '?')}"
        ),
        "secure renegotiation / client-initiated": (
            f"{by_id.get('secure_renego', '?')} / {by_id.get('secure_client_renego', '?')}"
        ),
        "compression (CRIME)": by_id.get("CRIME_TLS", "?"),
        "HSTS": by_id.get("HSTS", "?"),
    }
    stapling = sorted({v for k, v in by_id.items() if k.startswith("OCSP_stapling")})
    shown["OCSP stapling"] = ", ".join(stapling) or "?"
    return shown


def report_lines(result: Grade, findings: Sequence[Finding]) -> list[str]:
    """The summary by severity, the verdicts, the defaults seen, and the outcome."""
    lines = ["", "severity   findings"]
    for severity in SEVERITIES:
        lines.append(f"{severity:<10} {result.counts[severity]:>8}")
    lines += ["", "findings at MEDIUM or above:"]
    for v in result.verdicts:
        who = "ATTRIBUTABLE TO TLSGATE" if v.tlsgate else f"not tlsgate's: {v.party}"
        lines.append(f"  {v.finding.severity:<8} {v.finding.id}: {v.finding.finding}")
        lines.append(f"           {who} -- {v.reason}")
    if not result.verdicts:
        lines.append("  none")
    lines += ["", "LOW findings:"]
    lines += [f"  {f.id}: {f.finding}" for f in result.low] or ["  none"]
    for f in result.expected_warnings:
        lines.append(f"expected warning {f.id}: {EXPECTED_WARNINGS[f.id]}")
    for r in result.rechecks:
        outcome = "passed" if r.passed else "FAILED"
        lines.append(f"testssl could not run {r.id} ({SCANNER_RACES[r.id][1]})")
        lines.append(f"  the script's own check {outcome}: {r.detail}")
    lines += ["", "what the listener offered:"]
    lines += [f"  {k:<42} {v}" for k, v in offered(findings, result.rechecks).items()]
    lines.append("")
    if result.attributable:
        lines.append(
            f"FAIL: {len(result.attributable)} finding(s) at MEDIUM or above attributable "
            "to tlsgate"
        )
    if result.problems:
        lines.append("INCOMPLETE: " + "; ".join(result.problems) + " -- run it again")
    if not result.attributable and not result.problems:
        lines.append("PASS: no finding at MEDIUM or above is attributable to tlsgate")
    return lines


# --------------------------------------------------------------------------- versions


def _run_text(cmd: Sequence[str], cwd: Path | None = None) -> str:
    try:
        done = subprocess.run(
            cmd, capture_output=True, text=True, errors="replace", timeout=60, cwd=cwd, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return re.sub(r"\x1b\[[0-9;]*m", "", done.stdout + done.stderr)


def versions(testssl: str, workdir: Path) -> dict[str, str]:
    """testssl's and both OpenSSLs' versions, and the tlsgate commit.

    testssl is asked in ``workdir``: run inside a git work tree it shows that
    tree's commit as its own.
    """
    banner = _run_text([testssl, "--version"], cwd=workdir)
    found = re.search(r"testssl\s+(\S+)\s+from", banner)
    scanner_openssl = re.search(r'Using "([^"(]+?)\s*(?:\(|")', banner)
    package = _run_text(["dpkg-query", "-W", "-f=${Version}", "testssl.sh"]).strip()
    commit = _run_text(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"]).strip()
    dirty = subprocess.run(
        ["git", "-C", str(REPO), "diff", "--quiet", "HEAD", "--", "src"], check=False
    ).returncode
    return {
        "testssl": found.group(1) if found else "?",
        "testssl_package": package or "?",
        "scanner_openssl": scanner_openssl.group(1) if scanner_openssl else "?",
        "server_openssl": ssl.OPENSSL_VERSION,
        "python": sys.version.split()[0],
        "tlsgate_commit": (commit or "?") + (" (src/ modified)" if dirty == 1 else ""),
    }


# --------------------------------------------------------------------------- the node


@dataclass(frozen=True)
class Pki:
    ca_file: Path
    config: str  # the [[certificates]] tables


def write_pki(directory: Path) -> Pki:
    """A throwaway CA and an ECDSA P-256 + RSA 2048 certificate for :data:`NAMES`."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    ca = LocalCA.create("tls-grade throwaway CA")
    ca_file = directory / "ca.pem"
    keyfiles.write_public(ca_file, ca.cert_pem)
    tables = []
    kinds: tuple[tuple[str, LeafKeyType], ...] = (("ecdsa", "ecdsa-p256"), ("rsa", "rsa-2048"))
    for name, key_type in kinds:
        issued = ca.issue(list(NAMES), key_type=key_type)
        cert_file, key_file = directory / f"{name}.pem", directory / f"{name}.key"
        keyfiles.write_public(cert_file, issued.chain_pem)
        keyfiles.write_private(key_file, issued.key_pem)
        tables.append(
            "[[certificates]]\n"
            f'name = "{name}"\n'
            f"domains = {json.dumps(list(NAMES))}\n"
            f"cert_file = {json.dumps(str(cert_file))}\n"
            f"key_file = {json.dumps(str(key_file))}\n"
        )
    return Pki(ca_file, "\n".join(tables))


def node_config(data_dir: Path, pki: Pki, port: int, app_port: int) -> str:
    """What a user writes for an https listener; every TLS setting is left at its default."""
    return (
        "[node]\n"
        f"data_dir = {json.dumps(str(data_dir))}\n\n"
        f"{pki.config}\n"
        "[[listeners]]\n"
        'name = "https"\n'
        f'bind = "127.0.0.1:{port}"\n'
        'protocol = "https"\n'
        'backend = "app"\n\n'
        "[[backends]]\n"
        'name = "app"\n'
        f'servers = ["127.0.0.1:{app_port}"]\n'
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def start(cmd: Sequence[str], log: Path, cwd: Path) -> subprocess.Popen[bytes]:
    """A process in a session of its own (one process group to end), output to ``log``."""
    with log.open("ab") as out:
        return subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=cwd,
        )


def stop(proc: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """SIGTERM the process group, SIGKILL it after ``grace`` s; never raises."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(grace)
            # the leader is gone; make sure nothing of its group is left
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            return
        except subprocess.TimeoutExpired:
            continue


def wait_ready(proc: subprocess.Popen[bytes], log: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while READY_LINE not in log.read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-3000:]
            raise GradeError(f"tlsgate did not start (see {log}):\n{tail}")
        time.sleep(0.1)


@contextlib.contextmanager
def running_node(workdir: Path, pki: Pki) -> Iterator[int]:
    """The app server and the node, stopped (process groups) whatever happens; yields the port."""
    app_port, port = free_port(), free_port()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        app_cmd = [sys.executable, "-m", "tlsgate.demo_app", "--port", str(app_port)]
        procs.append(start([*app_cmd, "--name", "app"], workdir / "app.log", workdir))
        config = workdir / "tlsgate.toml"
        config.write_text(node_config(workdir / "data", pki, port, app_port))
        log = workdir / "tlsgate.log"
        procs.append(
            start([sys.executable, "-m", "tlsgate", "serve", "-c", str(config)], log, workdir)
        )
        wait_ready(procs[-1], log)
        yield port
    finally:
        for proc in reversed(procs):
            stop(proc)


# --------------------------------------------------------------------------- testssl


def find_testssl(given: str | None) -> str:
    for name in [given] if given else ["testssl", "testssl.sh"]:
        path = shutil.which(name)
        if path:
            return path
    raise GradeError("testssl.sh is not installed: run `make system-deps` (Debian: testssl.sh)")


def testssl_command(testssl: str, port: int, ca_file: Path, json_file: Path) -> list[str]:
    return [
        testssl,
        "--quiet",
        "--color",
        "0",
        "--warnings",
        "batch",
        "--connect-timeout",
        "10",
        "--nodns",
        "none",
        "--ip",
        "127.0.0.1",
        "--add-ca",
        str(ca_file),  # testssl splits the list on commas and spaces: no space in the path
        "--jsonfile",
        str(json_file),
        f"{HOST}:{port}",
    ]


def run_testssl(cmd: Sequence[str], log: Path, cwd: Path, timeout: float) -> int:
    """Run testssl to its end (or ``timeout``), its console output to ``log``."""
    proc = start(cmd, log, cwd)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        raise GradeError(f"testssl took more than {timeout:g}s; its output: {log}") from None
    finally:
        stop(proc, grace=2.0)


def resumes_with_ticket(port: int, protocol: str, workdir: Path) -> str:
    """``openssl s_client`` saves a session (held open 1 s for the ticket) and resumes it.

    Returns:
        "" when the second connection said ``Reused``, else what went wrong.
    """
    session = workdir / f"session{protocol}"
    session.unlink(missing_ok=True)
    base = ["openssl", "s_client", protocol, "-connect", f"127.0.0.1:{port}"]
    base += ["-servername", HOST]
    first = subprocess.Popen(
        [*base, "-sess_out", str(session)],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(1.0)  # a TLS 1.3 ticket comes after the handshake: let s_client read it
    try:
        first.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        first.kill()
        first.wait()
        return "the first s_client did not finish"
    if not session.exists() or session.stat().st_size == 0:
        return "no session was saved"
    second = subprocess.run(
        [*base, "-sess_in", str(session)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        errors="replace",
        timeout=10,
        check=False,
    )
    reused = re.search(r"^(Reused|New), (TLSv1\.[23])", second.stdout, re.MULTILINE)
    if reused is None:
        return f"the second s_client failed (exit status {second.returncode})"
    return "" if reused.group(1) == "Reused" else "the server made a new session"


def recheck(finding_id: str, port: int, workdir: Path) -> Recheck:
    """Run the check behind a :data:`SCANNER_RACES` WARN here; three tries per protocol."""
    assert finding_id == "sessionresumption_ticket", finding_id
    results = []
    for protocol in ("-tls1_2", "-tls1_3"):
        errors = []
        for _ in range(3):
            error = resumes_with_ticket(port, protocol, workdir)
            if not error:
                break
            errors.append(error)
        name = protocol.lstrip("-").replace("_", ".").upper().replace("TLS", "TLS ")
        if len(errors) == 3:
            return Recheck(finding_id, False, f"{name}: {'; '.join(errors)}")
        results.append(f"{name} resumed" + (f" after {errors}" if errors else ""))
    return Recheck(finding_id, True, "ticket resumption: " + ", ".join(results))


# --------------------------------------------------------------------------- main


def write_record(path: Path, record: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    tmp.replace(path)


def wait_for_interrupt(port: int, workdir: Path) -> None:
    print(
        f"\n--keep: the node is up at https://{HOST}:{port}/ (127.0.0.1); e.g.\n"
        f"  curl --cacert {workdir}/ca.pem --resolve {HOST}:{port}:127.0.0.1 "
        f"https://{HOST}:{port}/\n"
        f"  config, certificates and logs: {workdir}\n"
        "Ctrl-C (or SIGTERM) stops it.",
        flush=True,
    )
    got: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, _frame: got.append(signum))
    try:
        while not got:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)


def grade_once(args: argparse.Namespace, workdir: Path) -> int:
    testssl = find_testssl(args.testssl)
    info = versions(testssl, workdir)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    out = Path(args.out)
    record_path = out / f"tls-grade-{stamp}.json"
    pki = write_pki(workdir)
    with running_node(workdir, pki) as port:
        json_file = workdir / "testssl.json"
        log = out / f"tls-grade-{stamp}.log"
        out.mkdir(parents=True, exist_ok=True)
        cmd = testssl_command(testssl, port, pki.ca_file, json_file)
        print(
            f"tls-grade: testssl {info['testssl']} ({info['scanner_openssl']}) against "
            f"tlsgate {info['tlsgate_commit']} ({info['server_openssl']}) on "
            f"https://{HOST}:{port}/ -- 1 to 4 minutes",
            flush=True,
        )
        started = time.monotonic()
        status = run_testssl(cmd, log, workdir, args.timeout)
        seconds = time.monotonic() - started
        if status >= TESTSSL_FATAL_STATUS:
            raise GradeError(f"testssl failed with exit status {status}; its output: {log}")
        if not json_file.exists():
            raise GradeError(f"testssl wrote no findings; its output: {log}")
        findings = parse_findings(json_file.read_text(errors="replace"))
        result = grade(findings, [recheck(r, port, workdir) for r in races(findings)])
        print("\n".join(report_lines(result, findings)))
        record = {
            "date": stamp,
            "seconds": round(seconds, 1),
            "versions": info,
            "command": [Path(cmd[0]).name, *cmd[1:]],
            "tlsgate_config": (workdir / "tlsgate.toml").read_text(),
            "summary": result.counts,
            "offered": offered(findings, result.rechecks),
            "at_or_above_medium": [
                {**asdict(v.finding), "tlsgate": v.tlsgate, "party": v.party, "reason": v.reason}
                for v in result.verdicts
            ],
            "rechecks": [asdict(r) for r in result.rechecks],
            "incomplete": list(result.problems),
            "exit_status": result.exit_status,
            "testssl_findings": [asdict(f) for f in findings],
        }
        write_record(record_path, record)
        print(f"record: {record_path}\ntestssl output: {log}", flush=True)
        if args.keep:
            wait_for_interrupt(port, workdir)
    return result.exit_status


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="scripts/tls_grade.py",
        description=(
            "Start a tlsgate node with a default https listener, grade it with "
            "testssl.sh, and fail if a finding at MEDIUM or above is tlsgate's."
        ),
        epilog="Exit status: 0 pass, 1 a finding attributable to tlsgate, 2 could not grade.",
    )
    parser.add_argument("--keep", action="store_true", help="leave the node up until Ctrl-C")
    parser.add_argument("--out", default=str(RESULTS), help="where the record goes (%(default)s)")
    parser.add_argument("--testssl", help="the testssl.sh program (default: testssl on PATH)")
    parser.add_argument(
        "--timeout", type=float, default=900.0, help="give up on testssl after this (s)"
    )
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="tls-grade-"))  # no space: testssl's --add-ca
    try:
        return grade_once(args, workdir)
    except GradeError as exc:
        print(f"tls-grade: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tls-grade: interrupted", file=sys.stderr)
        return 130
    finally:
        if args.keep:
            print(f"kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
