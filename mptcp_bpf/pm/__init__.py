"""pm layer."""
