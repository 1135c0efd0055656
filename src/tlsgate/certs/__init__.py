"""Certificates for the data plane: bundles loaded from files, and the SNI cache.

``bundle`` turns PEM files into picklable :class:`CertificateBundle` values;
``cache`` turns bundles into ``ssl.SSLContext`` objects and picks one per
handshake without blocking.
"""

from tlsgate.certs.bundle import (
    CertificateBundle,
    KeyType,
    check_certificate_files,
    load_bundle,
    load_bundles,
)
from tlsgate.certs.cache import CertificateCache, make_client_context, make_server_context

__all__ = [
    "CertificateBundle",
    "CertificateCache",
    "KeyType",
    "check_certificate_files",
    "load_bundle",
    "load_bundles",
    "make_client_context",
    "make_server_context",
]
