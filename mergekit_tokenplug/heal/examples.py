"""Prompt/completion examples (JSONL ``{"prompt", "completion"}`` rows) for ``heal``.

The loss is on the completion only: the prompt teaches the context, the completion is what
the trained rows must predict (for tool tokens, that the completion starts with the tool
token). Prompt and completion are tokenized separately, so the boundary is exact whatever the
tokenizer does with spaces; examples are right-padded to one width, so the training loop sees
a fixed-shape tensor like the corpus windows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import pad_sequence
from tqdm.auto import tqdm

from mergekit_tokenplug.errors import InputError

IGNORE = -100  # label of positions without a loss (prompt, padding)


@dataclass
class Examples:
    """Padded examples: ``ids``/``labels``/``mask`` are ``(n, width)`` (``mask`` None: no
    padding); ``first_tool[i]`` is the position of example ``i``'s first tool token (-1: none)."""

    ids: torch.Tensor
    labels: torch.Tensor
    mask: torch.Tensor | None
    first_tool: torch.Tensor

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def take(self, picks: Sequence[int]) -> Examples:
        p = torch.tensor(list(picks), dtype=torch.long)
        mask = None if self.mask is None else self.mask[p]
        return Examples(self.ids[p], self.labels[p], mask, self.first_tool[p])


def fit_example(prompt: list[int], completion: list[int], max_len: int) -> tuple[list, list]:
    """Cut a prompt/completion pair to ``max_len`` tokens: the completion keeps its start
    (where a tool call begins), the prompt its end (the context right before it), each at
    least half the window when the other needs the rest. A 500k-token row would otherwise
    make every padded batch that wide and run past the model's positions."""
    if len(prompt) + len(completion) <= max_len:
        return prompt, completion
    keep_p = min(len(prompt), max(max_len // 2, max_len - len(completion)))
    keep_c = max_len - keep_p
    return prompt[len(prompt) - keep_p :], completion[:keep_c]


def encode_examples(
    tokenizer: Any,
    rows: Sequence[dict[str, str]],
    tool_ids: set[int],
    where: str,
    max_len: int | None = None,
) -> Examples:
    """Tokenize, cut to ``max_len`` tokens and pad ``rows``; an empty prompt or completion is
    refused, naming the row."""
    ids, labels, first_tool = [], [], []
    for i, row in enumerate(rows):
        p = tokenizer(row["prompt"], verbose=False)["input_ids"]
        c = tokenizer(row["completion"], add_special_tokens=False, verbose=False)["input_ids"]
        if not p or not c:
            raise InputError(
                f"row {i + 1}: empty prompt or completion after tokenization", where=where
            )
        if max_len is not None:
            p, c = fit_example(p, c, max_len)
        first = next((j for j, t in enumerate(c) if t in tool_ids), -1)
        ids.append(torch.tensor(p + c))
        labels.append(torch.tensor([IGNORE] * len(p) + c))
        first_tool.append(len(p) + first if first >= 0 else -1)
    pad = tokenizer.pad_token_id
    pad = pad if pad is not None else (tokenizer.eos_token_id or 0)
    return Examples(
        pad_sequence(ids, batch_first=True, padding_value=pad),
        pad_sequence(labels, batch_first=True, padding_value=IGNORE),
        pad_sequence([torch.ones_like(x) for x in ids], batch_first=True),
        torch.tensor(first_tool, dtype=torch.long),
    )


@torch.no_grad()
def example_scores(
    model: Any,
    examples: Examples,
    *,
    device: Any,
    batch_size: int = 16,
    desc: str = "examples",
    show_progress: bool = False,
) -> dict[str, float]:
    """Completion loss (mean token NLL) and, where examples hold a tool token, at the position
    before the first one: accuracy (argmax is that token), mean log-prob, mean 1-based rank."""
    nll, n_tok = 0.0, 0
    correct, logp, rank, n_tool = 0, 0.0, 0.0, 0
    starts = range(0, len(examples), batch_size)
    for lo in tqdm(starts, desc=desc, unit="batch", disable=not show_progress):
        b = examples.take(range(lo, min(lo + batch_size, len(examples))))
        ids, labels = b.ids.to(device), b.labels.to(device)
        mask = None if b.mask is None else b.mask.to(device)
        logits = model(input_ids=ids, attention_mask=mask).logits.float()
        shifted = labels[:, 1:]
        flat = logits[:, :-1].reshape(-1, logits.shape[-1])
        nll += float(
            F.cross_entropy(flat, shifted.reshape(-1), ignore_index=IGNORE, reduction="sum")
        )
        n_tok += int((shifted != IGNORE).sum())
        rows = torch.nonzero(b.first_tool >= 1).squeeze(1)
        if rows.numel():
            pos = b.first_tool[rows].to(device)
            rows = rows.to(device)
            target = ids[rows, pos][:, None]
            at = logits[rows, pos - 1]  # predicts the token at `pos`
            correct += int((at.argmax(-1, keepdim=True) == target).sum())
            logp += float(torch.log_softmax(at, -1).gather(1, target).sum())
            rank += float(((at > at.gather(1, target)).sum(-1) + 1).float().sum())
            n_tool += int(rows.numel())
    out = {"loss": nll / max(n_tok, 1), "tokens": n_tok}
    if n_tool:
        out.update(tool_acc=correct / n_tool, tool_logprob=logp / n_tool, tool_rank=rank / n_tool)
    return out
