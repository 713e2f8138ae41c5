"""The leave-out set of ``compare``: what every estimator sees and what it is scored against.

Its own module so that the plugin's methods (``compare``) and mergekit-tokensurgeon's
(``tokensurgeon_ref``) both read it without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from mergekit_tokenplug.fill import SourceSpace, TextSupport


@dataclass
class HoldOut:
    """Everything the methods see in the leave-out, and the truth they are scored against."""

    base: torch.Tensor  # base rows without the hidden ones (compacted)
    true: torch.Tensor  # (T, d) the hidden rows
    hidden_out: np.ndarray  # output (donor tokenizer) ids of the hidden tokens
    anchor_out: np.ndarray  # output ids of the shared tokens left as anchors
    out_to_base: np.ndarray  # (n_tokens,) compacted base row, -1 where hidden / missing
    hidden_base: np.ndarray  # rows of the full base matrix that were hidden
    compact: np.ndarray  # (full base rows,) compacted row of each, -1 where hidden
    regular: np.ndarray  # (n_tokens,) regular output tokens
    donor_space: SourceSpace | None
    texts: TextSupport | None  # None when the base tokenizer cannot be cut (not BPE)
    categories: list[str]  # per hidden token
    missing_mix: dict[str, int]  # category counts of the really missing tokens
    plan: Any
    base_ref: Any
    seed: int
    info: dict[str, Any] = field(default_factory=dict)
    out_tokenizer: Any = None  # the donor's (output) tokenizer
    cut_tokenizer: Any = None  # the base tokenizer without the hidden tokens (BPE only)
    donor_ref: Any = None
