"""cc layer."""
