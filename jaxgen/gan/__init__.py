"""gan (not yet implemented)."""
