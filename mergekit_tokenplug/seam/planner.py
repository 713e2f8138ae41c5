"""Swaps the vocabulary seam into ``MergePlanner`` for recipes that use the plugin's keys.

Wrapping is done on the class (other mergekit modules import the class object). Recipes
without plugin keys take the stock path untouched.
"""

from __future__ import annotations

import functools
import logging
import re
from types import ModuleType
from typing import Any

from mergekit.architecture import WeightInfo, arch_info_for_config
from mergekit.common import ImmutableMap, ModelReference
from mergekit.io.tasks import GatherTensors
from mergekit.tokenizer.build import BuildTokenizer, TokenizerInfo
from mergekit.tokenizer.embed import PermutedVocabulary

from mergekit_tokenplug import registry
from mergekit_tokenplug.errors import InputError
from mergekit_tokenplug.registry import Need
from mergekit_tokenplug.seam.schema import ToolTokenSource, uses_plugin
from mergekit_tokenplug.seam.vocab_task import AlignVocabulary, ApproximatedVocabulary

LOG = logging.getLogger(__name__)
_HEAD_NAME = re.compile(r"(^|\.)(lm_head|embed_out|output)\.weight$")


def weight_role(weight: WeightInfo) -> str:
    """``output`` for the LM head (tied to the embeddings when ``tied_names`` is set)."""
    return "output" if weight.tied_names or _HEAD_NAME.search(weight.name) else "input"


def role_weight(donor: ModelReference, role: str, trust_remote_code: bool) -> WeightInfo:
    """A model's own tensor for a role, found from its architecture (a donor may differ from the base)."""
    cfg = donor.config(trust_remote_code=trust_remote_code)
    arch = arch_info_for_config(cfg)
    if arch is None:
        raise InputError(
            f"mergekit does not know the architecture {getattr(cfg, 'architectures', None)} of the donor {donor.model.path}",
            where="tokenizer.source",
        )
    vocab_weights = [w for w in arch.all_weights(cfg) if w.vocabulary_axis is not None]
    inputs = [w for w in vocab_weights if weight_role(w) == "input"]
    outputs = [w for w in vocab_weights if weight_role(w) == "output"]
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


def apply(plan_module: ModuleType) -> None:
    planner_cls = plan_module.MergePlanner
    if getattr(planner_cls, "_tokenplug_patched", False):
        return
    original_init = planner_cls.__init__
    original_plan_tensor = planner_cls.plan_tensor

    @functools.wraps(original_init)
    def __init__(self, config, arch_info, options, out_model_config):  # noqa: N807
        original_init(self, config, arch_info, options, out_model_config)
        plugin = uses_plugin(config) and self._tokenizer_task is not None
        if plugin:
            _swap_tool_aware_tokenizer(self)
        self._tokenplug_align = _align_task(self) if plugin else None

    @functools.wraps(original_plan_tensor)
    def plan_tensor(self, weight, weights_in, models, cfg_reader):
        count = len(self._tensors)
        original_plan_tensor(self, weight, weights_in, models, cfg_reader)
        align = getattr(self, "_tokenplug_align", None)
        if align is None or weight.vocabulary_axis is None or len(self._tensors) == count:
            return
        planned_weight, task = self._tensors[-1]
        if weight.tied_names and getattr(self.out_model_config, "tie_word_embeddings", False):
            # A tied output config ignores lm_head on load: writing one would only mislead.
            self._tensors.pop()
            LOG.info("skipping %s: the output config ties it to the input embeddings", weight.name)
            return
        permuted = task.gather_tensors
        if type(permuted) is not PermutedVocabulary:
            return
        replacement = _seam_task(self, permuted, weight, align)
        self._tensors[-1] = (
            planned_weight,
            task.model_copy(update={"gather_tensors": replacement}),
        )

    planner_cls.__init__ = __init__
    planner_cls.plan_tensor = plan_tensor
    planner_cls._tokenplug_patched = True


