"""Heal a model: train only its transplanted (or tool-token) rows on a text or prompt/completion
corpus, regularized toward their estimate, data parallel through accelerate."""

from mergekit_tokenplug.heal.command import run_heal

__all__ = ["run_heal"]
