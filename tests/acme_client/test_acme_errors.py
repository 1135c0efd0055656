"""RFC 7807 problem documents as AcmeProblem, and identifiers: no network."""

from __future__ import annotations

import pytest

from tlsgate.acme import AcmeError, AcmeProblem, Identifier
from tlsgate.errors import TlsgateError


def test_problem_from_a_full_document() -> None:
    doc = {
        "type": "urn:ietf:params:acme:error:dns",
        "detail": "DNS problem: NXDOMAIN looking up A for www.example.com",
        "status": 400,
        "identifier": {"type": "dns", "value": "www.example.com"},
    }
    p = AcmeProblem.from_document(doc, url="https://ca.test/chall/1")
    assert isinstance(p, AcmeError)
    assert isinstance(p, TlsgateError)
    assert p.code == "dns"
    assert p.is_type("dns")
    assert not p.is_type("connection")
    assert p.status == 400  # from the document when the caller gives none
    assert p.identifier == Identifier("dns", "www.example.com")
    assert p.document == doc
    assert str(p) == (
        "dns for www.example.com: DNS problem: NXDOMAIN looking up A for www.example.com "
        "[HTTP 400] (https://ca.test/chall/1)"
    )


def test_problem_status_of_the_response_wins() -> None:
    p = AcmeProblem.from_document({"type": "x:y", "status": 500}, status=503)
    assert p.status == 503
    assert p.code == "x:y"  # non-ACME types are kept whole
    assert p.detail == ""
    assert str(p) == "x:y [HTTP 503]"


@pytest.mark.parametrize("doc", [None, "text", [], {"detail": "no type"}, {"type": ""}])
def test_problem_without_a_usable_type_is_about_blank(doc: object) -> None:
    # RFC 7807 §4.2: a missing type "is assumed to be "about:blank"".
    p = AcmeProblem.from_document(doc, status=500)
    assert p.type == "about:blank"
    assert p.status == 500


def test_in_context_fills_only_what_is_missing() -> None:
    bare = AcmeProblem.from_document(
        {"type": "urn:ietf:params:acme:error:unauthorized", "detail": "wrong body"}
    )
    named = bare.in_context(
        identifier=Identifier("dns", "a.test"), challenge="http-01", url="https://ca.test/c"
    )
    assert str(named) == "unauthorized for a.test (http-01): wrong body (https://ca.test/c)"
    assert bare.identifier is None  # the original is untouched
    kept = named.in_context(identifier=Identifier("dns", "b.test"), url="https://other")
    assert kept.identifier == Identifier("dns", "a.test")
    assert kept.url == "https://ca.test/c"


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("Example.COM.", Identifier("dns", "example.com")),
        ("*.example.com", Identifier("dns", "*.example.com")),
        ("192.0.2.1", Identifier("ip", "192.0.2.1")),
        ("2001:0DB8:0::1", Identifier("ip", "2001:db8::1")),
    ],
)
def test_identifier_for_name(name: str, expected: Identifier) -> None:
    assert Identifier.for_name(name) == expected
    assert Identifier.from_json(expected.to_json()) == expected


@pytest.mark.parametrize("obj", [None, "x", {"type": "dns"}, {"type": 1, "value": "a"}])
def test_identifier_from_bad_json(obj: object) -> None:
    assert Identifier.from_json(obj) is None
