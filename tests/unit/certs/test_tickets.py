"""Shared session ticket keys: real TLS 1.2 and 1.3 resumptions over memory BIOs.

Every server context here is created separately, as two workers (or two
generations of one worker) would create theirs; a ticket resumes on another
context exactly when both hold the same key.
"""

from __future__ import annotations

import contextlib
import logging
import pickle
import ssl

import pytest

from tlsgate.ca import LocalCA
from tlsgate.certs import tickets
from tlsgate.certs.bundle import CertificateBundle, load_bundle
from tlsgate.certs.cache import CertificateCache, make_server_context
from tlsgate.certs.tickets import TICKET_KEY_SIZE, TicketKeys, set_ticket_key, ticket_key_support

VERSIONS = [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3]


@pytest.fixture(scope="module")
def ca() -> LocalCA:
    return LocalCA.create("tickets test CA")


@pytest.fixture(scope="module")
def bundles(ca: LocalCA, tmp_path_factory: pytest.TempPathFactory) -> dict[str, CertificateBundle]:
    tmp = tmp_path_factory.mktemp("certs")

    def make(name: str, domains: list[str], key_type: str = "ecdsa-p256") -> CertificateBundle:
        issued = ca.issue(domains, key_type=key_type)  # type: ignore[arg-type]
        (tmp / f"{name}.pem").write_bytes(issued.chain_pem)
        (tmp / f"{name}.key").write_bytes(issued.key_pem)
        return load_bundle(name, domains, tmp / f"{name}.pem", tmp / f"{name}.key")

    return {
        "www-ec": make("www-ec", ["www.example.com"]),
        "www-rsa": make("www-rsa", ["www.example.com"], "rsa-2048"),
        "api": make("api", ["api.example.com"]),
    }


def _client(ca: LocalCA, version: ssl.TLSVersion, *, tickets: bool = True) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cadata=ca.cert_pem.decode())
    ctx.minimum_version = ctx.maximum_version = version
    if not tickets:
        ctx.options |= ssl.OP_NO_TICKET
    return ctx


def _connect(
    client: ssl.SSLContext,
    server: ssl.SSLContext,
    server_hostname: str = "www.example.com",
    session: ssl.SSLSession | None = None,
) -> ssl.SSLObject:
    """A handshake, one server -> client record (TLS 1.3 tickets come after the
    handshake) and the server's close_notify."""
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    c = client.wrap_bio(c_in, c_out, server_hostname=server_hostname, session=session)
    s = server.wrap_bio(s_in, s_out, server_side=True)
    pending = {c, s}
    for _ in range(20):
        for obj in list(pending):
            try:
                obj.do_handshake()
                pending.discard(obj)
            except ssl.SSLWantReadError:
                pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if not pending:
            break
    else:
        raise AssertionError("handshake did not finish")
    s.write(b"hello")
    c_in.write(s_out.read())
    assert c.read(5) == b"hello"
    # a clean close: OpenSSL drops a session from its cache when a connection is
    # freed without sending close_notify
    with contextlib.suppress(ssl.SSLWantReadError):
        s.unwrap()
    return c


def _ticket(
    client: ssl.SSLContext, server: ssl.SSLContext, name: str = "www.example.com"
) -> ssl.SSLSession:
    c = _connect(client, server, name)
    assert not c.session_reused
    assert c.session is not None
    assert c.session.has_ticket
    return c.session


def _resumes(
    client: ssl.SSLContext,
    server: ssl.SSLContext,
    session: ssl.SSLSession,
    name: str = "www.example.com",
) -> bool:
    return _connect(client, server, name, session=session).session_reused


def test_supported_on_this_python_and_openssl() -> None:
    # CI runs CPython 3.11 with OpenSSL 3: anything else here is a regression.
    assert ticket_key_support() is None


@pytest.mark.parametrize("version", VERSIONS, ids=["tls1.2", "tls1.3"])
def test_same_key_resumes_across_separately_created_contexts(
    ca: LocalCA, bundles: dict[str, CertificateBundle], version: ssl.TLSVersion
) -> None:
    key = TicketKeys.generate().for_listener("https")
    worker_a = make_server_context([bundles["www-ec"]], ticket_key=key)
    worker_b = make_server_context([bundles["www-ec"]], ticket_key=key)
    client = _client(ca, version)

    from_a = _ticket(client, worker_a)
    assert _resumes(client, worker_b, from_a)
    from_b = _ticket(client, worker_b)
    assert _resumes(client, worker_a, from_b)
    assert _resumes(client, worker_b, from_b)


