"""The heal loop: language-model loss on corpus windows, gradients read only at the chosen
rows, Adam on a float32 copy of those rows, then the proximal step of the regularizer.

Everything but the chosen rows is frozen and stays bit-identical: the gradient of a matrix is
read at the chosen rows only, and only those rows are written back.

Regularizer: ``lam * ||W - W0||_F`` (Frobenius, not squared; the Re-Initialization paper's
penalty toward the prior, here the transplant's estimate W0). It is not differentiable at
W0, where training starts, so it is applied by its proximal step after each Adam step: the
displacement ``W - W0`` shrinks by ``lr_t * lam`` in norm (to zero when it is smaller).
A very large ``lam`` therefore keeps the rows exactly at W0.

Data parallel through accelerate: the global batch of ``batch_size`` windows is the same
whatever the process count; process ``r`` takes its contiguous share, and the row gradients
are averaged with ``Accelerator.reduce``. Corpus windows all have the same length, so the
average of the processes' mean losses is the mean loss of the global batch (prompt/completion
examples weigh each share's labelled tokens equally instead).

``objective`` replaces the LM loss of a micro-batch (the distillation objective of
``heal/distill.py``); ``adapter`` parameters (a LoRA's, ``heal/adapter.py``) are trained with
the rows by AdamW (decoupled weight decay toward zero, i.e. toward the unadapted model), on
the same schedule, their gradients averaged over processes like the rows'.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from mergekit_tokenplug.errors import ConfigError
from mergekit_tokenplug.heal.examples import IGNORE, Examples
from mergekit_tokenplug.heal.labels import loss_postfix


@dataclass
class LoopSettings:
    steps: int
    lr: float
    lam: float
    batch_size: int  # global, in windows
    micro_batch: int
    seed: int
    adapter_lr: float = 0.0
    output_lr: float | None = None  # the output matrix's peak rate (None: lr)
    adapter_decay: float = 0.0


Objective = Callable[[Any, Examples, list[int]], torch.Tensor]


def lm_loss(model: Any, batch: Examples, picks: list[int]) -> torch.Tensor:
    """Mean next-token loss over the labelled positions of ``batch``."""
    device = model.device
    mask = None if batch.mask is None else batch.mask.to(device)
    logits = model(input_ids=batch.ids.to(device), attention_mask=mask).logits
    flat = logits[:, :-1].float().reshape(-1, logits.shape[-1])
    labels = batch.labels[:, 1:].to(device).reshape(-1)
    return F.cross_entropy(flat, labels, ignore_index=IGNORE)


def scheduled_windows(n_windows: int, steps: int, batch_size: int, seed: int) -> list[int]:
    """The distinct windows a run of ``steps`` steps will read, sorted."""
    order = window_order(n_windows, seed)
    return sorted({next(order) for _ in range(steps * batch_size)})


def is_tied(model: Any) -> bool:
    head = model.get_output_embeddings()
    return head is None or head.weight is model.get_input_embeddings().weight


def untie(model: Any) -> None:
    """Give the model its own output matrix, equal to the tied one, so the input rows can
    move while the output rows stay as transplanted; the config records it."""
    emb = model.get_input_embeddings().weight
    model.get_output_embeddings().weight = torch.nn.Parameter(emb.detach().clone())
    for cfg in {id(c): c for c in (model.config, model.config.get_text_config())}.values():
        cfg.tie_word_embeddings = False


def window_order(n_windows: int, seed: int) -> Iterator[int]:
    """Window indices, epoch after epoch, each epoch a fresh permutation from ``seed``."""
    gen = torch.Generator().manual_seed(int(seed))
    while True:
        yield from torch.randperm(n_windows, generator=gen).tolist()


@torch.no_grad()
def prox_toward(rows: torch.Tensor, start: torch.Tensor, shrink: float) -> None:
    """Proximal step of ``shrink * ||rows - start||_F``, in place."""
    diff = rows - start
    norm = float(torch.linalg.norm(diff))
    keep = max(0.0, 1.0 - shrink / norm) if norm > 0 else 0.0
    rows.copy_(start + diff * keep)


def train_rows(
    model: Any,
    matrices: list[torch.Tensor],
    row_ids: list[int],
    data: Examples,
    settings: LoopSettings,
    accelerator: Any,
    *,
    show_progress: bool = True,
    on_step: Callable[[int], None] | None = None,
    objective: Objective | None = None,
    adapter: list[torch.nn.Parameter] | None = None,
) -> list[float]:
    """Train ``row_ids`` of each matrix in ``matrices`` in place; return the loss per step
    (mean LM loss of the global batch). ``on_step(step)`` runs after each step's update
    (e.g. an evaluation every few steps)."""
    world, rank = accelerator.num_processes, accelerator.process_index
    if settings.batch_size % world:
        raise ConfigError(
            f"{settings.batch_size} windows do not split over {world} processes; expected a multiple of {world}",
            where="--batch-size",
        )
    per_process = settings.batch_size // world
    device = accelerator.device
    ids = torch.tensor(row_ids, dtype=torch.long, device=device)
    start = [m.detach()[ids].float().clone() for m in matrices]
    rows = [torch.nn.Parameter(s.clone()) for s in start]
    model.requires_grad_(False)
    for m in matrices:
        m.requires_grad_(True)
    # Every output row gets a gradient at every position (the softmax), most of them tiny;
    # Adam scales each to a full step, so the output matrix may take a lower rate.
    peaks = [settings.lr] + [settings.output_lr or settings.lr] * (len(rows) - 1)
    opt = torch.optim.Adam([{"params": [r], "lr": p} for r, p in zip(rows, peaks, strict=True)])
    adapter = adapter or []
    for p in adapter:
        p.requires_grad_(True)
    adapter_opt = (
        torch.optim.AdamW(adapter, lr=settings.adapter_lr, weight_decay=settings.adapter_decay)
        if adapter
        else None
    )
    loss_of = objective or lm_loss
    order = window_order(len(data), settings.seed)
    model.eval()  # no dropout: the rows are the only thing that changes
    losses: list[float] = []
    label = "lm" if objective is None else getattr(objective, "label", "objective")
    bar = tqdm(
        range(1, settings.steps + 1),
        desc="heal",
        unit="step",
        disable=not (show_progress and accelerator.is_main_process),
    )
    try:
        for step in bar:
            picks = [next(order) for _ in range(settings.batch_size)]
            mine = picks[rank * per_process : (rank + 1) * per_process]
            for m in [*matrices, *adapter]:
                m.grad = None
            total = torch.zeros((), device=device)
            for lo in range(0, per_process, settings.micro_batch):
                part = mine[lo : lo + settings.micro_batch]
                share = len(part) / per_process
                loss = loss_of(model, data.take(part), part) * share
                loss.backward()
                total += loss.detach()
            grads = [m.grad[ids].float() for m in matrices]
            adapter_grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in adapter]
            if world > 1:
                grads = [accelerator.reduce(g, reduction="mean") for g in grads]
                adapter_grads = [accelerator.reduce(g, reduction="mean") for g in adapter_grads]
                total = accelerator.reduce(total, reduction="mean")
            # cosine decay from each peak (step 1) to a tenth of it (last step)
            t = (step - 1) / max(1, settings.steps - 1)
            decay = 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * t))
            lr_t = settings.lr * decay
            for group, peak in zip(opt.param_groups, peaks, strict=True):
                group["lr"] = peak * decay
            for r, g in zip(rows, grads, strict=True):
                r.grad = g
            opt.step()
            if adapter_opt is not None:
                for group in adapter_opt.param_groups:
                    group["lr"] = settings.adapter_lr * decay
                for p, g in zip(adapter, adapter_grads, strict=True):
                    p.grad = g
                adapter_opt.step()
            with torch.no_grad():
                for r, s, m in zip(rows, start, matrices, strict=True):
                    if settings.lam > 0:
                        prox_toward(r, s, lr_t * settings.lam)
                    m[ids] = r.to(m.dtype)
            losses.append(float(total))
            bar.set_postfix(loss_postfix(label, losses))
            if on_step is not None:
                on_step(step)
    finally:
        bar.close()
        for m in [*matrices, *adapter]:
            m.grad = None
            m.requires_grad_(False)
    return losses
