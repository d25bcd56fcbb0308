"""Pure parse/emit of the wire formats: Ethernet, IPv4, IPv6, TCP and its options, MPTCP
suboptions v0/v1, crypto (key, token, IDSN, HMAC) and checksums.

Malformed input raises `WireError` and nothing else.
"""

from .errors import WireError

__all__ = ["WireError"]
