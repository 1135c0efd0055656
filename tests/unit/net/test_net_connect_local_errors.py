"""A connect that fails in tlsgate itself is not the app server's fault (issue 8).

In a connection flood the worker can run out of file descriptors: ``socket()``
fails with EMFILE before any packet leaves. That must not eject a healthy
server (which would turn the end of the flood into seconds of 503s for
everyone), nor be retried on another server (it would fail the same way): the
request gets a 503 and the log says the server is not blamed. A real refusal
still counts against the server and is retried elsewhere.
"""

from __future__ import annotations

import asyncio
import errno
import logging

import pytest

from tlsgate.errors import LocalResourceError, UpstreamConnectError
from tlsgate.net.connect import connect_to_backend
from tlsgate.net.runtime import ServerRuntime
from tlsgate.net.testing import Harness

CONFIG = """
[[listeners]]
name = "web"
bind = ["127.0.0.1:8080"]
protocol = "http"
backend = "app"

[[backends]]
name = "app"
servers = ["127.0.0.1:9001", "127.0.0.1:9002"]
max_fails = 1
retries = 1
"""


def attempt(err: int) -> tuple[UpstreamConnectError, list[str], Harness]:
    h = Harness(CONFIG)
    tried: list[str] = []

    async def connect(server: ServerRuntime) -> object:
        tried.append(server.key)
        raise OSError(err, "boom")

    async def run() -> UpstreamConnectError:
        try:
            await connect_to_backend(h.runtime.backends["app"], b"1.2.3.4", set(), connect)
        except UpstreamConnectError as exc:
            return exc
        raise AssertionError("connect_to_backend did not fail")

    return asyncio.run(run()), tried, h


@pytest.mark.parametrize("err", [errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM])
def test_out_of_descriptors_is_a_503_and_no_server_is_ejected(
    err: int, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="tlsgate.connect"):
        exc, tried, h = attempt(err)
    try:
        assert isinstance(exc, LocalResourceError)
        assert exc.status_hint == 503
        assert len(tried) == 1  # not retried on the other server: it would fail the same
        for server in h.runtime.backends["app"].servers:
            assert server.state.healthy
            assert server.state.ejected_until == 0.0
        assert "the server is not blamed" in caplog.text
        assert "ejected" not in caplog.text
    finally:
        h.close()


def test_a_refused_connect_still_ejects_and_retries() -> None:
    exc, tried, h = attempt(errno.ECONNREFUSED)
    try:
        assert not isinstance(exc, LocalResourceError)
        assert exc.status_hint == 502
        assert len(tried) == 2  # retried on the other server
    finally:
        h.close()
