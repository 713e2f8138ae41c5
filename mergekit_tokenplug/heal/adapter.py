"""A low-rank adapter (LoRA, through peft) trained with the rows and merged back at the end.

Rows alone can only re-spell the new tokens; most of a transplant's remaining cost is the
transformer reading familiar text in unfamiliar pieces, which a small adapter on the
attention and MLP projections can absorb. The adapter is merged into the weights before
saving, so OUT is a plain checkpoint (mergekit, transformers and llama.cpp read it as before);
only the adapted modules' weights change. LoRA's B starts at zero, so training starts from
the model as it was; the A matrices are drawn from the seed (reruns are byte-identical).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from mergekit_tokenplug.errors import ConfigError

DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class LoraSettings:
    rank: int
    alpha: float
    targets: tuple[str, ...]
    lr: float
    decay: float


DEFAULT_LORA = LoraSettings(rank=8, alpha=16.0, targets=DEFAULT_TARGETS, lr=2.5e-4, decay=0.0)


def attach_lora(
    model: Any, settings: LoraSettings, seed: int
) -> tuple[Any, list[torch.nn.Parameter]]:
    """Inject LoRA layers into ``model`` in place; return the peft wrapper and the adapter's
    parameters (in a fixed order)."""
    from peft import LoraConfig, get_peft_model

    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [t for t in settings.targets if t not in present]
    if missing:
        raise ConfigError(
            f"names modules {missing} that the model does not have; expected some of "
            f"{sorted(p for p in present if p.endswith('proj'))}",
            where="--lora-targets",
        )
    if settings.rank < 1:
        raise ConfigError(f"must be >= 1, got {settings.rank}", where="--lora-rank")
    config = LoraConfig(
        r=settings.rank,
        lora_alpha=settings.alpha,
        target_modules=list(settings.targets),
        lora_dropout=0.0,
        bias="none",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        wrapped = get_peft_model(model, config)
    params = [p for name, p in wrapped.named_parameters() if "lora_" in name]
    return wrapped, params


def merge_lora(wrapped: Any) -> tuple[Any, list[str]]:
    """Merge the adapter into the weights; return the plain model and the names of the
    weights that changed."""
    names = sorted(
        name.replace("base_model.model.", "", 1).replace(".base_layer", "")
        for name, _ in wrapped.named_parameters()
        if name.endswith("base_layer.weight")
    )
    model = wrapped.merge_and_unload()
    return model, names


def lora_record(settings: LoraSettings | None, merged: list[str]) -> dict[str, Any] | None:
    """What the summary, card and manifest say about the adapter (None: no adapter)."""
    if settings is None:
        return None
    return {
        "kind": "lora",
        "rank": settings.rank,
        "alpha": settings.alpha,
        "targets": list(settings.targets),
        "lr": settings.lr,
        "weight_decay": settings.decay,
        "merged": True,
        "modules_changed": merged,
    }
