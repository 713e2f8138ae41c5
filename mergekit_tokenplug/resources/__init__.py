"""Auxiliary resources loaded from disk for methods (kept out of the pure ``methods`` package)."""
