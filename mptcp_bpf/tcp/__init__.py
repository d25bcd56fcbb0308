"""tcp layer."""
