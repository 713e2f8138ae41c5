"""What heal's training bar calls its loss: the objective's terms (``lm`` alone, or the
weighted distillation terms), the last step's raw value, and the mean of recent steps under a
label that says so. A bare ``loss=`` hid both which objective it was and that it was smoothed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # train.py imports this module for its bar: no import of train here
    from collections.abc import Callable

    import torch

    from mergekit_tokenplug.heal.distill import DistillWeights
    from mergekit_tokenplug.heal.examples import Examples

    Objective = Callable[[Any, Examples, list[int]], torch.Tensor]  # train.Objective

RECENT = 10  # steps in the bar's labelled mean


def objective_label(weights: DistillWeights | None) -> str:
    """``lm`` for the LM loss alone; else the weighted terms, e.g. ``lm+chunk+0.5*hidden``."""
    if weights is None:
        return "lm"
    terms = (
        ("lm", weights.lm),
        ("chunk", weights.chunk),
        ("hidden", weights.hidden),
        ("piece", weights.piece),
    )
    return "+".join(name if w == 1 else f"{w:g}*{name}" for name, w in terms if w) or "0"


@dataclass
class Labelled:
    """An objective with the label the training bar shows for it."""

    objective: Objective
    label: str

    def __call__(self, model: Any, batch: Examples, picks: list[int]) -> torch.Tensor:
        return self.objective(model, batch, picks)


def loss_postfix(label: str, losses: list[float]) -> dict[str, str]:
    """The bar's postfix: the last step's raw loss under ``label`` and the mean of up to
    ``RECENT`` last steps as ``avg10``."""
    recent = losses[-RECENT:]
    return {label: f"{losses[-1]:.4f}", f"avg{RECENT}": f"{sum(recent) / len(recent):.4f}"}
