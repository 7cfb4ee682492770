"""vae (not yet implemented)."""
