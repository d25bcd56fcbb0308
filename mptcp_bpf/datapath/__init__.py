"""datapath layer."""
