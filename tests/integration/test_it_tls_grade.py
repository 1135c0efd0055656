"""scripts/tls_grade.py's judgement of testssl.sh's findings, on a recorded scan.

``data/testssl-3.0.8-default-https.json`` is what testssl.sh 3.0.8 (Debian's
package, ``--jsonfile``) wrote scanning a default https listener of this
project (ECDSA + RSA certificates from a throwaway CA, ``--add-ca``), as
``make tls-grade`` runs it. The full scan takes about 80 s, so it is not part of
the test run; these tests take that recording and small edits of it through
the script's parser and grader: what passes, what is tlsgate's, what makes a
run incomplete. The node config the script writes is checked with tlsgate's own
loader: every TLS setting must be the default.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tlsgate.config.loader import parse_config

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "tls_grade.py"
RECORDED = Path(__file__).with_name("data") / "testssl-3.0.8-default-https.json"

# A WARN testssl 3.0.8 wrote in another scan of the same listener (one of eight):
# the ticket resumption check could not connect, so it did not run.
TICKET_CHECK_FAILED = {
    "id": "sessionresumption_ticket",
    "ip": "tlsgate.test/127.0.0.1",
    "port": "18443",
    "severity": "WARN",
    "finding": "check failed because of connect problem",
}


def _load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("tls_grade", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["tls_grade"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


tg = _load_script()


def recorded() -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = json.loads(RECORDED.read_text())
    return entries


def graded(entries: list[dict[str, Any]]) -> Any:
    return tg.grade(tg.parse_findings(json.dumps(entries)))


def replaced(entries: list[dict[str, Any]], finding_id: str, **fields: str) -> list[dict[str, Any]]:
    """``entries`` with the fields of the one whose id is ``finding_id`` replaced."""
    assert any(e["id"] == finding_id for e in entries), finding_id
    return [{**e, **fields} if e["id"] == finding_id else e for e in entries]


def test_the_recorded_scan_passes_with_each_finding_above_low_explained() -> None:
    findings = tg.parse_findings(RECORDED.read_text())
    assert len(findings) == 167
    result = tg.grade(findings)
    assert result.exit_status == 0
    assert result.problems == ()
    assert result.counts == {
        "CRITICAL": 0,
        "HIGH": 2,
        "MEDIUM": 1,
        "LOW": 1,
        "OK": 46,
        "INFO": 116,
        "WARN": 1,
        "FATAL": 0,
    }
    verdicts = {(v.finding.id, v.tlsgate, v.party) for v in result.verdicts}
    assert verdicts == {
        ("cert_revocation <cert#1>", False, "the throwaway test CA"),
        ("cert_revocation <cert#2>", False, "the throwaway test CA"),
        ("security_headers", False, "the app server"),
    }
    assert [(f.id, f.finding) for f in result.low] == [("HSTS", "not offered")]
    assert [f.id for f in result.expected_warnings] == ["engine_problem"]
    lines = tg.report_lines(result, findings)
    assert lines[-1] == "PASS: no finding at MEDIUM or above is attributable to tlsgate"


def test_what_the_default_listener_offered() -> None:
    shown = tg.offered(tg.parse_findings(RECORDED.read_text()))
    assert shown["protocols"] == (
        "SSLv2 not offered, SSLv3 not offered, TLS1 not offered, TLS1_1 not offered, "
        "TLS1_2 offered, TLS1_3 offered with final"
    )
    assert shown["TLS 1.2 ciphers (server order)"].split() == [
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
    ]
    assert shown["server cipher order"] == "server"
    assert shown["OCSP stapling"] == "not offered"
    assert shown["resumption (ticket / ID)"] == "supported / supported"


def test_a_weakness_no_entry_explains_is_tlsgates() -> None:
    entries = replaced(
        recorded(), "secure_client_renego", severity="HIGH", finding="VULNERABLE, DoS threat"
    )
    result = graded(entries)
    assert result.exit_status == 1
    [mine] = result.attributable
    assert (mine.finding.id, mine.party) == ("secure_client_renego", "tlsgate")
    assert (
        "FAIL: 1 finding(s)" in tg.report_lines(result, tg.parse_findings(json.dumps(entries)))[-1]
    )


@pytest.mark.parametrize(
    ("finding_id", "text"),
    [
        ("cert_revocation <cert#1>", "revoked"),  # the entry covers "no CRL/OCSP URI" only
        ("security_headers", "X-Frame-Options=ALLOWALL"),  # ... and "none at all" only
    ],
)
def test_the_entries_cover_exactly_their_finding(finding_id: str, text: str) -> None:
    result = graded(replaced(recorded(), finding_id, finding=text))
    assert result.exit_status == 1
    assert [v.finding.id for v in result.attributable] == [finding_id]


def with_failed_ticket_check() -> list[dict[str, Any]]:
    return [TICKET_CHECK_FAILED if e["id"] == "sessionresumption_ticket" else e for e in recorded()]


def test_a_check_that_did_not_run_makes_the_run_incomplete() -> None:
    findings = tg.parse_findings(json.dumps(with_failed_ticket_check()))
    assert tg.races(findings) == ["sessionresumption_ticket"]
    result = tg.grade(findings)  # the script's own check did not run either
    assert result.exit_status == 2
    assert result.problems == (
        "a check did not run: sessionresumption_ticket: check failed because of connect problem",
    )


def test_the_scripts_own_check_stands_in_for_testssls_race() -> None:
    findings = tg.parse_findings(json.dumps(with_failed_ticket_check()))
    passed = tg.Recheck("sessionresumption_ticket", True, "TLS 1.2 resumed, TLS 1.3 resumed")
    result = tg.grade(findings, [passed])
    assert result.exit_status == 0
    assert result.rechecks == (passed,)
    shown = tg.offered(findings, result.rechecks)["resumption (ticket / ID)"]
    assert shown == "TLS 1.2 resumed, TLS 1.3 resumed (the script's check) / supported"
    failed = tg.Recheck("sessionresumption_ticket", False, "TLS 1.3: no session was saved")
    result = tg.grade(findings, [failed])
    assert result.exit_status == 2
    assert "no session was saved" in result.problems[0]


def test_only_the_known_race_is_rechecked() -> None:
    other = {**TICKET_CHECK_FAILED, "finding": "some other problem"}
    findings = tg.parse_findings(json.dumps([*recorded(), other]))
    assert tg.races(findings) == []
    assert tg.grade(findings).exit_status == 2


def test_a_scan_cut_short_cannot_be_graded() -> None:
    text = RECORDED.read_text()
    with pytest.raises(tg.GradeError, match="unreadable"):
        tg.parse_findings(text[: len(text) // 2])
    unfinished = graded([e for e in recorded() if e["id"] != "scanTime"])
    assert unfinished.exit_status == 2
    assert "did not finish" in unfinished.problems[0]
    fatal = {**TICKET_CHECK_FAILED, "id": "scanProblem", "severity": "FATAL", "finding": "x"}
    assert graded([*recorded(), fatal]).exit_status == 2


def test_an_attributable_finding_outranks_an_incomplete_run() -> None:
    entries = replaced(recorded(), "BEAST", severity="MEDIUM", finding="VULNERABLE")
    assert graded([*entries, TICKET_CHECK_FAILED]).exit_status == 1


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"scanResult": []}', "not a list"),  # --jsonfile-pretty's shape
        ('[{"id": "x", "finding": "y"}]', "no id, severity and finding"),
        ('[{"id": "x", "severity": "SEVERE", "finding": "y"}]', "unknown severity"),
    ],
)
def test_other_shapes_are_refused(text: str, message: str) -> None:
    with pytest.raises(tg.GradeError, match=message):
        tg.parse_findings(text)


def test_the_command_is_the_documented_one() -> None:
    cmd = tg.testssl_command("testssl", 8443, Path("/tmp/ca.pem"), Path("/tmp/out.json"))
    assert cmd[-1] == "tlsgate.test:8443"
    flags = dict(itertools.pairwise(cmd))
    assert flags["--ip"] == "127.0.0.1"
    assert flags["--nodns"] == "none"
    assert flags["--add-ca"] == "/tmp/ca.pem"
    assert flags["--jsonfile"] == "/tmp/out.json"
    assert flags["--warnings"] == "batch"
    assert "--quiet" in cmd
    assert "--severity" not in cmd  # OK/INFO findings document the defaults


def test_the_node_config_leaves_every_tls_setting_at_its_default(tmp_path: Path) -> None:
    pki = tg.write_pki(tmp_path / "pki")
    text = tg.node_config(tmp_path / "data", pki, 8443, 8080)
    config = parse_config(text, tmp_path / "tlsgate.toml")
    [listener] = config.listeners
    assert (listener.protocol, listener.backend) == ("https", "app")
    assert listener.min_tls_version == "1.2"
    assert listener.hsts == ""
    assert listener.certificates == ()
    assert listener.default_certificate is None
    assert [c.name for c in config.certificates] == ["ecdsa", "rsa"]
    key_file = config.certificates[0].key_file
    assert key_file is not None
    assert key_file.stat().st_mode & 0o777 == 0o600
