"""Balancers: smooth WRR, least-conn, consistent ip_hash, power of two choices."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from collections import Counter

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from tlsgate.config.model import BALANCE_ALGORITHMS, BalanceAlgorithm
from tlsgate.routing.balance import IpHash, ServerState, make_balancer

NOW = 1000.0


def servers(*weights: int) -> list[ServerState]:
    return [
        ServerState(key=f"10.0.0.{i}:80", host=f"10.0.0.{i}", port=80, weight=w)
        for i, w in enumerate(weights, start=1)
    ]


def client_keys(n: int) -> list[bytes]:
    return [b"198.51.%d.%d" % divmod(i, 256) for i in range(n)]


# --- ServerState -----------------------------------------------------------------------


def test_passive_ejection() -> None:
    s = servers(1)[0]
    assert s.available(NOW)
    assert not s.record_failure(NOW, max_fails=2, fail_timeout=10)
    assert s.available(NOW)
    assert s.record_failure(NOW, max_fails=2, fail_timeout=10)
    assert not s.available(NOW + 9.9)
    # failures while ejected don't re-eject (or extend)
    assert not s.record_failure(NOW + 1, max_fails=2, fail_timeout=10)
    assert s.ejected_until == NOW + 10
    assert s.available(NOW + 10)
    # one more failure after the ejection ran out ejects again at once
    assert s.record_failure(NOW + 10, max_fails=2, fail_timeout=10)
    s.record_success()
    assert s.consecutive_failures == 0
    assert not s.available(NOW + 19)  # a success doesn't cut an ejection short


def test_success_resets_the_streak() -> None:
    s = servers(1)[0]
    s.record_failure(NOW, max_fails=2, fail_timeout=10)
    s.record_success()
    assert not s.record_failure(NOW, max_fails=2, fail_timeout=10)
    assert s.available(NOW)


def test_max_fails_zero_never_ejects() -> None:
    s = servers(1)[0]
    for _ in range(5):
        assert not s.record_failure(NOW, max_fails=0, fail_timeout=10)
    assert s.available(NOW)


def test_unhealthy_is_unavailable() -> None:
    s = servers(1)[0]
    s.healthy = False
    assert not s.available(NOW)


def test_weight_must_be_positive() -> None:
    with pytest.raises(ValueError, match="weight"):
        ServerState(key="a:1", host="a", port=1, weight=0)


def test_make_balancer_rejects_duplicates_and_unknown() -> None:
    s = servers(1, 1)
    s[1].key = s[0].key
    with pytest.raises(ValueError, match="duplicate"):
        make_balancer("round_robin", s)
    with pytest.raises(ValueError, match="unknown"):
        make_balancer("fastest", servers(1))  # type: ignore[arg-type]


@pytest.mark.parametrize("algorithm", BALANCE_ALGORITHMS)
def test_empty_and_all_down(algorithm: BalanceAlgorithm) -> None:
    assert make_balancer(algorithm, []).pick(b"k", NOW) is None
    s = servers(1, 2)
    b = make_balancer(algorithm, s)
    assert b.servers == tuple(s)
    s[0].healthy = False
    s[1].ejected_until = NOW + 1
    assert b.pick(b"k", NOW) is None
    assert b.pick(b"k", NOW + 1) is s[1]
    assert b.pick(b"k", NOW + 1, exclude={s[1].key}) is None


# --- round robin -----------------------------------------------------------------------


def test_smooth_wrr_interleaves_like_nginx() -> None:
    # nginx's documented example: weights 5, 1, 1 -> a a b a c a a
    s = servers(5, 1, 1)
    b = make_balancer("round_robin", s)
    picks = [b.pick(b"", NOW) for _ in range(14)]
    names = "".join("abc"[s.index(p)] for p in picks if p is not None)
    assert names == "aabacaa" * 2


def test_round_robin_skips_unavailable_and_excluded() -> None:
    s = servers(1, 1, 1)
    b = make_balancer("round_robin", s)
    s[1].healthy = False
    picks = [b.pick(b"", NOW, exclude={s[2].key}) for _ in range(4)]
    assert picks == [s[0]] * 4


@given(st.lists(st.integers(1, 10), min_size=1, max_size=8), st.integers(1, 3))
def test_smooth_wrr_exact_shares(weights: list[int], k: int) -> None:
    s = servers(*weights)
    b = make_balancer("round_robin", s)
    counts = Counter(b.pick(b"", NOW) for _ in range(k * sum(weights)))
    assert [counts[x] for x in s] == [k * w for w in weights]


# --- least conn ------------------------------------------------------------------------


def test_least_conn_prefers_lowest_active_per_weight() -> None:
    s = servers(1, 2, 1)
    s[0].active, s[1].active, s[2].active = 2, 3, 2  # 2/1, 3/2, 2/1
    assert make_balancer("least_conn", s).pick(b"", NOW) is s[1]


def test_least_conn_rotates_ties() -> None:
    s = servers(1, 1, 1)
    b = make_balancer("least_conn", s)
    assert Counter(b.pick(b"", NOW) for _ in range(30)) == {s[0]: 10, s[1]: 10, s[2]: 10}


def test_least_conn_follows_active_counts() -> None:
    s = servers(1, 1)
    b = make_balancer("least_conn", s)
    for _ in range(10):
        picked = b.pick(b"", NOW)
        assert picked is not None
        picked.active += 1
    assert [x.active for x in s] == [5, 5]


# --- ip hash ---------------------------------------------------------------------------


def test_ip_hash_same_key_same_server_across_balancers() -> None:
    # two workers build their own balancer over their own state objects
    b1 = make_balancer("ip_hash", servers(1, 2, 3, 1))
    b2 = make_balancer("ip_hash", servers(1, 2, 3, 1))
    for key in client_keys(2000):
        p1, p2 = b1.pick(key, NOW), b2.pick(key, NOW)
        assert p1 is not None
        assert p2 is not None
        assert p1.key == p2.key


_CHILD = """
import sys
from tlsgate.routing.balance import IpHash, ServerState, make_balancer
s = [ServerState(key=f"10.0.0.{i}:80", host="h", port=80) for i in range(5)]
b = make_balancer("ip_hash", s)
keys = [b"198.51.%d.%d" % divmod(i, 256) for i in range(300)]
print(",".join(b.pick(k, 0.0).key for k in keys))
"""


def test_ip_hash_is_stable_across_processes() -> None:
    # different PYTHONHASHSEEDs: the choice must not depend on Python's salted hash()
    outputs = set()
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run(
            [sys.executable, "-c", _CHILD], env=env, capture_output=True, check=True, text=True
        )
        outputs.add(out.stdout)
    assert len(outputs) == 1
    # and identical to this process
    s = [ServerState(key=f"10.0.0.{i}:80", host="h", port=80) for i in range(5)]
    b = make_balancer("ip_hash", s)
    mine = ",".join(p.key for k in client_keys(300) if (p := b.pick(k, 0.0)) is not None)
    assert outputs == {mine + "\n"}


def test_ip_hash_respects_weights() -> None:
    s = servers(1, 3)
    b = make_balancer("ip_hash", s)
    counts = Counter(b.pick(k, NOW) for k in client_keys(10_000))
    assert abs(counts[s[1]] / 10_000 - 0.75) < 0.02


def test_ip_hash_unavailable_server_moves_only_its_keys() -> None:
    s = servers(1, 1, 1, 1)
    b = make_balancer("ip_hash", s)
    keys = client_keys(4000)
    before = {k: b.pick(k, NOW) for k in keys}
    s[2].healthy = False
    after = {k: b.pick(k, NOW) for k in keys}
    for k in keys:
        if before[k] is not s[2]:
            assert after[k] is before[k]
        else:
            assert after[k] is not s[2]
    # excluding works the same way as being down
    s[2].healthy = True
    assert all(b.pick(k, NOW, exclude={s[2].key}) is after[k] for k in keys)


@settings(max_examples=4, deadline=None)  # each example hashes 2 x 10k keys
@example(weights=[1, 1, 1, 1], new_weight=1, position=2)
@given(st.lists(st.integers(1, 4), min_size=1, max_size=6), st.integers(1, 4), st.integers(0, 6))
def test_ip_hash_adding_a_server_moves_few_keys_all_to_it(
    weights: list[int], new_weight: int, position: int
) -> None:
    keys = client_keys(10_000)
    before = servers(*weights)
    newcomer = ServerState(key="192.0.2.1:8080", host="192.0.2.1", port=8080, weight=new_weight)
    after = servers(*weights)  # fresh state objects, as after a reload
    after.insert(min(position, len(after)), newcomer)
    old, new = make_balancer("ip_hash", before), make_balancer("ip_hash", after)
    moved = 0
    for k in keys:
        a, b = old.pick(k, NOW), new.pick(k, NOW)
        assert a is not None
        assert b is not None
        if a.key != b.key:
            moved += 1
            assert b is newcomer
    expected = new_weight / (sum(weights) + new_weight)
    assert expected - 0.03 <= moved / len(keys) <= expected + 0.03


def test_ip_hash_cache_overflow_keeps_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(IpHash, "_CACHE_SIZE", 4)
    reference = [make_balancer("ip_hash", servers(1, 2, 3)).pick(k, NOW) for k in client_keys(50)]
    s = servers(1, 2, 3)
    b = make_balancer("ip_hash", s)
    for _ in range(2):
        assert [p.key for p in reference if p] == [
            p.key for k in client_keys(50) if (p := b.pick(k, NOW)) is not None
        ]


# --- random two and the "never an unavailable server" property -------------------------


def test_random_two_prefers_less_loaded() -> None:
    s = servers(1, 1)
    s[0].active = 10
    b = make_balancer("random_two", s, rng=random.Random(7))
    assert all(b.pick(b"", NOW) is s[1] for _ in range(20))


def test_random_two_spreads_when_idle() -> None:
    s = servers(1, 1, 1, 1)
    b = make_balancer("random_two", s, rng=random.Random(7))
    counts = Counter(b.pick(b"", NOW) for _ in range(400))
    assert set(counts) == set(s)


server_specs = st.lists(
    st.tuples(
        st.integers(1, 5),  # weight
        st.integers(0, 5),  # active
        st.booleans(),  # healthy
        st.sampled_from([0.0, NOW - 1, NOW + 1]),  # ejected_until
        st.booleans(),  # excluded
    ),
    max_size=8,
)


@given(
    st.sampled_from(BALANCE_ALGORITHMS), server_specs, st.integers(0, 2**32), st.binary(max_size=8)
)
def test_never_picks_unavailable_or_excluded(
    algorithm: BalanceAlgorithm,
    specs: list[tuple[int, int, bool, float, bool]],
    seed: int,
    client_key: bytes,
) -> None:
    s = servers(*(w for w, *_ in specs))
    exclude = set()
    for server, (_, active, healthy, ejected_until, excluded) in zip(s, specs, strict=True):
        server.active, server.healthy, server.ejected_until = active, healthy, ejected_until
        if excluded:
            exclude.add(server.key)
    candidates = [x for x in s if x.available(NOW) and x.key not in exclude]
    b = make_balancer(algorithm, s, rng=random.Random(seed))
    for _ in range(5):
        picked = b.pick(client_key, NOW, exclude)
        if candidates:
            assert picked in candidates
        else:
            assert picked is None
    if algorithm == "least_conn" and candidates:
        best = min(x.active / x.weight for x in candidates)
        assert picked is not None
        assert picked.active / picked.weight == best
