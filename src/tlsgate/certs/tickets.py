"""TLS session ticket keys shared by every worker of a node.

Why: a session ticket (RFC 5077 for TLS 1.2, the PSK tickets of RFC 8446 for
TLS 1.3) is the session state encrypted with a key only the server knows, so
any process holding that key can resume the session. OpenSSL gives every
``SSL_CTX`` its own random key, and each worker builds its own contexts, so
without help a ticket resumes only on the worker that issued it (about half
the time with two workers) and never after a reload, which builds new
contexts. HAProxy (``tls-ticket-keys``) and nginx (``ssl_session_ticket_key``)
solve this by giving every process the same key; so does tlsgate: the
supervisor makes a random :class:`TicketKeys` secret, keeps it across reloads,
replaces it on a schedule and sends it to every worker, which sets a key
derived from it on each server context. The secret lives in memory only: it
is never written to a disk and never logged (its ``repr`` hides it).

How: Python's ``ssl`` module cannot set ticket keys, so this module calls
``SSL_CTX_set_tlsext_ticket_keys`` itself, which is the macro
``SSL_CTX_ctrl(ctx, SSL_CTRL_SET_TLSEXT_TICKET_KEYS (59), len, keys)``. In
OpenSSL 1.1.1 and 3.x the key is exactly 80 bytes: a 16-byte key name (sent in
the clear in every ticket, to find the key again), a 32-byte HMAC-SHA256 key
and a 32-byte AES-256-CBC key; any other length is refused, and a ``NULL``
buffer returns the required length, which is checked first. The function is
looked up through ``_ssl``'s own shared object (``dlsym`` on it searches the
libraries it is linked to), so it is the libssl that Python's contexts live
in. The ``SSL_CTX *`` comes from the Python object: in CPython
``PySSLContext`` is ``PyObject_HEAD`` followed by ``SSL_CTX *ctx`` (so in
3.11 to 3.13; the header's size is ``object.__basicsize__``). Reading that
pointer is only safe if the layout is right, so it is used only on those
CPython versions, after
checking once on a scratch context that OpenSSL's view of the context follows
what Python sets (options, verify mode, minimum version) and that the key
reads back, and again per context (options, verify mode, minimum version)
before every call. If anything does not match, nothing is called: one warning
is logged and every context keeps OpenSSL's own per-process key, which is
how tlsgate behaved before (tickets resume on the issuing worker only).

OpenSSL holds one ticket key per context through this API, so a rotation
replaces it: tickets issued under the previous key stop resuming, and those
clients make one full handshake and get a new ticket. Keeping the previous
key for decryption would need ``SSL_CTX_set_tlsext_ticket_key_evp_cb``, a
callback into Python from inside every handshake; that is left out on
purpose. OpenSSL encrypts and decrypts tickets with the connection's *initial*
context (``session_ctx``), not the one an SNI callback switches to, but
callers set the key on every context a listener uses so either would do.

Each listener gets its own key, derived from the node secret and the listener
name (HKDF-Expand, SHA-256), so a ticket resumes only on the listener that
issued it: CPython gives every context the same session-id context
(``"Python"``), so OpenSSL alone would not keep listeners with different
certificates or policies apart.

Session-ID resumption (the stateful cache, and TLS 1.3 when tickets are off)
stays per worker: the cache lives in one process's memory. Tickets are what
makes resumption work across workers.
"""

from __future__ import annotations

import ctypes
import logging
import secrets
import ssl
import sys
from dataclasses import dataclass, field
from functools import cache

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

__all__ = [
    "SERVER_GROUPS",
    "TICKET_KEY_SIZE",
    "TicketKeys",
    "set_key_exchange_groups",
    "set_ticket_key",
    "ticket_key_support",
]

log = logging.getLogger(__name__)

# name (16) + HMAC-SHA256 key (32) + AES-256 key (32): OpenSSL 1.1.1 and 3.x.
TICKET_KEY_SIZE = 80
SECRET_SIZE = 32

_SSL_CTRL_GET_TLSEXT_TICKET_KEYS = 58
_SSL_CTRL_SET_TLSEXT_TICKET_KEYS = 59
_SSL_CTRL_GET_MIN_PROTO_VERSION = 130
_SSL_CTRL_SET_GROUPS_LIST = 92  # SSL_CTX_set1_groups_list is this macro
# The key exchange groups servers offer: OpenSSL 3's defaults without the finite-field
# ones (ffdhe2048..8192), which a client could pick to make each handshake cost a worker
# up to ~80 times the CPU of X25519 (measured with ffdhe8192).
SERVER_GROUPS = "X25519:P-256:X448:P-521:P-384"
# ssl.VerifyMode -> SSL_VERIFY_PEER (1) | SSL_VERIFY_FAIL_IF_NO_PEER_CERT (2), as _ssl maps them
_VERIFY_MASK = 0x03
_VERIFY_MODES = {ssl.CERT_NONE: 0x00, ssl.CERT_OPTIONAL: 0x01, ssl.CERT_REQUIRED: 0x03}
# CPython versions whose PySSLContext starts with PyObject_HEAD, SSL_CTX *ctx.
_KNOWN_LAYOUT = ((3, 11), (3, 13))
_INFO = b"tlsgate session ticket key v1, listener "


