"""Helpers for channel tests (`tests:` blocks) and for plugin authors."""