@pytest.mark.parametrize("version", VERSIONS, ids=["tls1.2", "tls1.3"])
def test_different_keys_do_not_resume(
    ca: LocalCA, bundles: dict[str, CertificateBundle], version: ssl.TLSVersion
) -> None:
    worker_a = make_server_context(
        [bundles["www-ec"]], ticket_key=TicketKeys.generate().for_listener("https")
    )
    worker_b = make_server_context(
        [bundles["www-ec"]], ticket_key=TicketKeys.generate().for_listener("https")
    )
    no_key = make_server_context([bundles["www-ec"]])
    client = _client(ca, version)

    ticket = _ticket(client, worker_a)
    assert _resumes(client, worker_a, ticket)  # the ticket itself is fine
    assert not _resumes(client, worker_b, ticket)
    assert not _resumes(client, no_key, ticket)


def test_without_a_key_each_context_has_its_own(
    ca: LocalCA, bundles: dict[str, CertificateBundle]
) -> None:
    # what tlsgate did before: OpenSSL's random key per context, i.e. per worker
    a = make_server_context([bundles["www-ec"]])
    b = make_server_context([bundles["www-ec"]])
    client = _client(ca, ssl.TLSVersion.TLSv1_3)
    ticket = _ticket(client, a)
    assert _resumes(client, a, ticket)
    assert not _resumes(client, b, ticket)


def test_ticket_lifetime_and_count_are_openssl_defaults(
    ca: LocalCA, bundles: dict[str, CertificateBundle]
) -> None:
    server = make_server_context(
        [bundles["www-ec"]], ticket_key=TicketKeys.generate().for_listener("x")
    )
    assert server.num_tickets == 2
    assert not server.options & ssl.OP_NO_TICKET
    ticket = _ticket(_client(ca, ssl.TLSVersion.TLSv1_3), server)
    assert ticket.timeout == 7200


def test_session_ids_do_not_cross_contexts(
    ca: LocalCA, bundles: dict[str, CertificateBundle]
) -> None:
    # A TLS 1.2 client without tickets resumes by session ID, from the server's
    # in-memory cache: the same context (worker) only, whatever the ticket key.
    key = TicketKeys.generate().for_listener("https")
    a = make_server_context([bundles["www-ec"]], ticket_key=key)
    b = make_server_context([bundles["www-ec"]], ticket_key=key)
    client = _client(ca, ssl.TLSVersion.TLSv1_2, tickets=False)
    first = _connect(client, a)
    assert first.session is not None
    assert not first.session.has_ticket
    assert _resumes(client, a, first.session)
    assert not _resumes(client, b, first.session)


@pytest.mark.parametrize("version", VERSIONS, ids=["tls1.2", "tls1.3"])
def test_certificate_cache_sets_the_key_on_every_sni_context(
    ca: LocalCA, bundles: dict[str, CertificateBundle], version: ssl.TLSVersion
) -> None:
    key = TicketKeys.generate().for_listener("https")
    served = list(bundles.values())
    worker_a = CertificateCache(served, default="api", ticket_key=key)
    worker_b = CertificateCache(served, default="api", ticket_key=key)
    client = _client(ca, version)
    # the SNI callback switches to the www context (ECDSA + RSA) on both sides
    for name in ("www.example.com", "api.example.com"):
        ticket = _ticket(client, worker_a.base_context, name)
        assert _resumes(client, worker_b.base_context, ticket, name)
    # and every context holds the key, whichever one a connection starts on
    for name in ("www.example.com", "api.example.com"):
        ticket = _ticket(client, worker_a.lookup(name), name)
        assert _resumes(client, worker_b.lookup(name), ticket, name)
        assert _resumes(client, worker_b.base_context, ticket, name)


def test_rotation_replaces_the_key_in_place(
    ca: LocalCA, bundles: dict[str, CertificateBundle]
) -> None:
    old, new = TicketKeys.generate(), TicketKeys.generate()
    served = list(bundles.values())
    worker_a = CertificateCache(served, default="api", ticket_key=old.for_listener("https"))
    worker_b = CertificateCache(served, default="api", ticket_key=old.for_listener("https"))
    client = _client(ca, ssl.TLSVersion.TLSv1_3)
    before = _ticket(client, worker_a.base_context)

    worker_a.set_ticket_key(new.for_listener("https"))
    worker_b.set_ticket_key(new.for_listener("https"))
    # one key per context: a ticket from before the rotation no longer resumes
    assert not _resumes(client, worker_b.base_context, before)
    after = _ticket(client, worker_a.base_context)
    assert _resumes(client, worker_b.base_context, after)


