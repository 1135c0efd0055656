"""``serve``, SIGHUP and ``check`` refuse the certificates ``check`` refuses (issue 8, defect 1).

A real ``tlsgate serve``: a SIGHUP that would bring in an expired certificate is
refused as a whole and clients keep getting the valid one; ``serve`` does not
start with an expired certificate; ``check`` reports a leaf followed by a
truncated intermediate instead of serving the leaf alone.
"""

from __future__ import annotations

import signal
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from harness import (
    TLSGATE,
    AppFactory,
    CertFiles,
    GateFactory,
    Pki,
    Tlsgate,
    TlsgateFailed,
    free_port,
    issue_files,
    s_client,
    table,
    write_issued,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

EXPIRED_ON = "expired on 2020-01-02 00:00:00 UTC"


def https_config(cert: CertFiles, port: int, backend: str) -> str:
    return (
        cert.toml()
        + table(
            "listeners", name="https", bind=[f"127.0.0.1:{port}"], protocol="https", backend="app"
        )
        + table("backends", name="app", servers=[backend])
    )


def expired_files(pki: Pki, directory: Path, name: str, domains: tuple[str, ...]) -> CertFiles:
    start = datetime(2020, 1, 1, tzinfo=UTC)
    issued = pki.ca.issue(list(domains), not_before=start, not_after=start + timedelta(days=1))
    return write_issued(issued, directory, name, domains)


def test_sighup_with_an_expired_certificate_keeps_the_valid_one(
    pki: Pki, make_app: AppFactory, make_gate: GateFactory, tmp_path: Path
) -> None:
    app = make_app("app")
    port = free_port()
    first = issue_files(pki.ca, tmp_path / "v1", "rot", ("rotate.test",), "ecdsa-p256")
    gate = make_gate(https_config(first, port, app.address))
    probe = s_client(port, servername="rotate.test", ca_file=pki.ca_file)
    assert probe.cert is not None
    assert probe.cert.serial_number == first.certificate.serial_number

    # "Renewed" in place with a certificate that has already expired.
    old = expired_files(pki, tmp_path / "v2", "rot", ("rotate.test",))
    first.cert_file.write_bytes(old.cert_file.read_bytes())
    first.key_file.write_bytes(old.key_file.read_bytes())
    before = gate.error_log_text().count("reload failed")
    gate.signal(signal.SIGHUP)
    gate.wait_for_log("reload failed", before + 1, 20)

    log = gate.error_log_text()
    assert f"certificate 'rot' in {first.cert_file} {EXPIRED_ON}" in log
    assert "still serving generation 1 with its certificates" in log
    assert "reload complete" not in log
    probe = s_client(port, servername="rotate.test", ca_file=pki.ca_file)
    assert probe.cert is not None
    assert probe.cert.serial_number == first.certificate.serial_number
    assert "Verify return code: 0 (ok)" in probe.output

    # A valid certificate in the same place is then taken by the next reload.
    third = issue_files(pki.ca, tmp_path / "v3", "rot", ("rotate.test",), "ecdsa-p256")
    first.cert_file.write_bytes(third.cert_file.read_bytes())
    first.key_file.write_bytes(third.key_file.read_bytes())
    gate.reload()
    probe = s_client(port, servername="rotate.test", ca_file=pki.ca_file)
    assert probe.cert is not None
    assert probe.cert.serial_number == third.certificate.serial_number


def test_serve_refuses_to_start_with_an_expired_certificate(
    pki: Pki, make_app: AppFactory, tmp_path: Path
) -> None:
    app = make_app("app")
    old = expired_files(pki, tmp_path / "certs", "old", ("old.test",))
    gate = Tlsgate(tmp_path / "gate", https_config(old, free_port(), app.address))
    try:
        with pytest.raises(TlsgateFailed, match="exited waiting for"):
            gate.start()
        assert gate.proc is not None
        assert gate.proc.wait(10) == 2
    finally:
        gate.kill()
    output = gate.stdout_log.read_text()
    assert f"error: certificate 'old' in {old.cert_file} {EXPIRED_ON}" in output
    assert "not started" in output
    assert gate.worker_pids() == []


def test_check_refuses_a_leaf_followed_by_a_truncated_intermediate(
    pki: Pki, tmp_path: Path
) -> None:
    leaf = issue_files(pki.ca, tmp_path, "www", ("www.test",), "ecdsa-p256")
    # the CA stands in for an intermediate; the copy stopped half-way through it
    cut = pki.ca.cert_pem[: len(pki.ca.cert_pem) // 2]
    leaf.cert_file.write_bytes(leaf.cert_pem + cut)
    config = tmp_path / "tlsgate.toml"
    config.write_text(https_config(leaf, free_port(), "127.0.0.1:9001"))
    res = subprocess.run(
        [str(TLSGATE), "check", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    out = res.stdout + res.stderr
    assert res.returncode == 2, out
    assert (
        f"certificates[0].cert_file: certificate 'www': certificate 2 in {leaf.cert_file} "
        "is truncated: BEGIN CERTIFICATE without END"
    ) in out
