"""tlsgate: a TLS-first load balancer."""

__version__ = "0.1.0"
