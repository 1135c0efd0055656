"""HealthState (rise/fall) against a model, and status_matches."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tlsgate.routing.health import HealthState, status_matches


def is_up(h: HealthState) -> bool:
    # a call, so mypy doesn't keep `h.up` narrowed across observe()
    return h.up


def test_starts_up_and_falls_after_fall_failures() -> None:
    h = HealthState(rise=2, fall=3)
    assert is_up(h)
    assert h.observe(False) is None
    assert h.observe(False) is None
    assert h.observe(False) is False
    assert not is_up(h)
    assert h.observe(False) is None


def test_rises_after_rise_successes() -> None:
    h = HealthState(rise=2, fall=1, initially_up=False)
    assert not is_up(h)
    assert h.observe(True) is None
    assert h.observe(True) is True
    assert is_up(h)
    assert h.observe(True) is None


def test_interrupted_streak_starts_over() -> None:
    h = HealthState(rise=2, fall=2)
    assert h.observe(False) is None
    assert h.observe(True) is None  # resets the failure streak
    assert h.observe(False) is None
    assert h.observe(False) is False
    assert h.observe(True) is None
    assert h.observe(False) is None  # resets the success streak
    assert h.observe(True) is None
    assert h.observe(True) is True


def test_rise_fall_of_one_flip_immediately() -> None:
    h = HealthState(rise=1, fall=1)
    assert h.observe(False) is False
    assert h.observe(True) is True


@pytest.mark.parametrize(("rise", "fall"), [(0, 1), (1, 0), (-1, 3)])
def test_rise_fall_must_be_positive(rise: int, fall: int) -> None:
    with pytest.raises(ValueError, match="rise and fall"):
        HealthState(rise, fall)


def test_repr() -> None:
    assert repr(HealthState(2, 3)) == "HealthState(UP, streak=0, rise=2, fall=3)"


class Model:
    """The rule stated plainly: flip once the last `fall` (or `rise`) observations
    since the previous flip all argue for the other state."""

    def __init__(self, rise: int, fall: int, up: bool) -> None:
        self.rise, self.fall, self.up = rise, fall, up
        self.since_flip: list[bool] = []

    def observe(self, success: bool) -> bool | None:
        self.since_flip.append(success)
        need = self.fall if self.up else self.rise
        window = self.since_flip[-need:]
        if len(window) == need and all(ok != self.up for ok in window):
            self.up = not self.up
            self.since_flip = []
            return self.up
        return None


@given(st.integers(1, 5), st.integers(1, 5), st.booleans(), st.lists(st.booleans(), max_size=60))
def test_matches_model(rise: int, fall: int, initially_up: bool, observations: list[bool]) -> None:
    h = HealthState(rise, fall, initially_up=initially_up)
    model = Model(rise, fall, initially_up)
    for ok in observations:
        assert h.observe(ok) == model.observe(ok)
        assert h.up == model.up


@pytest.mark.parametrize(
    ("status", "expect", "ok"),
    [
        (200, (200, 399), True),
        (399, (200, 399), True),
        (404, (200, 399), False),
        (199, (200, 399), False),
        (204, (204, 204), True),
    ],
)
def test_status_matches(status: int, expect: tuple[int, int], ok: bool) -> None:
    assert status_matches(status, expect) is ok
