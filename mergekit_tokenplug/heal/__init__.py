"""Heal a transplanted model: train only the transplanted rows on a text corpus, regularized
toward their estimate, data parallel through accelerate."""

from mergekit_tokenplug.heal.command import run_heal

__all__ = ["run_heal"]
