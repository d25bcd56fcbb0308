"""mptcp-bpf: a user-space Multipath TCP stack whose fast path runs as eBPF (XDP)."""

__version__ = "0.1.0"
