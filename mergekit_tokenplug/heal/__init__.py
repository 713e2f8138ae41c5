"""Heal a model: train only rows of its vocabulary matrices (every input row, a transplant's
estimated rows, or tool-token rows) on a text or prompt/completion corpus, regularized toward
where they started, data parallel through accelerate."""

from mergekit_tokenplug.heal.command import run_heal

__all__ = ["run_heal"]
