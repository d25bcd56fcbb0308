"""cli/commands layer."""
