"""RouteTable and NameMap: host/SNI precedence and segment-aware path prefixes."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tlsgate.routing.hosts import NameMap, RouteTable, normalize_host, prefix_matches


def test_normalize_host() -> None:
    assert normalize_host("Example.COM.") == "example.com"
    assert normalize_host("example.com..") == "example.com."
    assert normalize_host("") == ""


@pytest.mark.parametrize(
    ("prefix", "path", "matches"),
    [
        ("/", "/", True),
        ("/", "/anything", True),
        ("/api", "/api", True),
        ("/api", "/api/", True),
        ("/api", "/api/x", True),
        ("/api", "/apix", False),
        ("/api", "/ap", False),
        ("/api/", "/api/x", True),
        ("/api/", "/api", False),
        ("/api", "/API", False),
    ],
)
def test_prefix_matches_is_segment_aware(prefix: str, path: str, matches: bool) -> None:
    assert prefix_matches(prefix, path) is matches


def table() -> RouteTable[str]:
    return RouteTable(
        [
            (("api.example.com",), "/", "api-root"),
            (("api.example.com",), "/v2", "api-v2"),
            (("*.example.com",), "/", "wild"),
            (("*.example.com",), "/static", "wild-static"),
            ((), "/", "any"),
            ((), "/health", "any-health"),
            (("Shop.Example.NET.",), "/cart", "shop-cart"),
        ],
        default="default",
    )


@pytest.mark.parametrize(
    ("host", "path", "expected"),
    [
        ("api.example.com", "/", "api-root"),
        ("api.example.com", "/v2/users", "api-v2"),
        ("api.example.com", "/v2x", "api-root"),
        ("API.Example.com.", "/v2", "api-v2"),  # case and trailing dot normalized
        ("www.example.com", "/", "wild"),
        ("www.example.com", "/static/a.css", "wild-static"),
        ("example.com", "/", "any"),  # a wildcard needs one more label
        ("a.b.example.com", "/", "any"),  # ... exactly one
        ("other.org", "/health", "any-health"),
        ("", "/", "any"),
        ("shop.example.net", "/cart/1", "shop-cart"),
        ("shop.example.net", "/", "any"),  # exact bucket has no match: fall through
    ],
)
def test_route_precedence(host: str, path: str, expected: str) -> None:
    assert table().match(host, path) == expected


def test_default_and_none() -> None:
    t: RouteTable[str] = RouteTable([(("a.example",), "/x", "x")], default="fallback")
    assert t.match("a.example", "/y") == "fallback"
    assert RouteTable([(("a.example",), "/x", "x")]).match("b.example", "/x") is None


def test_ties_go_to_first_declared() -> None:
    t = RouteTable([(("h",), "/a", 1), (("h",), "/a", 2), (("h", "*.h"), "/a", 3)])
    assert t.match("h", "/a") == 1
    assert t.match("x.h", "/a") == 3


def test_longest_prefix_wins_regardless_of_order() -> None:
    t = RouteTable([((), "/", "root"), ((), "/a/b", "ab"), ((), "/a", "a")])
    assert t.match("h", "/a/b/c") == "ab"
    assert t.match("h", "/a/c") == "a"
    assert t.match("h", "/c") == "root"


def test_empty_prefix_means_root() -> None:
    assert RouteTable([((), "", "x")]).match("h", "/anything") == "x"


@pytest.mark.parametrize("pattern", ["*", "*.", "a.*.com", "*a.com", "*.*.com", ""])
def test_bad_host_patterns(pattern: str) -> None:
    with pytest.raises(ValueError, match="pattern"):
        RouteTable([((pattern,), "/", 1)])


def test_namemap_exact_then_wildcard() -> None:
    m: NameMap[str] = NameMap()
    m.add("*.example.com", "wild")
    m.add("www.example.com", "www")
    m.add("WWW.example.com", "second-add-loses")
    m.add("*.example.com", "second-wild-loses")
    assert len(m) == 2
    assert m.lookup("www.example.com") == "www"
    assert m.lookup("WWW.Example.Com.") == "www"
    assert m.lookup("mail.example.com") == "wild"
    assert m.lookup("example.com") is None
    assert m.lookup("a.mail.example.com") is None
    assert m.lookup("") is None
    assert m.lookup("com") is None


labels = st.text(alphabet="abcxyz-0", min_size=1, max_size=5)


@given(st.lists(labels, min_size=1, max_size=4), labels)
def test_wildcard_matches_exactly_one_label(parent_labels: list[str], label: str) -> None:
    parent = ".".join(parent_labels)
    m: NameMap[int] = NameMap()
    m.add("*." + parent, 1)
    assert m.lookup(f"{label}.{parent}") == 1
    assert m.lookup(parent) is None
    assert m.lookup(f"{label}.{label}.{parent}") is None
