"""Private certificate authorities (a leaf package: imports only errors and keyfiles)."""

from tlsgate.ca.local import CAKeyType, IssuedCertificate, LeafKeyType, LocalCA

__all__ = ["CAKeyType", "IssuedCertificate", "LeafKeyType", "LocalCA"]
