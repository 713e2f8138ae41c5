"""Distillation losses of heal: the student's chunks matched to the cached teacher's.

* **Chunk likelihood** (ALM, approximate likelihood matching, arXiv 2503.20083): per aligned
  chunk, the summed log-probability of its tokens, ``L_S`` for the student and ``L_T`` for the
  teacher (both <= 0), are compared as Bernoulli probabilities at a temperature ``tau``:
  ``p = exp(L / tau)``. The paper's binarized cross-entropy ``-p_T log p_S - (1 - p_T)
  log(1 - p_S)`` is used minus its value at ``p_S = p_T`` (the binary entropy of ``p_T``),
  i.e. the binary KL divergence: the same gradient, and zero exactly when the student assigns
  each chunk the teacher's likelihood. Chunk likelihoods summed over a text are the text's
  likelihood, so matching them aims at bits per byte.
* **Hidden states** (Token Distillation, arXiv 2505.20133; ALM's latent loss): the student's
  hidden state at each chunk end against the teacher's at the same bytes, squared error
  divided per channel by the teacher's mean square over the cache (so every channel counts
  alike whatever its scale). Teacher and student share every transformer weight, so the
  states live in one space and need no projection.

* **Next pieces** (``heal/pieces.py``): at every student position inside a chunk's first
  teacher token, the student's next-token distribution against the teacher's mass on each
  student piece (its ``PIECE_TOP`` likeliest tokens read as student pieces, the rest of its
  mass one outcome "other"): the KL divergence of those ``k + 1`` outcomes, zero exactly
  when the student gives each piece the teacher's mass. Where the chunk likelihood sees the
  one continuation the text took, this is the teacher's whole distribution over the next
  piece, at most positions of the window.

The training objective is ``lm * LM + chunk * chunk-likelihood + hidden * hidden-state +
piece * next-piece``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mergekit_tokenplug.heal.teacher import WindowTarget


@dataclass(frozen=True)
class DistillWeights:
    lm: float
    chunk: float
    hidden: float
    tau: float
    layer: int
    piece: float = 0.0


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """``log(1 - exp(x))`` for ``x < 0``, accurate at both ends (Maechler's split)."""
    return torch.where(x > -math.log(2.0), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def chunk_logprobs(token_logp: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """Summed log-probability of tokens ``lo..hi-1`` per chunk; ``token_logp[i]`` is the
    log-probability of token ``i + 1`` (predicted at position ``i``)."""
    csum = torch.cat([token_logp.new_zeros(1), token_logp.double().cumsum(0)])
    return (csum[hi - 1] - csum[lo - 1]).to(token_logp.dtype)


def chunk_loss(student: torch.Tensor, teacher: torch.Tensor, tau: float) -> torch.Tensor:
    """Mean binary KL between ``exp(teacher / tau)`` and ``exp(student / tau)`` per chunk."""
    eps = 1e-6  # keeps log(1 - p) finite for a chunk either side is certain of
    s = (student / tau).clamp(max=-eps)
    t = (teacher / tau).clamp(max=-eps)
    p_t = torch.exp(t)
    kl = p_t * (t - s) + (1.0 - p_t) * (log1mexp(t) - log1mexp(s))
    return kl.mean()


def hidden_loss(student: torch.Tensor, teacher: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Mean squared error per channel divided by ``scale`` (the teacher's mean square)."""
    return ((student - teacher).pow(2) / scale).mean()


def piece_loss(
    logits: torch.Tensor, ids: torch.Tensor, prob: torch.Tensor, other: torch.Tensor
) -> torch.Tensor:
    """Mean KL divergence over positions between the teacher's ``(prob, other)`` and the
    student's ``(softmax(logits)[ids], 1 - their sum)`` (``logits`` (m, V); ``ids``/``prob``
    (m, k), zero ``prob`` for padding; ``other`` (m,))."""
    logp = logits.float().log_softmax(-1)
    lp = logp.gather(1, ids)
    valid = prob > 0
    q = prob.clamp(min=1e-30)
    main = torch.where(valid, prob * (q.log() - lp), torch.zeros_like(lp)).sum(-1)
    covered = torch.where(valid, lp, torch.full_like(lp, -math.inf)).logsumexp(-1)
    p_other = log1mexp(covered.clamp(max=-1e-6))
    o = other.clamp(min=1e-30)
    rest = torch.where(other > 0, other * (o.log() - p_other), torch.zeros_like(other))
    return (main + rest).mean()


def channel_scale(targets: list[WindowTarget]) -> torch.Tensor:
    """Per-channel mean square of the teacher's cached hidden states (floored)."""
    states = torch.cat([t.hidden for t in targets]).double()
    return states.pow(2).mean(0).clamp(min=1e-6).float()


def window_losses(
    logits: torch.Tensor,
    hidden: torch.Tensor,
    labels: torch.Tensor,
    target: WindowTarget,
    scale: torch.Tensor,
    weights: DistillWeights,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The objective on one window (``logits`` (T, V), ``hidden`` (T, d), ``labels`` (T,))."""
    token_logp = -F.cross_entropy(logits[:-1].float(), labels[1:], reduction="none")
    parts: dict[str, torch.Tensor] = {"lm": -token_logp.mean()}
    device = logits.device
    lo, hi = target.lo.to(device), target.hi.to(device)
    zero = logits.new_zeros(())
    parts["chunk"] = (
        chunk_loss(chunk_logprobs(token_logp, lo, hi), target.logp.to(device), weights.tau)
        if weights.chunk and len(lo)
        else zero
    )
    parts["hidden"] = (
        hidden_loss(hidden[hi - 1].float(), target.hidden.to(device), scale.to(device))
        if weights.hidden and len(lo)
        else zero
    )
    pos = target.piece_pos.to(device)
    parts["piece"] = (
        piece_loss(
            logits[pos],
            target.piece_ids.to(device),
            target.piece_prob.to(device),
            target.piece_other.to(device),
        )
        if weights.piece and len(pos)
        else zero
    )
    total = (
        weights.lm * parts["lm"]
        + weights.chunk * parts["chunk"]
        + weights.hidden * parts["hidden"]
        + weights.piece * parts["piece"]
    )
    return total, parts
