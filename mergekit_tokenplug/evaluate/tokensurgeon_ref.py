"""mergekit-tokensurgeon's own approximation methods as ``compare`` entries (``tokensurgeon:NAME``).

Why: a claim such as "tokensurgeon's omp gives our omp's answer" should be measured on the
same leave-out, not argued. Each entry calls mergekit's ``compute_new_embeddings`` (the function
``mergekit-tokensurgeon`` runs on every batch of new tokens); nothing of it is reimplemented
here. What it is given is compare's leave-out, so it sees exactly what the plugin's methods see:

* ``orig_embed`` is compare's base matrix with the hidden rows removed (ids compacted);
* the shared vocabulary is exactly compare's anchors: ``orig_vocab`` holds only them, keyed by
  mergekit's own normalized donor tokens (``normalized_vocabulary``), so a hidden token is never
  a shared token and both sides use the same anchors;
* ``subword`` splits with compare's base tokenizer cut of the hidden tokens, its ids renumbered
  to the compacted rows.

Parameters are ``TokenSurgeonOptions``' defaults (k=64, Euclidean distance, distance-proportional
weights, subword mean, no noise or scaling), in batches of 512 targets like its command line.
Only the input embeddings are compared. One deviation, for ``stb``: the command line passes its
options object where ``compute_token_basis`` expects ``k`` (and crashes); here ``k`` is passed.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import numpy as np
import torch
from mergekit.scripts.tokensurgeon import (
    ApproximationMethod,
    TokenSurgeonOptions,
    compute_new_embeddings,
)
from mergekit.tokenizer.normalization import normalized_vocabulary
from mergekit.tokensurgeon import compute_token_basis

from mergekit_tokenplug.errors import ConfigError, InputError
from mergekit_tokenplug.evaluate.holdout import HoldOut

PREFIX = "tokensurgeon:"
#: ``mergekit-tokensurgeon --batch-size`` default (targets per compute_new_embeddings call).
BATCH = 512
#: Methods that read the donor's embedding rows.
NEEDS_DONOR = frozenset(
    {
        ApproximationMethod.COMMON_INTERPOLATION,
        ApproximationMethod.ORTHOGONAL_MATCHING_PURSUIT,
        ApproximationMethod.LANDMARK_PCA,
        ApproximationMethod.SPARSE_TOKEN_BASIS,
        ApproximationMethod.MATCHING_PURSUIT_ROPE,
    }
)
USES_K = NEEDS_DONOR - {ApproximationMethod.LANDMARK_PCA}


@dataclass(frozen=True)
class TokenSurgeonMethod:
    """One mergekit-tokensurgeon approximation method (``--approximation-method``)."""

    method: ApproximationMethod

    @property
    def name(self) -> str:
        return PREFIX + self.method.value

    def describe(self) -> dict[str, Any]:
        """What the JSON records beside the figures, so the entry reads as a reference."""
        defaults = {k: f.default for k, f in TokenSurgeonOptions.model_fields.items()}
        params: dict[str, Any] = {}
        if self.method in USES_K:
            params["k"] = defaults["k"]
        if self.method is ApproximationMethod.COMMON_INTERPOLATION:
            params["weight_scheme"] = defaults["weight_scheme"].value
            params["cosine_similarity"] = defaults["cosine_similarity"]
        if self.method is ApproximationMethod.SUBWORD:
            params["subword_method"] = defaults["subword_method"].value
        try:
            mergekit = f"mergekit {version('mergekit')}"
        except PackageNotFoundError:  # a source checkout without metadata
            mergekit = "mergekit"
        return {"reference": f"mergekit-tokensurgeon ({mergekit})", "params": params}


def lookup(name: str) -> TokenSurgeonMethod:
    """``tokensurgeon:<method>`` by its ``--approximation-method`` value; unknown names list
    the valid ones (checked before any work)."""
    value = name[len(PREFIX) :]
    known = [m.value for m in ApproximationMethod]
    if value not in known:
        raise ConfigError(
            f"unknown tokensurgeon method {value!r}; expected one of: "
            + ", ".join(PREFIX + v for v in known),
            where="--methods",
        )
    return TokenSurgeonMethod(ApproximationMethod(value))


def cannot_run(entry: TokenSurgeonMethod, holdout: HoldOut) -> str | None:
    """Why ``entry`` cannot run on this leave-out (None if it can)."""
    if entry.method in NEEDS_DONOR and holdout.donor_space is None:
        return "needs donor embeddings; the donor has no weights"
    if entry.method is ApproximationMethod.SUBWORD and holdout.cut_tokenizer is None:
        return "needs the base tokenizer split without hidden tokens (only BPE bases)"
    return None


class _HiddenLeak(RuntimeError):
    """A hidden token reached mergekit's code: a bug of the leave-out, never a skip."""


