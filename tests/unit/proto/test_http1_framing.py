"""response_framing and client_keep_alive: the framing and keep-alive decisions as tables."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tlsgate.proto.http1 import (
    BODY_CHUNKED,
    BODY_NONE,
    BODY_RAW,
    client_keep_alive,
    response_framing,
)

CL = [(b"Content-Length", b"5")]
TE = [(b"Transfer-Encoding", b"chunked")]


@pytest.mark.parametrize(
    ("status", "length", "chunked", "head", "version", "expected"),
    [
        (200, b"5", False, False, "1.1", (BODY_RAW, CL, True)),
        (200, None, True, False, "1.1", (BODY_CHUNKED, TE, True)),
        (200, None, False, False, "1.1", (BODY_CHUNKED, TE, True)),  # close-delimited upstream
        (200, None, True, False, "1.0", (BODY_RAW, [], False)),  # close-delimited to 1.0
        (200, b"5", False, True, "1.1", (BODY_NONE, CL, True)),  # HEAD keeps its length
        (200, None, True, True, "1.1", (BODY_NONE, TE, True)),
        (204, b"0", False, False, "1.1", (BODY_NONE, [], True)),  # 204 never has a length
        (304, b"5", False, False, "1.1", (BODY_NONE, CL, True)),
        (101, None, False, False, "1.1", (BODY_NONE, [], True)),
    ],
)
def test_response_framing_table(
    status: int,
    length: bytes | None,
    chunked: bool,
    head: bool,
    version: str,
    expected: tuple[int, list[tuple[bytes, bytes]], bool],
) -> None:
    got = response_framing(status, length, chunked, head_request=head, client_version=version)
    assert got == expected


@given(
    status=st.integers(100, 599),
    length=st.none() | st.binary(min_size=1, max_size=4),
    chunked=st.booleans(),
    head=st.booleans(),
    version=st.sampled_from(["1.0", "1.1"]),
)
def test_response_framing_invariants(
    status: int, length: bytes | None, chunked: bool, head: bool, version: str
) -> None:
    mode, fields, reusable = response_framing(
        status, length, chunked, head_request=head, client_version=version
    )
    names = [n for n, _ in fields]
    assert len(fields) <= 1  # at most one framing field, never both
    if mode == BODY_CHUNKED:
        assert version == "1.1"  # RFC 9112 §7: never chunked to an HTTP/1.0 client
        assert names == [b"Transfer-Encoding"]
    if status == 204:
        assert b"Content-Length" not in names
    if not reusable:
        assert mode == BODY_RAW
        assert names == []


@pytest.mark.parametrize(
    ("wanted", "done", "upgrade", "status", "draining", "expected"),
    [
        (True, True, False, 200, False, True),
        (False, True, False, 200, False, False),
        (True, False, False, 200, False, False),  # the rest of the body would be misread
        (True, True, False, 200, True, False),
        (True, True, True, 101, False, True),  # a tunnel
        (True, True, True, 200, False, False),  # the parser is in upgrade mode
        (True, True, False, 101, False, False),  # 101 nobody asked for
    ],
)
def test_client_keep_alive_table(
    wanted: bool, done: bool, upgrade: bool, status: int, draining: bool, expected: bool
) -> None:
    got = client_keep_alive(
        wanted=wanted,
        request_done=done,
        upgrade_requested=upgrade,
        status=status,
        draining=draining,
    )
    assert got is expected
