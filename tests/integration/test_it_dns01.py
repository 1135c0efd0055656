"""RFC 2136 updates for dns-01 against a real BIND 9 (``bindserver.run_named``).

The updater adds and removes TXT records; what the server then holds is read
back with a plain DNS query to it, as a CA's validator would. Failures (bad
TSIG secret, unknown key, unsigned update, a zone the server does not serve, a
name outside the zone, nothing listening, no answer) must each be a
``CertificateError`` that names the server, the zone and the RCODE.
"""

from __future__ import annotations

import asyncio
import itertools
import socket
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from bindserver import MAIN_KEY, POLICY_ZONE, TSIG_ALGORITHMS, NamedServer, run_named

from tlsgate.certs.dns01 import Rfc2136Updater, _split_server
from tlsgate.config.model import DnsUpdateConfig
from tlsgate.errors import CertificateError

pytestmark = pytest.mark.peers

ZONE = "acme.test"
_names = itertools.count()


@pytest.fixture(scope="module")
def named(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NamedServer]:
    with run_named(tmp_path_factory.mktemp("named"), ZONE) as server:
        yield server


@pytest.fixture
def record() -> str:
    """A fresh ``_acme-challenge`` name in the zone for each test."""
    return f"_acme-challenge.t{next(_names)}.{ZONE}"


def config(named: NamedServer, key: str = MAIN_KEY) -> DnsUpdateConfig:
    algorithm, secret = named.secrets[key]
    return DnsUpdateConfig(
        server=named.server,
        zone=ZONE,
        tsig_key_name=key,
        tsig_secret=secret,
        tsig_algorithm=algorithm,
    )


def fail(updater: Rfc2136Updater, name: str, value: str = "v") -> CertificateError:
    with pytest.raises(CertificateError) as info:
        asyncio.run(updater.add_txt(name, value))
    return info.value


def test_add_then_remove(named: NamedServer, record: str) -> None:
    updater = Rfc2136Updater(config(named))
    asyncio.run(updater.add_txt(record, "token-value-1"))
    assert named.txt(record) == {"token-value-1"}
    ttl = named.query(record, "TXT").answer[0].ttl
    assert ttl == 60
    asyncio.run(updater.remove_txt(record, "token-value-1"))
    assert named.txt(record) == set()
    assert "updating zone 'acme.test/IN': adding an RR" in named.log_text()


def test_values_coexist_and_remove_is_exact(named: NamedServer, record: str) -> None:
    """example.com and *.example.com share one record name: both values must be there."""
    updater = Rfc2136Updater(config(named))

    async def scenario() -> None:
        await updater.add_txt(record, "for-base")
        await updater.add_txt(record, "for-wildcard")
        await updater.add_txt(record, "for-base")  # a duplicate is silently ignored
        assert named.txt(record) == {"for-base", "for-wildcard"}
        await updater.remove_txt(record, "for-base")
        assert named.txt(record) == {"for-wildcard"}
        await updater.remove_txt(record, "for-base")  # already gone: not an error
        await updater.remove_txt(record, "for-wildcard")
        assert named.txt(record) == set()

    asyncio.run(scenario())


def test_records_of_other_names_are_left_alone(named: NamedServer, record: str) -> None:
    updater = Rfc2136Updater(config(named))
    asyncio.run(updater.add_txt(record, "mine"))
    asyncio.run(updater.add_txt(f"x{record}", "other"))
    asyncio.run(updater.remove_txt(record, "mine"))
    assert named.txt(f"x{record}") == {"other"}
    assert named.query(ZONE, "A").answer, "the zone's own records are untouched"


@pytest.mark.parametrize("algorithm", TSIG_ALGORITHMS)
def test_every_tsig_algorithm(named: NamedServer, record: str, algorithm: str) -> None:
    key = next(k for k, (alg, _) in named.secrets.items() if alg == algorithm)
    updater = Rfc2136Updater(config(named, key))
    asyncio.run(updater.add_txt(record, algorithm))
    assert named.txt(record) == {algorithm}
    asyncio.run(updater.remove_txt(record, algorithm))
    assert named.txt(record) == set()


def test_server_given_by_host_name(named: NamedServer, record: str) -> None:
    """ "localhost" may resolve to ::1 first; named listens on 127.0.0.1 only."""
    updater = Rfc2136Updater(replace(config(named), server=f"localhost:{named.port}"))
    asyncio.run(updater.add_txt(record, "by-name"))
    assert named.txt(record) == {"by-name"}


