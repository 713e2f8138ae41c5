"""Tiny real transformers checkpoints built inside the tests (no downloads)."""

from __future__ import annotations

from pathlib import Path

import torch
import transformers


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
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(cfg).to(dtype)
    with torch.no_grad():  # spread the rows so estimates are distinguishable from the mean
        model.model.embed_tokens.weight.normal_(0.0, 1.0)
        if not tied:
            model.lm_head.weight.normal_(0.0, 1.0)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out
