"""Tool tokens: data, description priors from the frozen model, and row-only training."""

from mergekit_tokenplug.tooltokens.data import generate_arithmetic_dataset, read_jsonl
from mergekit_tokenplug.tooltokens.train import (
    add_tool_tokens,
    evaluate_tool_rows,
    init_tool_rows,
    learn_tool_tokens,
    pooled_hidden_states,
)

__all__ = [
    "add_tool_tokens",
    "evaluate_tool_rows",
    "generate_arithmetic_dataset",
    "init_tool_rows",
    "learn_tool_tokens",
    "pooled_hidden_states",
    "read_jsonl",
]