def estimate(entry: TokenSurgeonMethod, holdout: HoldOut) -> torch.Tensor:
    """Rows of the hidden tokens as mergekit-tokensurgeon computes them (see the module doc)."""
    token_of = {i: t for t, i in normalized_vocabulary(holdout.out_tokenizer).items()}
    anchors = [int(i) for i in holdout.anchor_out if int(i) in token_of]
    lost = [int(i) for i in holdout.hidden_out if int(i) not in token_of]
    if lost:
        raise InputError(
            f"{len(lost)} hidden tokens have no key in mergekit's normalized vocabulary"
        )
    if holdout.donor_space is not None:
        donor_embed, donor_src = holdout.donor_space.matrix, holdout.donor_space.src_ids
    else:  # the methods that can run without a donor never read its rows
        donor_embed, donor_src = torch.empty(0, 0), np.arange(len(holdout.out_to_base))
    orig_vocab = {token_of[i]: int(holdout.out_to_base[i]) for i in anchors}
    donor_vocab = {token_of[i]: int(donor_src[i]) for i in (*anchors, *holdout.hidden_out)}
    targets = [token_of[int(i)] for i in holdout.hidden_out]

    cut, compact = holdout.cut_tokenizer, holdout.compact

    def compacted_ids(text: str, **kwargs: Any) -> dict[str, list[int]]:
        """The cut base tokenizer as ``subword_approximate`` calls it, with ids renumbered to
        the compacted matrix's rows (the only matrix it is given)."""
        ids = cut(text, **kwargs)["input_ids"]
        rows = [int(compact[i]) if i < len(compact) else -1 for i in ids]
        if any(r < 0 for r in rows):
            raise _HiddenLeak("a hidden token came out of the tokenizer without it")
        return {"input_ids": rows}

    options = TokenSurgeonOptions(
        model=holdout.base_ref, donor=holdout.donor_ref, out_path="", method=entry.method
    )
    parts = []
    # landmark_pca, john_hewitt and randn draw random numbers: seeded, without touching the
    # caller's generator.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(holdout.seed)
        try:
            basis = None
            if entry.method is ApproximationMethod.SPARSE_TOKEN_BASIS:
                basis = compute_token_basis(
                    holdout.base, donor_embed, orig_vocab, donor_vocab, [], options.k
                )
            for lo in range(0, len(targets), BATCH):
                parts.append(
                    compute_new_embeddings(
                        holdout.base,
                        donor_embed,
                        orig_vocab,
                        donor_vocab,
                        target_tokens=targets[lo : lo + BATCH],
                        is_lm_head=False,
                        token_basis=basis,
                        orig_tokenizer=compacted_ids if cut is not None else None,
                        options=options,
                    )
                )
        except _HiddenLeak:
            raise
        except Exception as exc:  # mergekit's code, not ours: report it as a skip, not a crash
            raise InputError(f"mergekit raised {type(exc).__name__}: {exc}") from exc
    if not parts:
        return holdout.base.new_zeros((0, holdout.base.shape[1]))
    return torch.cat(parts).float()
