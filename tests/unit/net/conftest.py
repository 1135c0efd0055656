"""The data plane driven in memory: ``h`` is a ``net.testing.Harness`` on the test
module's ``CONFIG``."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tlsgate.net.testing import Harness


@pytest.fixture
def h(request: pytest.FixtureRequest) -> Iterator[Harness]:
    harness = Harness(request.module.CONFIG)
    yield harness
    harness.close()
