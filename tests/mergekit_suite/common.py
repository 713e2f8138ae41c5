"""Stand-in for the ``tests/common.py`` that mergekit 0.1.5's sdist leaves out.

mergekit's own tests import ``make_picollama``, ``make_picoLlaVa``, ``make_picogranite``,
``make_gpt2size`` and ``run_and_check_merge`` from ``tests.common``. This module is written
from how those tests use the names (not copied): tiny randomly initialised checkpoints saved
as a single ``model.safetensors`` in float32, and a helper that runs a merge into a temporary
directory, checks the output is a complete, finite checkpoint, then hands its path to the
test's own ``validate`` callback. ``run_suite.py`` drops it into the extracted ``tests/``.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from mergekit.architecture import arch_info_for_config
from mergekit.config import MergeConfiguration
from mergekit.io import LazyTensorLoader
from mergekit.merge import run_merge
from mergekit.options import MergeOptions
from transformers import (
    AutoConfig,
    CLIPVisionConfig,
    GPT2Config,
    GPT2LMHeadModel,
    GraniteConfig,
    GraniteForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    LlavaConfig,
    LlavaForConditionalGeneration,
    PretrainedConfig,
    PreTrainedModel,
)

# The tests read shapes such as (vocab, 32) back from merged embeddings: hidden size is 32.
HIDDEN = 32
SEED = 0


def _save(model: PreTrainedModel, path: str | os.PathLike) -> str:
    """Save as one float32 safetensors file; mergekit's tests rewrite ``model.safetensors``."""
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    model.to(torch.float32).save_pretrained(out, safe_serialization=True)
    return str(out)


def _tiny_llama_config(vocab_size: int) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=HIDDEN,
        intermediate_size=2 * HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        # Separate lm_head: the tests inspect and truncate lm_head.weight on its own.
        tie_word_embeddings=False,
    )


def make_picollama(path: str | os.PathLike, vocab_size: int = 64) -> str:
    """Two-layer Llama (hidden 32) with an untied head; returns the directory as str."""
    torch.manual_seed(SEED)
    return _save(LlamaForCausalLM(_tiny_llama_config(vocab_size)), path)


def make_picogranite(path: str | os.PathLike, vocab_size: int = 64) -> str:
    """Two-layer Granite: exercises Granite's JSON architecture and its scaling multipliers."""
    torch.manual_seed(SEED)
    cfg = GraniteConfig(
        vocab_size=vocab_size,
        hidden_size=HIDDEN,
        intermediate_size=2 * HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=False,
    )
    return _save(GraniteForCausalLM(cfg), path)


def make_gpt2size(path: str | os.PathLike, vocab_size: int = 64) -> str:
    """GPT-2 with GPT-2 small's depth (12 layers: the stacking test expects 24 after
    doubling) but a tiny width so the suite stays fast on CPU."""
    torch.manual_seed(SEED)
    cfg = GPT2Config(
        vocab_size=vocab_size,
        n_positions=128,
        n_embd=HIDDEN,
        n_layer=12,
        n_head=4,
    )
    return _save(GPT2LMHeadModel(cfg), path)


def make_picoLlaVa(path: str | os.PathLike, vocab_size: int = 64) -> str:
    """Tiny LLaVA (CLIP vision tower + Llama text model): mergekit has no JSON definition for
    it, so merging it exercises automatic architecture inference."""
    torch.manual_seed(SEED)
    vision = CLIPVisionConfig(
        hidden_size=HIDDEN,
        intermediate_size=2 * HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=32,
        patch_size=8,
        projection_dim=HIDDEN,
    )
    cfg = LlavaConfig(
        vision_config=vision,
        text_config=_tiny_llama_config(vocab_size),
        image_token_index=vocab_size - 1,
    )
    return _save(LlavaForConditionalGeneration(cfg), path)


def _expected_weight_names(config: PretrainedConfig) -> list[list[str]] | None:
    """Required weights of the output's JSON architecture (each with its aliases)."""
    arch = arch_info_for_config(config)
    if arch is None:
        return None
    names = []
    for weight in arch.all_weights(config):
        if weight.optional:
            continue
        names.append([weight.name, *(weight.aliases or ()), *(weight.tied_names or ())])
    return names


def check_merged_model(
    out_path: str,
    check_nan: bool = True,
    check_tensors: bool = True,
    index_json_name: str | None = None,
    auto_arch: bool = False,
) -> None:
    """Assert ``out_path`` holds a loadable config and a complete, finite set of tensors."""
    assert os.path.isfile(os.path.join(out_path, "config.json")), "merge wrote no config.json"
    config = AutoConfig.from_pretrained(out_path)
    if index_json_name is not None:
        index_path = os.path.join(out_path, index_json_name)
        assert os.path.isfile(index_path), f"expected index {index_json_name}"
        with open(index_path, encoding="utf-8") as fd:
            assert json.load(fd)["weight_map"], "empty weight map"

    loader = LazyTensorLoader.from_disk(out_path)
    present = set(loader.index.tensor_paths)
    assert present, "merged model has no tensors"

    if check_tensors and not auto_arch:
        expected = _expected_weight_names(config)
        assert expected is not None, f"no architecture definition for {config.architectures}"
        missing = [group[0] for group in expected if not present.intersection(group)]
        # A tied lm_head is legitimately absent from the checkpoint.
        if getattr(config, "tie_word_embeddings", False):
            missing = [name for name in missing if "lm_head" not in name]
        assert not missing, f"merged model lacks tensors: {missing}"

    if check_nan:
        for name in sorted(present):
            tensor = loader.get_tensor(name)
            if tensor.is_floating_point():
                assert not torch.isnan(tensor).any(), f"NaN in {name}"


def run_and_check_merge(
    config: MergeConfiguration,
    check_nan: bool = True,
    check_tensors: bool = True,
    validate: Callable[[str], object] | None = None,
    index_json_name: str | None = None,
    auto_arch: bool = False,
    options: MergeOptions | None = None,
) -> None:
    """Run ``config`` into a temporary directory, check the result, then call ``validate``.

    Errors raised by the merge itself propagate (tests use ``pytest.raises`` around this).
    ``auto_arch`` marks models merged through inferred architectures, whose expected tensor
    list cannot be read from a JSON definition.
    """
    if options is None:
        options = MergeOptions(quiet=True, write_model_card=True, copy_tokenizer=True)
    with tempfile.TemporaryDirectory(prefix="mergekit-out-") as out_path:
        run_merge(config, out_path=out_path, options=options)
        check_merged_model(
            out_path,
            check_nan=check_nan,
            check_tensors=check_tensors,
            index_json_name=index_json_name,
            auto_arch=auto_arch,
        )
        if validate is not None:
            validate(out_path)
