"""Facts about a recipe's vocabulary weights that several seam modules need: which matrix a
weight is (input embeddings or output head), the matching tensor of another model, and
whether the recipe has a donor. A leaf: it imports no other seam module.
"""

from __future__ import annotations

import re
from typing import Any

from mergekit.architecture import WeightInfo, arch_info_for_config
from mergekit.common import ModelReference

from mergekit_tokenplug import registry
from mergekit_tokenplug.errors import InputError
from mergekit_tokenplug.methods.base import Need

_HEAD_NAME = re.compile(r"(^|\.)(lm_head|embed_out|output)\.weight$")


def weight_role(weight: WeightInfo) -> str:
    """``output`` for the LM head (tied to the embeddings when ``tied_names`` is set)."""
    return "output" if weight.tied_names or _HEAD_NAME.search(weight.name) else "input"


def vocab_weights(
    model: ModelReference, trust_remote_code: bool = False
) -> list[WeightInfo] | None:
    """The weights with a vocabulary axis (embeddings, LM head); None for an unknown architecture."""
    cfg = model.config(trust_remote_code=trust_remote_code)
    arch = arch_info_for_config(cfg)
    if arch is None:
        return None
    return [w for w in arch.all_weights(cfg) if w.vocabulary_axis is not None]


def role_weight(donor: ModelReference, role: str, trust_remote_code: bool) -> WeightInfo:
    """A model's own tensor for a role, found from its architecture (a donor may differ from the base)."""
    weights = vocab_weights(donor, trust_remote_code)
    if weights is None:
        archs = getattr(donor.config(trust_remote_code=trust_remote_code), "architectures", None)
        raise InputError(
            f"mergekit does not know the architecture {archs} of the donor {donor.model.path}",
            where="tokenizer.source",
        )
    inputs = [w for w in weights if weight_role(w) == "input"]
    outputs = [w for w in weights if weight_role(w) == "output"]
    if not inputs:
        raise InputError(
            f"found no input embedding tensor in the donor {donor.model.path}",
            where="tokenizer.source",
        )
    if role == "output" and outputs:
        head = outputs[0]
        tied = tuple(head.tied_names or ()) or (inputs[0].name,)
        return head.model_copy(update={"optional": False, "tied_names": tied})
    return inputs[0]


def needs_donor_embeddings(config: Any) -> bool:
    """Whether the configured method reads the donor's embedding rows."""
    return Need.DONOR_EMBEDDINGS in registry.get(config.tokenizer.approximation.method).needs


def tokenizer_donor(config: Any) -> ModelReference | None:
    """The tokenizer source when it is a model that is not a merge input (the donor)."""
    source = config.tokenizer.source if config.tokenizer is not None else None
    if isinstance(source, ModelReference) and source not in config.referenced_models():
        return source
    return None


def align_settings(config: Any, added: tuple[str, ...] = ()) -> dict[str, Any]:
    """Donor and row-count settings for a plugin config (shared by runs and dry-run plans).

    The donor is the tokenizer source when it is not a merge input and the method reads its
    embeddings; the output row count follows the source model's config (whose tokenizer must
    not hold ids past it), else the base model's; never fewer rows than output tokens (tokens
    the recipe adds, and ``added`` by the plugin, e.g. chat markers, get rows of their own).
    """
    source = config.tokenizer.source
    cut = isinstance(source, ModelReference)
    reference = source if cut else (config.base_model or config.referenced_models()[0])
    return {
        "donor": tokenizer_donor(config) if needs_donor_embeddings(config) else None,
        "reference_rows_model": reference,
        "cut_to_reference": cut,
        "pad_to_multiple_of": config.tokenizer.pad_to_multiple_of,
        "recipe_tokens": tuple(dict.fromkeys((*(config.tokenizer.tokens or {}), *added))),
        "byte_pieces": config.tokenizer.approximation.byte_tokens,
    }
