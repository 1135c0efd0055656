"""The supervisor/worker channel: framing, descriptor passing, EOF."""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

import pytest

from tlsgate.certs.tickets import TicketKeys
from tlsgate.config.model import BindAddress
from tlsgate.ipc import Channel, Configured, HealthUpdate, RotateTicketKeys, Stop


def _pair() -> tuple[Channel, Channel]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    b.setblocking(False)
    return Channel(a), Channel(b)


def _drain(ch: Channel) -> list[tuple[object, list[int]]]:
    out: list[tuple[object, list[int]]] = []
    for _ in range(50):
        got = ch.receive_available()
        out.extend(got)
        if got:
            break
    return out


def test_messages_arrive_in_order_with_their_descriptors(tmp_path: Path) -> None:
    tx, rx = _pair()
    files = [os.open(tmp_path / f"f{i}", os.O_CREAT | os.O_RDWR, 0o600) for i in range(3)]
    try:
        tx.send(HealthUpdate("app", "127.0.0.1:1", False))
        tx.send(Stop(3.0), files)
        tx.send(Configured(1, 7))
        received: list[tuple[object, list[int]]] = []
        while len(received) < 3:
            received += _drain(rx)
        (m1, f1), (m2, f2), (m3, f3) = received
        assert m1 == HealthUpdate("app", "127.0.0.1:1", False)
        assert f1 == []
        assert m2 == Stop(3.0)
        assert len(f2) == 3
        assert m3 == Configured(1, 7)
        assert f3 == []
        # the received descriptors are the same open files
        for original, got in zip(files, f2, strict=True):
            assert os.fstat(original).st_ino == os.fstat(got).st_ino
            os.close(got)
    finally:
        for fd in files:
            os.close(fd)
        tx.close()
        rx.close()


def test_large_message_is_reassembled() -> None:
    tx, rx = _pair()
    big = HealthUpdate("b" * 300_000, "s", True)
    t = threading.Thread(target=tx.send, args=(big,))
    t.start()
    received: list[tuple[object, list[int]]] = []
    while not received:
        received += rx.receive_available()
    t.join()
    assert received[0][0] == big
    tx.close()
    rx.close()


def test_ticket_keys_travel_intact_and_never_show() -> None:
    tx, rx = _pair()
    keys = TicketKeys.generate()
    tx.send(RotateTicketKeys(keys))
    received: list[tuple[object, list[int]]] = []
    while not received:
        received += rx.receive_available()
    message = received[0][0]
    assert isinstance(message, RotateTicketKeys)
    assert message.keys.secret == keys.secret
    assert message.keys.for_listener("https") == keys.for_listener("https")
    assert keys.secret.hex() not in repr(message)
    assert repr(keys.secret) not in repr(message)
    tx.close()
    rx.close()


def test_peer_close_is_eof() -> None:
    tx, rx = _pair()
    tx.close()
    with pytest.raises(EOFError):
        rx.receive_available()
    rx.close()


def test_bind_address_renders_ipv6_in_brackets() -> None:
    assert str(BindAddress("::1", 443)) == "[::1]:443"
    assert str(BindAddress("127.0.0.1", 80)) == "127.0.0.1:80"
