"""Tiny real transformers checkpoints built inside the tests (no downloads)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import transformers

INIT_STD = 0.02  # transformers' default initializer_range for the transformer weights


def build_llama(
    out_dir: str | Path,
    tokenizer,
    *,
    hidden: int = 32,
    layers: int = 2,
    tied: bool = False,
    seed: int = 0,
    extra_rows: int = 0,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """A LlamaForCausalLM with random weights, saved as safetensors with ``tokenizer``.

    ``extra_rows`` adds padding rows beyond the tokenizer (as many real models have).
    """
    out = Path(out_dir)
    vocab = max(tokenizer.get_vocab().values()) + 1 + extra_rows
    cfg = transformers.LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=tied,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = transformers.LlamaForCausalLM(cfg)
    # unit-variance vocabulary rows so estimates are distinguishable from the mean
    portable_init(model, seed, vocab_std=1.0)
    model = model.to(dtype)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


def portable_values(rng: np.random.RandomState, shape: tuple[int, ...], std: float) -> torch.Tensor:
    """Uniform values of standard deviation ``std``, the same bits on every CPU.

    torch's ``normal_``/``uniform_`` take vectorized paths that depend on the processor
    (``ATEN_CPU_CAPABILITY``), so models built with them differ in the last bits from one
    machine to the next. NumPy's legacy ``RandomState`` stream is frozen across versions and
    integer-valued; the scaling below is one correctly rounded float64 product per element.
    """
    ints = rng.randint(-(2**23), 2**23, size=shape, dtype=np.int64)
    scale = std * np.sqrt(3.0) / 2**23
    return torch.from_numpy(ints.astype(np.float64) * scale).to(torch.float32)


def portable_init(model: torch.nn.Module, seed: int, vocab_std: float | None = None) -> None:
    """Fill every weight from :func:`portable_values`: tiny test models identical on any CPU.

    Norm weights are ones and biases zeros (as transformers initializes them); matrices get
    ``INIT_STD``, vocabulary matrices ``vocab_std`` when given.
    """
    rng = np.random.RandomState(seed)
    vocab = {
        id(m.weight)
        for m in (model.get_input_embeddings(), model.get_output_embeddings())
        if m is not None
    }
    seen: set[int] = set()
    with torch.no_grad():
        for name, param in model.named_parameters(remove_duplicate=True):
            if id(param) in seen:
                continue
            seen.add(id(param))
            if param.dim() == 1:
                param.copy_(torch.ones_like(param) if "norm" in name.lower() else torch.zeros_like(param))
                continue
            std = vocab_std if vocab_std is not None and id(param) in vocab else INIT_STD
            param.copy_(portable_values(rng, tuple(param.shape), std))
