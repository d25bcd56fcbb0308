"""The lab: multipath topologies in network namespaces, link impairments without netem,
and the kernel's MPTCP as the peer. Start with `Lab.up(name, paths=2, router=False, ipv6=False)`."""

from mptcp_bpf.lab.topology import Lab

__all__ = ["Lab"]
