"""What a method kernel receives: the rows to estimate for one matrix of one model.

Kernels are pure functions of tensors (no files, no tokenizer objects): the vocabulary
seam builds an :class:`EstimationProblem` with exactly what the method's ``needs`` ask for
and writes the returned rows into the model's output matrix.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class EstimationProblem:
    """Rows to estimate for one matrix (input embeddings or output head) of one model.

    ``base`` is the model's own matrix: estimates must live in its space. Anchors are tokens
    the model shares with the space the targets are known in (``donor``); for a one-model
    transplant that is the donor model, for a union merge another input model.
    """

    base: torch.Tensor  # (V_m, d) the model's own rows, float32, on the compute device
    anchor_ids: torch.Tensor  # (N,) long: rows of `base` whose tokens are shared
    n_targets: int  # T, the number of rows to estimate
    donor: torch.Tensor | None = None  # (V_s, d_s) matrix of the space the targets are known in
    donor_anchor_ids: torch.Tensor | None = None  # (N,) rows of `donor` for the same anchors
    donor_target_ids: torch.Tensor | None = None  # (T,) rows of `donor` holding the targets
    target_texts: list[str] | None = None  # decoded text of each target token
    target_pieces: list[list[int]] | None = None  # ids (rows of `base`) of each text split by the base tokenizer
    base_vocab_texts: list[str] | None = None  # decoded text of every row of `base`
    role: str = "input"  # "input" (embeddings) or "output" (lm_head)
    seed: int = 0
    label: str = ""  # shown on progress bars, e.g. "model-a lm_head"
    show_progress: bool = True
    # Optional capabilities supplied by the seam for methods that declare them, e.g.
    # "embed_texts": Callable[[list[str]], Tensor] (auxiliary embedder),
    # "model_forward": Callable[[list[str]], Tensor] (mean-pooled final hidden states).
    extras: dict[str, Callable[..., Any] | Any] = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        return self.base.device

    def generator(self, offset: int = 0) -> torch.Generator:
        """A generator seeded from the problem's seed: same inputs + seed -> same rows."""
        gen = torch.Generator(device=self.base.device)
        gen.manual_seed((int(self.seed) * 1_000_003 + offset) % (2**63 - 1))
        return gen

    def mean_row(self) -> torch.Tensor:
        """Mean of the model's rows: the documented fallback estimate."""
        return self.base.float().mean(dim=0)