def test_listener_keys_are_distinct_and_stable() -> None:
    keys = TicketKeys.generate()
    https, other = keys.for_listener("https"), keys.for_listener("https-internal")
    assert len(https) == len(other) == TICKET_KEY_SIZE
    assert https != other
    assert https[:16] != other[:16]  # the key name OpenSSL matches a ticket against
    assert keys.for_listener("https") == https
    assert TicketKeys(keys.secret).for_listener("https") == https
    assert TicketKeys.generate().for_listener("https") != https


def test_listeners_do_not_resume_each_others_tickets(
    ca: LocalCA, bundles: dict[str, CertificateBundle]
) -> None:
    keys = TicketKeys.generate()
    one = make_server_context([bundles["www-ec"]], ticket_key=keys.for_listener("one"))
    two = make_server_context([bundles["www-ec"]], ticket_key=keys.for_listener("two"))
    client = _client(ca, ssl.TLSVersion.TLSv1_3)
    assert not _resumes(client, two, _ticket(client, one))


def test_the_secret_is_never_shown_and_pickles() -> None:
    keys = TicketKeys.generate()
    assert keys.secret.hex() not in repr(keys)
    assert repr(keys.secret) not in repr(keys)
    assert repr(keys) == "TicketKeys()"
    assert pickle.loads(pickle.dumps(keys)) == keys
    with pytest.raises(ValueError, match="at least 32 bytes"):
        TicketKeys(b"short")


def test_wrong_key_size_is_a_bug() -> None:
    with pytest.raises(ValueError, match="80 bytes"):
        set_ticket_key(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), b"x" * 48)


def test_unsupported_runtime_falls_back_with_one_warning(
    ca: LocalCA,
    bundles: dict[str, CertificateBundle],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(tickets, "_bindings", lambda: "the ssl.SSLContext layout is not known")
    monkeypatch.setattr(tickets, "_warned", False)
    key = TicketKeys.generate().for_listener("https")
    with caplog.at_level(logging.WARNING, logger="tlsgate.certs.tickets"):
        assert ticket_key_support() == "the ssl.SSLContext layout is not known"
        assert not caplog.records
        assert ticket_key_support(warn=True) == "the ssl.SSLContext layout is not known"
        a = make_server_context([bundles["www-ec"]], ticket_key=key)
        b = make_server_context([bundles["www-ec"]], ticket_key=key)
    warnings = [r for r in caplog.records if r.name == "tlsgate.certs.tickets"]
    assert len(warnings) == 1
    assert "the ssl.SSLContext layout is not known" in warnings[0].getMessage()
    assert "resumes only on the worker that issued it" in warnings[0].getMessage()
    # the contexts still serve and resume, each with its own key
    client = _client(ca, ssl.TLSVersion.TLSv1_3)
    ticket = _ticket(client, a)
    assert _resumes(client, a, ticket)
    assert not _resumes(client, b, ticket)


def test_a_context_that_does_not_match_is_left_alone(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    lib = tickets._bindings()
    assert not isinstance(lib, str)
    monkeypatch.setattr(tickets, "_warned", False)
    monkeypatch.setattr(type(lib), "context_pointer", lambda _self, _ctx: None)
    with caplog.at_level(logging.WARNING, logger="tlsgate.certs.tickets"):
        assert not set_ticket_key(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), b"k" * TICKET_KEY_SIZE)
        assert not set_ticket_key(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), b"k" * TICKET_KEY_SIZE)
    assert len([r for r in caplog.records if r.name == "tlsgate.certs.tickets"]) == 1


def test_context_pointer_checks_what_python_sees() -> None:
    lib = tickets._bindings()
    assert not isinstance(lib, str)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ptr = lib.context_pointer(ctx)
    assert ptr
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.options |= ssl.OP_NO_RENEGOTIATION
    assert lib.context_pointer(ctx) == ptr
    assert lib.context_pointer(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)) not in (None, ptr)
