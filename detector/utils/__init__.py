"""Utilities: distributed helpers (comm), logging set-up, metrics writers."""