@dataclass(frozen=True)
class TicketKeys:
    """The node's ticket secret: made by the supervisor, sent to every worker.

    Plain picklable data. ``repr`` never shows the secret.
    """

    secret: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.secret) < SECRET_SIZE:
            raise ValueError(f"a ticket secret has at least {SECRET_SIZE} bytes")

    @classmethod
    def generate(cls) -> TicketKeys:
        """A new random secret (``secrets.token_bytes``)."""
        return cls(secrets.token_bytes(SECRET_SIZE))

    def for_listener(self, name: str) -> bytes:
        """The 80-byte OpenSSL ticket key (name, HMAC key, AES key) for listener ``name``."""
        hkdf = HKDFExpand(hashes.SHA256(), TICKET_KEY_SIZE, _INFO + name.encode())
        return hkdf.derive(self.secret)


class _LibSSL:
    """ctypes bindings to the libssl that ``_ssl`` is linked to."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        self.ctrl = lib.SSL_CTX_ctrl
        self.ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_void_p]
        self.ctrl.restype = ctypes.c_long
        self.get_options = lib.SSL_CTX_get_options
        self.get_options.argtypes = [ctypes.c_void_p]
        self.get_options.restype = ctypes.c_uint64
        self.get_verify_mode = lib.SSL_CTX_get_verify_mode
        self.get_verify_mode.argtypes = [ctypes.c_void_p]
        self.get_verify_mode.restype = ctypes.c_int
        self.clear_errors = lib.ERR_clear_error
        self.clear_errors.argtypes = []
        self.clear_errors.restype = None
        self.version_num = lib.OpenSSL_version_num
        self.version_num.argtypes = []
        self.version_num.restype = ctypes.c_ulong

    def context_pointer(self, ctx: ssl.SSLContext) -> int | None:
        """The ``SSL_CTX *`` of ``ctx``, or None if OpenSSL's view of it doesn't match Python's."""
        ptr = ctypes.c_void_p.from_address(id(ctx) + object.__basicsize__).value
        if not ptr or ptr % ctypes.sizeof(ctypes.c_void_p):
            return None
        minimum = int(ctx.minimum_version)
        if (
            self.get_options(ptr) != int(ctx.options)
            or self.get_verify_mode(ptr) & _VERIFY_MASK != _VERIFY_MODES[ctx.verify_mode]
            or self.ctrl(ptr, _SSL_CTRL_GET_MIN_PROTO_VERSION, 0, None) != max(minimum, 0)
        ):
            return None
        return ptr

    def set_groups(self, ptr: int, groups: str) -> bool:
        """Set the key exchange groups of the context at ``ptr``."""
        if self.ctrl(ptr, _SSL_CTRL_SET_GROUPS_LIST, 0, groups.encode("ascii")) != 1:
            self.clear_errors()
            return False
        return True

    def set_key(self, ptr: int, key: bytes) -> bool:
        """Set ``key`` on the context at ``ptr`` and read it back."""
        if self.ctrl(ptr, _SSL_CTRL_GET_TLSEXT_TICKET_KEYS, 0, None) != len(key):
            return False
        buf = ctypes.create_string_buffer(key, len(key))
        back = ctypes.create_string_buffer(len(key))
        try:
            if self.ctrl(ptr, _SSL_CTRL_SET_TLSEXT_TICKET_KEYS, len(key), buf) != 1:
                self.clear_errors()
                return False
            if self.ctrl(ptr, _SSL_CTRL_GET_TLSEXT_TICKET_KEYS, len(key), back) != 1:
                self.clear_errors()
                return False
            return back.raw == key
        finally:
            ctypes.memset(buf, 0, len(key))
            ctypes.memset(back, 0, len(key))


