"""Tool tokens: data, and description priors from the frozen model (training the rows:
``heal --rows tool``)."""

from mergekit_tokenplug.tooltokens.data import generate_arithmetic_dataset, read_jsonl
from mergekit_tokenplug.tooltokens.train import (
    add_tool_tokens,
    init_tool_rows,
    pooled_hidden_states,
)

__all__ = [
    "add_tool_tokens",
    "generate_arithmetic_dataset",
    "init_tool_rows",
    "pooled_hidden_states",
    "read_jsonl",
]
