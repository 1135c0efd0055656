"""Sans-IO protocol code: bytes in, decisions or bytes out.

Nothing in this package imports asyncio, socket or ssl; the network layer
(``tlsgate.net``) feeds these functions and writes what they return. That keeps
every rule here testable, fuzzable and shared by the L4 and L7 paths.
"""
