"""mptcp layer."""