class ToolAwareBuildTokenizer(BuildTokenizer):
    """Stock tokenizer build, then tool tokens added as unnormalized tokens.

    Stock ``add_tokens(str)`` makes a normalized added token, which a SentencePiece-style
    normalizer only matches after a space; a tool token must match wherever it appears.
    """

    tool_tokens: tuple[str, ...] = ()

    def execute(self, **kwargs: Any) -> TokenizerInfo:
        from tokenizers import AddedToken

        info = super().execute(**kwargs)
        vocab = info.tokenizer.get_vocab()
        new = [t for t in self.tool_tokens if t not in vocab]
        info.tokenizer.add_tokens([AddedToken(t, normalized=False, special=False) for t in new])
        vocab = info.tokenizer.get_vocab()
        for perm in info.permutations.values():
            for token in new:
                perm[vocab[token]] = -1
        return info


def _swap_tool_aware_tokenizer(planner: Any) -> None:
    tokens = planner.config.tokenizer.tokens or {}
    tools = tuple(t for t, c in tokens.items() if isinstance(c.source, ToolTokenSource))
    if not tools:
        return
    stock = planner._tokenizer_task
    fields = {k: getattr(stock, k) for k in BuildTokenizer.model_fields}
    fields["add_tokens"] = tuple(t for t in stock.add_tokens or () if t not in tools)
    planner._tokenizer_task = ToolAwareBuildTokenizer(**fields, tool_tokens=tools)


def needs_donor_embeddings(config: Any) -> bool:
    """Whether the configured method reads the donor's embedding rows."""
    return Need.DONOR_EMBEDDINGS in registry.get(config.tokenizer.approximation.method).needs


def align_settings(config: Any) -> dict[str, Any]:
    """Donor and row-count settings for a plugin config (shared by runs and dry-run plans).

    The donor is the tokenizer source when it is not a merge input and the method reads its
    embeddings; the output row count follows the source model's config (cut to it: ids past
    it cannot be embedded there either), else the base model's (never fewer rows than tokens).
    """
    source = config.tokenizer.source
    models = list(config.referenced_models())
    donor: ModelReference | None = None
    if isinstance(source, ModelReference):
        reference, cut = source, True
        if source not in models and needs_donor_embeddings(config):
            donor = source
    else:
        reference, cut = (config.base_model or models[0]), False
    return {
        "donor": donor,
        "reference_rows_model": reference,
        "cut_to_reference": cut,
        "pad_to_multiple_of": config.tokenizer.pad_to_multiple_of,
        "byte_pieces": config.tokenizer.approximation.byte_tokens,
    }


def _align_task(planner: Any) -> AlignVocabulary:
    return AlignVocabulary(
        tokenizer_task=planner._tokenizer_task,
        models=tuple(planner.config.referenced_models()),
        trust_remote_code=planner.options.trust_remote_code,
        **align_settings(planner.config),
    )


def _seam_task(
    planner: Any, permuted: PermutedVocabulary, weight: WeightInfo, align: AlignVocabulary
) -> ApproximatedVocabulary:
    role = weight_role(weight)
    donor_tensors = None
    if align.donor is not None:
        donor_tensors = GatherTensors(
            weight_info=ImmutableMap(
                data={
                    align.donor: role_weight(align.donor, role, planner.options.trust_remote_code)
                }
            ),
            dtype=permuted.gather_tensors.dtype,
            device=permuted.gather_tensors.device,
        )
    fields = {name: getattr(permuted, name) for name in PermutedVocabulary.model_fields}
    return ApproximatedVocabulary(
        **fields,
        align_task=align,
        donor_tensors=donor_tensors,
        approximation=planner.config.tokenizer.approximation.key(),
        role=role,
        weight_name=weight.name,
        seed=planner.options.random_seed or 0,
        show_progress=not planner.options.quiet,
    )
