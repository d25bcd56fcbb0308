"""tcp layer: one subflow TCP endpoint, I/O-free (subflow.Subflow and its mixins in
recovery, rtt, receive, inspect), the congestion-control interface (congestion), a plain
TCP host over it (plain) and an in-memory network on virtual time for tests (netsim).
See docs/notes/tcp.md."""
