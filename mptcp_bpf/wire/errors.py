"""The one exception of the wire codec.

Every malformed or truncated input raises `WireError` (a ValueError), never IndexError,
struct.error or the like, so a caller needs one `except` to count and drop a bad packet.
Emitting an object that cannot be put on the wire (a field out of range, options too
long) raises it too.
"""

from __future__ import annotations


class WireError(ValueError):
    """Malformed, truncated or unrepresentable wire data."""
