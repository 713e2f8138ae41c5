"""Auxiliary resources loaded from disk for methods (kept out of the pure ``methods`` package)."""

from mergekit_tokenplug.resources.embedder import clear_embedder_cache, load_text_embedder

__all__ = ["clear_embedder_cache", "load_text_embedder"]