@cache
def _bindings() -> _LibSSL | str:
    """The bindings, checked on a scratch context; or why there are none."""
    if sys.implementation.name != "cpython":
        return f"not CPython ({sys.implementation.name})"
    version = sys.version_info[:2]
    if not _KNOWN_LAYOUT[0] <= version <= _KNOWN_LAYOUT[1]:
        return f"the ssl.SSLContext layout of Python {version[0]}.{version[1]} is not known"
    try:
        import _ssl

        lib = _LibSSL(ctypes.CDLL(_ssl.__file__))
    except (ImportError, OSError, AttributeError) as exc:
        return f"libssl functions not reachable through _ssl: {exc}"
    if _ssl._SSLContext.__basicsize__ < object.__basicsize__ + ctypes.sizeof(ctypes.c_void_p):
        return "ssl.SSLContext is too small to hold an SSL_CTX pointer"
    if lib.version_num() != ssl.OPENSSL_VERSION_NUMBER:
        return "the libssl found is not the one the ssl module uses"
    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ptr = lib.context_pointer(probe)
    # OpenSSL must follow what Python changes, not just match by chance
    probe.options ^= ssl.OP_NO_TICKET
    probe.verify_mode = ssl.CERT_REQUIRED
    probe.minimum_version = ssl.TLSVersion.TLSv1_3
    if ptr is None or lib.context_pointer(probe) != ptr:
        return "ssl.SSLContext does not hold an SSL_CTX where expected"
    if lib.ctrl(ptr, _SSL_CTRL_GET_TLSEXT_TICKET_KEYS, 0, None) != TICKET_KEY_SIZE:
        return f"this libssl does not take {TICKET_KEY_SIZE}-byte ticket keys"
    if not lib.set_key(ptr, secrets.token_bytes(TICKET_KEY_SIZE)):
        return "OpenSSL did not accept a ticket key"
    return lib


def ticket_key_support(*, warn: bool = False) -> str | None:
    """None if :func:`set_ticket_key` works in this process, else the reason it can't.

    With ``warn``, an answer other than None is also logged (once per process).
    """
    lib = _bindings()
    if isinstance(lib, str):
        if warn:
            _warn_once(lib)
        return lib
    return None


_warned = False


def set_ticket_key(ctx: ssl.SSLContext, key: bytes) -> bool:
    """Make server context ``ctx`` encrypt and decrypt session tickets with ``key``.

    ``key`` is :data:`TICKET_KEY_SIZE` bytes (see :meth:`TicketKeys.for_listener`).
    Returns False, logging one warning per process, if it cannot be done here;
    ``ctx`` then keeps OpenSSL's own random key.
    """
    if len(key) != TICKET_KEY_SIZE:
        raise ValueError(f"a ticket key has {TICKET_KEY_SIZE} bytes, not {len(key)}")
    lib = _bindings()
    if isinstance(lib, str):
        _warn_once(lib)
        return False
    if not isinstance(ctx, ssl.SSLContext):
        raise TypeError(f"expected an ssl.SSLContext, got {type(ctx).__name__}")
    ptr = lib.context_pointer(ctx)
    if ptr is None:
        _warn_once("an ssl.SSLContext does not hold its SSL_CTX where expected")
        return False
    if not lib.set_key(ptr, key):
        _warn_once("OpenSSL did not accept the ticket key")
        return False
    return True


_warned_groups = False


def set_key_exchange_groups(ctx: ssl.SSLContext, groups: str = SERVER_GROUPS) -> bool:
    """Limit server context ``ctx`` to the key exchange ``groups`` (OpenSSL's syntax).

    Python's ``ssl`` sets one curve at most (``set_ecdh_curve``), and only for
    TLS 1.2; this reaches ``SSL_CTX_set1_groups_list`` the way
    :func:`set_ticket_key` reaches the ticket keys. Returns False, logging one
    warning per process, if it cannot be done here (``ctx`` keeps OpenSSL's
    defaults, finite-field groups included).
    """
    global _warned_groups
    lib = _bindings()
    reason = lib if isinstance(lib, str) else None
    if not isinstance(lib, str):
        ptr = lib.context_pointer(ctx)
        if ptr is None:
            reason = "an ssl.SSLContext does not hold its SSL_CTX where expected"
        elif not lib.set_groups(ptr, groups):
            reason = f"OpenSSL refused the group list {groups!r}"
        else:
            return True
    if not _warned_groups:
        _warned_groups = True
        log.warning(
            "TLS key exchange groups cannot be limited (%s): OpenSSL's defaults are "
            "offered, finite-field groups included, whose handshakes cost far more CPU",
            reason,
        )
    return False


def _warn_once(reason: str) -> None:
    global _warned
    if not _warned:
        _warned = True
        log.warning(
            "TLS session ticket keys cannot be shared between workers (%s); each worker "
            "uses its own, so a ticket resumes only on the worker that issued it",
            reason,
        )
