"""Extends ``MergeConfiguration.tokenizer`` with the plugin's keys (or refuses them)."""

from __future__ import annotations

from types import ModuleType
from typing import Annotated, Any, Dict, Optional, Union  # noqa: UP035 (runtime types)

from mergekit.common import ModelReference
from mergekit.tokenizer import config as tok_config
from pydantic import BeforeValidator
from pydantic.fields import FieldInfo

from mergekit_tokenplug.seam import refusal_reason
from mergekit_tokenplug.seam.schema import (
    PluginTokenizerField,
    TokenplugTokenizerConfig,
    ToolTokenSource,
    refuse_plugin_keys,
    refuse_requirement,
    take_requirement,
)


def apply(config_module: ModuleType, refuse_reason: str | None = None) -> None:
    """Swap the ``tokenizer`` field's type and rebuild the model.

    Active: a discriminated union of the extended and the plain config (plain
    ``TokenizerConfig`` values stay valid, so mergekit's own tests keep passing).
    Refusing: plain config behind a validator that rejects plugin keys with the reason.
    """
    merge_cfg = config_module.MergeConfiguration
    if getattr(merge_cfg, "_tokenplug_patched", False):
        return
    merge_cfg._tokenplug_patched = True
    field = merge_cfg.model_fields["tokenizer"]
    params = merge_cfg.model_fields["parameters"]
    setting = Optional[Dict[str, config_module.ParameterSetting]]  # noqa: UP006, UP045
    if refuse_reason is None:
        # ``kind: tool`` per-token sources and ``special: bool`` per-token settings
        emb_cfg = tok_config.TokenEmbeddingConfig
        emb_cfg.model_fields["source"].annotation = Union[  # noqa: UP007 (runtime type)
            tok_config.ModelTokenEmbedding,
            tok_config.ZeroEmbedding,
            ToolTokenSource,
            ModelReference,
            None,
        ]
        emb_cfg.model_fields["special"] = FieldInfo.from_annotated_attribute(bool, False)
        for model in (emb_cfg, tok_config.TokenizerConfig, TokenplugTokenizerConfig):
            model.model_rebuild(force=True)
        field.annotation = Optional[PluginTokenizerField]  # noqa: UP045 (runtime type)
        params.annotation = Annotated[setting, BeforeValidator(take_requirement)]
    else:
        guarded = Annotated[
            tok_config.TokenizerConfig, BeforeValidator(refuse_plugin_keys(refuse_reason))
        ]
        field.annotation = Optional[guarded]  # noqa: UP045 (runtime type)
        params.annotation = Annotated[setting, BeforeValidator(refuse_requirement(refuse_reason))]
    merge_cfg.model_rebuild(force=True)


def merge_configuration() -> Any:
    """mergekit's ``MergeConfiguration`` with the plugin's keys (or their refusal) in place,
    whether or not the start-up hook ran in this process."""
    import mergekit.config

    apply(mergekit.config, refuse_reason=refusal_reason())
    return mergekit.config.MergeConfiguration
