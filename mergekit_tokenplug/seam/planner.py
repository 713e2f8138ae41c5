"""Swaps the vocabulary seam into ``MergePlanner`` for recipes that use the plugin's keys.

Wrapping is done on the class (other mergekit modules import the class object). Recipes
without plugin keys take the stock path untouched.
"""

from __future__ import annotations

import functools
import logging
from types import ModuleType
from typing import Any

from mergekit.architecture import WeightInfo
from mergekit.common import ImmutableMap
from mergekit.io.tasks import GatherTensors
from mergekit.tokenizer.build import BuildTokenizer, TokenizerInfo
from mergekit.tokenizer.embed import PermutedVocabulary
from tokenizers import AddedToken

from mergekit_tokenplug.errors import InputError
from mergekit_tokenplug.seam.chat import chat_plan
from mergekit_tokenplug.seam.roles import align_settings, role_weight, weight_role
from mergekit_tokenplug.seam.schema import ToolTokenSource, uses_plugin
from mergekit_tokenplug.seam.union_order import OrderedBuildTokenizer
from mergekit_tokenplug.seam.vocab_task import AlignVocabulary, ApproximatedVocabulary

LOG = logging.getLogger(__name__)


def apply(plan_module: ModuleType) -> None:
    planner_cls = plan_module.MergePlanner
    if getattr(planner_cls, "_tokenplug_patched", False):
        return
    original_init = planner_cls.__init__
    original_plan_tensor = planner_cls.plan_tensor

    @functools.wraps(original_init)
    def __init__(self, config, arch_info, options, out_model_config):  # noqa: N807
        original_init(self, config, arch_info, options, out_model_config)
        self._tokenplug_align = None
        if uses_plugin(config) and self._tokenizer_task is not None:
            self._tokenizer_task = tokenizer_task(self.config, self.options.trust_remote_code)
            self._tokenplug_align = AlignVocabulary(
                tokenizer_task=self._tokenizer_task,
                models=tuple(self.config.referenced_models()),
                trust_remote_code=self.options.trust_remote_code,
                **align_settings(self.config, plugin_tokens(self._tokenizer_task)),
            )

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
        if type(permuted) is PermutedVocabulary:
            seam = _seam_task(self, permuted, weight, align)
            self._tensors[-1] = (planned_weight, task.model_copy(update={"gather_tensors": seam}))

    planner_cls.__init__ = __init__
    planner_cls.plan_tensor = plan_tensor
    planner_cls._tokenplug_patched = True


class ToolAwareBuildTokenizer(OrderedBuildTokenizer):
    """Stock tokenizer build, then tool tokens and ``special: true`` tokens added as
    unnormalized tokens (special ones marked special).

    Stock ``add_tokens(str)`` makes a normalized, non-special added token, which a
    SentencePiece-style normalizer only matches after a space; a tool or chat token must match
    wherever it appears, and a chat token must be skipped when decoding with
    ``skip_special_tokens``.
    """

    tool_tokens: tuple[str, ...] = ()
    forced: tuple[str, ...] = ()  # tool tokens whose ``force: true`` lets them replace a token
    special_tokens: tuple[str, ...] = ()
    bos_token: str | None = None  # the BOS the output gets instead of a chat turn marker

    def execute(self, **kwargs: Any) -> TokenizerInfo:
        info = super().execute(**kwargs)
        vocab = info.tokenizer.get_vocab()
        existing = [t for t in self.tool_tokens if t in vocab and t not in self.forced]
        if existing:
            raise InputError(
                "is already a token of the output vocabulary; a tool token replaces an existing token's rows only with force: true (as stock mergekit's tokens entries)",
                where=f"tokenizer.tokens.{existing[0]}",
            )
        specials = (*self.special_tokens, *([self.bos_token] if self.bos_token else []))
        wanted = dict.fromkeys((*self.tool_tokens, *specials))
        new = [t for t in wanted if t not in vocab]
        info.tokenizer.add_tokens(
            [AddedToken(t, normalized=False, special=t in specials) for t in new]
        )
        if self.bos_token:
            info.tokenizer.bos_token = self.bos_token
        vocab = info.tokenizer.get_vocab()
        for perm in info.permutations.values():
            for token in new:
                perm[vocab[token]] = -1
        return info


def tokenizer_task(config: Any, trust_remote_code: bool) -> BuildTokenizer:
    """The task building a plugin recipe's output tokenizer (the run's, and ``plan``'s):
    reproducible union order, tool and special tokens added unnormalized, the chat
    template's markers kept as special tokens, BOS never a turn marker (``seam.chat``)."""
    tokens = config.tokenizer.tokens or {}
    tools = tuple(t for t, c in tokens.items() if isinstance(c.source, ToolTokenSource))
    special = tuple(t for t, c in tokens.items() if getattr(c, "special", False))
    chat = chat_plan(config, trust_remote_code)  # its markers stay special tokens
    special += tuple(t for t in chat.markers if t not in special)
    return ToolAwareBuildTokenizer(
        base_model=config.base_model,
        referenced_models=tuple(config.referenced_models()),
        tokenizer_source=config.tokenizer.source,
        trust_remote_code=trust_remote_code,
        add_tokens=tuple(t for t in tokens if t not in tools and t not in special),
        tool_tokens=tools,
        forced=tuple(t for t in tools if tokens[t].force),
        special_tokens=special,
        bos_token=chat.bos_token,
    )


def plugin_tokens(task: ToolAwareBuildTokenizer) -> tuple[str, ...]:
    """Tokens the plugin adds to the output vocabulary beyond the recipe's (chat markers, a BOS
    replacing a turn marker): they get rows of their own."""
    return (*task.special_tokens, *([task.bos_token] if task.bos_token else []))


def _seam_task(
    planner: Any, permuted: PermutedVocabulary, weight: WeightInfo, align: AlignVocabulary
) -> ApproximatedVocabulary:
    role = weight_role(weight)
    donor_tensors = None
    if align.donor is not None:
        donor_weight = role_weight(align.donor, role, planner.options.trust_remote_code)
        donor_tensors = GatherTensors(
            weight_info=ImmutableMap(data={align.donor: donor_weight}),
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
