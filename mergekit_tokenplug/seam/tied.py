"""Tied and untied models in one merge: the output keeps every model's output matrix.

mergekit's output config is the base model's (else the first model's). When it ties the
embeddings (``tie_word_embeddings: true``) but another input is untied with its own
``lm_head`` (a ``heal`` output, say), mergekit still merges and writes ``lm_head`` (the tied
models contribute their embeddings, their output matrix) and transformers then ignores it: a
silently different model. :func:`untied_inputs` finds that case (headers and configs only);
the run writes ``tie_word_embeddings: false`` so the merged ``lm_head`` is the one used, and
``plan`` / ``recipes validate`` say so.
"""

from __future__ import annotations

import functools
import logging
from types import ModuleType
from typing import Any

from mergekit.common import ModelReference

from mergekit_tokenplug.errors import TokenplugError
from mergekit_tokenplug.inputs import is_local, tensor_shapes
from mergekit_tokenplug.seam.roles import role_weight

LOG = logging.getLogger("mergekit_tokenplug")


def _tied(model: ModelReference, trust_remote_code: bool) -> bool:
    cfg = model.config(trust_remote_code=trust_remote_code)
    return bool(getattr(cfg, "tie_word_embeddings", False))


def _has_head(model: ModelReference, trust_remote_code: bool) -> bool:
    """Whether the checkpoint holds its own output matrix (read from the headers)."""
    path = model.model.path
    if not is_local(path):
        return True  # an untied config on the Hub: trust it
    head = role_weight(model, "output", trust_remote_code)
    names = [head.name, *(head.aliases or ())]
    return any(name in tensor_shapes(path) for name in names)


def out_model(config: Any) -> ModelReference:
    """The model whose config mergekit writes (``_model_out_config``)."""
    return config.base_model or config.referenced_models()[0]


def untied_inputs(config: Any, trust_remote_code: bool = False) -> list[str]:
    """Inputs with their own ``lm_head`` merged into an output whose config ties it away."""
    try:
        if not _tied(out_model(config), trust_remote_code):
            return []
        return sorted(
            str(m)
            for m in config.referenced_models()
            if not _tied(m, trust_remote_code) and _has_head(m, trust_remote_code)
        )
    except (OSError, ValueError, TokenplugError):  # unreadable inputs: their own checks report
        return []


def untie_message(config: Any, untied: list[str]) -> str:
    return (
        f"{', '.join(untied)} {'is' if len(untied) == 1 else 'are'} untied (an lm_head of "
        f"{'its' if len(untied) == 1 else 'their'} own) but the output config "
        f"({out_model(config)}) ties the embeddings: the output is written untied "
        "(tie_word_embeddings: false), its lm_head merged from every model's output matrix "
        "(the tied models' embeddings), so transformers uses it instead of ignoring it"
    )


def apply(merge_module: ModuleType) -> None:
    original = merge_module._model_out_config
    if getattr(original, "_tokenplug_wrapped", False):
        return

    @functools.wraps(original)
    def _model_out_config(config, arch_info, trust_remote_code=False):
        res = original(config, arch_info, trust_remote_code=trust_remote_code)
        untied = untied_inputs(config, trust_remote_code)
        if untied and getattr(res, "tie_word_embeddings", False):
            LOG.warning(untie_message(config, untied))
            res.tie_word_embeddings = False
        return res

    _model_out_config._tokenplug_wrapped = True  # type: ignore[attr-defined]
    merge_module._model_out_config = _model_out_config