def test_update_policy_limited_to_the_challenge_record(named: NamedServer) -> None:
    """The BIND example in docs/configuration.md: one key, one name, TXT only."""
    updater = Rfc2136Updater(replace(config(named), zone=POLICY_ZONE))
    allowed = f"_acme-challenge.{POLICY_ZONE}"
    asyncio.run(updater.add_txt(allowed, "granted"))
    assert named.txt(allowed) == {"granted"}
    asyncio.run(updater.remove_txt(allowed, "granted"))
    assert named.txt(allowed) == set()
    message = str(fail(updater, f"_acme-challenge.www.{POLICY_ZONE}"))
    assert "REFUSED" in message
    assert POLICY_ZONE in message
    other_key = Rfc2136Updater(replace(config(named, "tlsgate-hmac-sha512"), zone=POLICY_ZONE))
    assert "REFUSED" in str(fail(other_key, allowed))


def test_wrong_secret_is_badsig(named: NamedServer, record: str) -> None:
    wrong = "c2VjcmV0IHRoYXQgaXMgbm90IHRoZSBzZXJ2ZXIncw=="
    updater = Rfc2136Updater(replace(config(named), tsig_secret=wrong))
    message = str(fail(updater, record))
    assert named.server in message
    assert ZONE in message
    assert "NOTAUTH" in message
    assert "BADSIG" in message
    assert wrong not in message
    assert wrong not in repr(updater)
    assert named.txt(record) == set()


def test_unknown_key_is_badkey(named: NamedServer, record: str) -> None:
    updater = Rfc2136Updater(replace(config(named), tsig_key_name="nobody"))
    message = str(fail(updater, record))
    assert "NOTAUTH" in message
    assert "BADKEY" in message
    assert "'nobody'" in message
    assert named.server in message


def test_wrong_algorithm_is_badkey(named: NamedServer, record: str) -> None:
    updater = Rfc2136Updater(replace(config(named), tsig_algorithm="hmac-sha512"))
    assert "BADKEY" in str(fail(updater, record))


def test_unsigned_update_is_refused(named: NamedServer, record: str) -> None:
    updater = Rfc2136Updater(DnsUpdateConfig(server=named.server, zone=ZONE))
    message = str(fail(updater, record))
    assert "REFUSED" in message
    assert named.server in message
    assert ZONE in message
    assert named.txt(record) == set()


def test_zone_the_server_does_not_serve(named: NamedServer) -> None:
    updater = Rfc2136Updater(replace(config(named), zone="elsewhere.test"))
    message = str(fail(updater, "_acme-challenge.elsewhere.test"))
    assert "NOTAUTH" in message
    assert "elsewhere.test" in message
    assert named.server in message


def test_name_outside_the_zone(named: NamedServer) -> None:
    updater = Rfc2136Updater(config(named))
    for name in ("_acme-challenge.other.test", "_acme-challenge.notacme.test", "test"):
        message = str(fail(updater, name))
        assert "outside the zone acme.test" in message
        assert name in message
    with pytest.raises(CertificateError, match="outside the zone"):
        asyncio.run(updater.remove_txt("_acme-challenge.other.test", "v"))


def test_apex_of_a_delegated_challenge_zone_is_inside(named: NamedServer) -> None:
    """zone = "_acme-challenge.example.com" (a delegated zone): its apex is in it."""
    updater = Rfc2136Updater(replace(config(named), zone="_acme-challenge.t.acme.test"))
    # named does not serve that zone, so the server says NOTAUTH -- but it was sent
    assert "NOTAUTH" in str(fail(updater, "_acme-challenge.t.acme.test"))


def test_nothing_listening(named: NamedServer) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: connections are refused
        updater = Rfc2136Updater(replace(config(named), server=f"127.0.0.1:{port}"))
        message = str(fail(updater, f"_acme-challenge.{ZONE}"))
    assert f"127.0.0.1:{port}" in message
    assert ZONE in message
    assert "cannot talk to the server" in message


def test_no_answer_times_out(named: NamedServer, tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(4)  # the kernel completes the handshake; nobody ever answers
        port = s.getsockname()[1]
        updater = Rfc2136Updater(replace(config(named), server=f"127.0.0.1:{port}"), timeout=0.5)
        message = str(fail(updater, f"_acme-challenge.{ZONE}"))
    assert "no answer" in message
    assert "0.5s" in message
    assert f"127.0.0.1:{port}" in message


@pytest.mark.parametrize(
    ("server", "expected"),
    [
        ("127.0.0.1:53", ("127.0.0.1", 53)),
        ("10.0.0.53", ("10.0.0.53", 53)),
        ("ns1.example.com:5353", ("ns1.example.com", 5353)),
        ("ns1.example.com", ("ns1.example.com", 53)),
        ("[2001:db8::53]:5300", ("2001:db8::53", 5300)),
        ("2001:db8::53", ("2001:db8::53", 53)),
    ],
)
def test_split_server(server: str, expected: tuple[str, int]) -> None:
    assert _split_server(server) == expected


@pytest.mark.parametrize("server", ["host:0", "host:x", ":53", "[::1", "[::1]x"])
def test_split_server_rejects(server: str) -> None:
    with pytest.raises(CertificateError):
        _split_server(server)
