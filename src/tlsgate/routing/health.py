"""Active health check verdicts: HAProxy's rise/fall state machine.

How this works: a server is UP or DOWN. A *streak* counts the consecutive
observations that argue for the other state; the table below says, for each
(state, observation), whether the streak grows or resets and which threshold
flips the state. The supervisor feeds one observation per check and pushes a
change to the workers only when :meth:`HealthState.observe` reports one.

==========  ===========  ================  ===============  ==========
state       observation  streak            flips when       new state
==========  ===========  ================  ===============  ==========
UP          success      reset to 0        --               UP
UP          failure      +1                streak == fall   DOWN
DOWN        failure      reset to 0        --               DOWN
DOWN        success      +1                streak == rise   UP
==========  ===========  ================  ===============  ==========

A flip resets the streak. Servers start UP (HAProxy's default), so a new
server takes traffic at once and needs ``fall`` failed checks to be dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True, slots=True)
class _Rule:
    grows_streak: bool  # False: the observation confirms the state, streak resets
    threshold: Literal["rise", "fall"] | None
    flip_to_up: bool | None


# (up, success) -> rule; the table in the module docstring, as data.
_RULES: dict[tuple[bool, bool], _Rule] = {
    (True, True): _Rule(grows_streak=False, threshold=None, flip_to_up=None),
    (True, False): _Rule(grows_streak=True, threshold="fall", flip_to_up=False),
    (False, False): _Rule(grows_streak=False, threshold=None, flip_to_up=None),
    (False, True): _Rule(grows_streak=True, threshold="rise", flip_to_up=True),
}


class HealthState:
    """The rise/fall verdict for one server.

    Args:
        rise: consecutive successes that bring a DOWN server UP (>= 1).
        fall: consecutive failures that take an UP server DOWN (>= 1).
        initially_up: the starting state.

    Raises:
        ValueError: ``rise`` or ``fall`` below 1.
    """

    __slots__ = ("_fall", "_rise", "_streak", "_up")

    def __init__(self, rise: int, fall: int, *, initially_up: bool = True) -> None:
        if rise < 1 or fall < 1:
            raise ValueError(f"rise and fall must be >= 1 (got rise={rise}, fall={fall})")
        self._rise = rise
        self._fall = fall
        self._up = initially_up
        self._streak = 0

    @property
    def up(self) -> bool:
        """The current verdict."""
        return self._up

    def observe(self, success: bool) -> bool | None:
        """Feed one check result.

        Returns:
            The new ``up`` value when this observation flipped it, else None.
        """
        rule = _RULES[(self._up, bool(success))]
        if not rule.grows_streak:
            self._streak = 0
            return None
        self._streak += 1
        limit = self._rise if rule.threshold == "rise" else self._fall
        if self._streak < limit or rule.flip_to_up is None:
            return None
        self._up = rule.flip_to_up
        self._streak = 0
        return self._up

    def __repr__(self) -> str:
        state = "UP" if self._up else "DOWN"
        return f"HealthState({state}, streak={self._streak}, rise={self._rise}, fall={self._fall})"


def status_matches(status: int, expect: tuple[int, int]) -> bool:
    """Whether an HTTP check's ``status`` is in the inclusive range ``expect``."""
    low, high = expect
    return low <= status <= high
