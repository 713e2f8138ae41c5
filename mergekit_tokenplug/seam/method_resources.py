"""Inputs some methods need beyond the matrices: an auxiliary embedder, a corpus, the other matrix.

Kernels stay pure: this module does the I/O (loading an embedder, reading corpus files,
reading the model's other vocabulary tensor through mergekit's lazy loader) and hands the
results to the kernel through the typed fields of ``EstimationProblem``.
"""

from __future__ import annotations

from typing import Any

import torch
from mergekit.common import ModelReference
from mergekit.io.tasks import LoaderCache

from mergekit_tokenplug.methods.base import MethodSpec, Need
from mergekit_tokenplug.resources.embedder import load_text_embedder
from mergekit_tokenplug.seam.roles import role_weight


def method_inputs(
    spec: MethodSpec,
    params: Any,
    *,
    model: ModelReference,
    plan: Any,
    role: str,
    device: torch.device,
    trust_remote_code: bool = False,
    show_progress: bool = True,
) -> dict[str, Any]:
    """The EstimationProblem fields (by name) a method needs for one matrix of one model."""
    inputs: dict[str, Any] = {}
    embedder = getattr(params, "embedder", None)
    if isinstance(embedder, str) and embedder != "self":
        inputs["embed_texts"] = load_text_embedder(
            embedder, device=str(device), show_progress=show_progress
        )
    if Need.CORPUS in spec.needs:
        inputs["corpus_ids"] = plan.corpus_ids(tuple(params.corpus))
        other = role_weight(model, "output" if role == "input" else "input", trust_remote_code)
        names = [*(other.aliases or ()), *(other.tied_names or ())]
        tensor = LoaderCache().get(model).get_tensor(other.name, aliases=names)
        inputs["context_matrix"] = tensor.float().to(device)
    return inputs
