"""Pure routing decisions: host/SNI matching, load balancing, health state.

No I/O here (no asyncio, socket or ssl): the data plane and the supervisor hold
the clocks and the sockets and ask these objects what to do.
"""
