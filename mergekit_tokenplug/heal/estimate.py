"""heal's time and memory estimate, printed before the long parts of a run start.

A heal on CPU takes minutes to hours, and most of that is decided by the settings before the
first step: a user should see what a run will cost while it can still be stopped cheaply.

Time comes from one measured probe: a forward and backward pass of the LM loss on one
micro-batch of training windows (the unit of a step), right after MODEL is loaded. The rest is
scaled from it, linear in tokens:

* a training step: the probe's forward + backward times the windows each process takes a step;
* held-out scoring, before and after training: the probe's forward time per token;
* the teacher pass, when its cache lacks windows: the same forward time per token, scaled by
  the teacher's compute per token against MODEL's (the body is shared; the output heads differ
  by vocabulary), plus a load as long as MODEL's took.

Memory is the peak measured after the probe (the process's RSS from ``getrusage`` on CPU, the
CUDA allocator's peak on a GPU), which already holds the model, a micro-batch's activations and
the full gradient of a trained matrix, plus what comes later, whichever is larger: the float32
state of the trained rows with the cached teacher targets loaded for training, or the teacher's
float32 weights during its pass. The rows' state counts six copies of them: start, current,
gradient copy and Adam's two moments, and one for the temporaries of the Adam and regularizer
steps (calibrated on Gemma-3-270M, every row trained: 8.8 GB estimated, 9.1 GB peak RSS). A
LoRA adapter's state is small and left out.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mergekit_tokenplug.heal.data import HealCorpus
from mergekit_tokenplug.heal.examples import Examples
from mergekit_tokenplug.heal.teach import cache_location
from mergekit_tokenplug.heal.teacher import window_file
from mergekit_tokenplug.heal.train import lm_loss, scheduled_windows

ROW_COPIES = 6  # float32 copies of the trained rows during a step (see the module doc)


@dataclass(frozen=True)
class Probe:
    """What the probe step measured."""

    forward_s: float
    backward_s: float
    tokens: int  # tokens in the probed micro-batch (padded width x windows)
    windows: int
    peak_bytes: int
    peak_kind: str  # "RSS" or "GPU memory"


@dataclass(frozen=True)
class TeacherPass:
    """The teacher pass a run still needs: scheduled windows, those not cached, and the
    teacher's compute per token relative to MODEL's and its float32 weights."""

    windows: int
    missing: int
    cost: float = 1.0
    weight_bytes: int = 0
    target_bytes: int = 0  # the cached targets training holds (an upper bound)


@dataclass(frozen=True)
class Plan:
    """The settings of a run that its cost depends on."""

    steps: int
    batch_size: int  # windows a step, over all processes
    processes: int
    seq_len: int
    width: int  # tokens per training window as the model sees them (BOS, padding)
    examples: bool  # prompt/completion rows rather than corpus windows
    heldout_tokens: int
    row_floats: int  # trained rows x width, summed over the trained matrices
    load_s: float  # how long MODEL took to load
    teacher: TeacherPass | None = None


@dataclass(frozen=True)
class Estimate:
    step_s: float
    train_s: float
    heldout_s: float  # before and after together
    teacher_s: float
    total_s: float
    peak_bytes: int


def estimate(plan: Plan, probe: Probe) -> Estimate:
    """Scale the probe to the run (see the module doc)."""
    per_token = probe.forward_s / max(probe.tokens, 1)
    per_process = plan.batch_size / plan.processes
    step_s = (probe.forward_s + probe.backward_s) * per_process / max(probe.windows, 1)
    train_s = plan.steps * step_s
    heldout_s = 2 * plan.heldout_tokens * per_token
    teacher_s = 0.0
    extra = ROW_COPIES * 4 * plan.row_floats
    t = plan.teacher
    if t is not None:
        extra += t.target_bytes
        if t.missing:
            windows = math.ceil(t.missing / plan.processes)
            teacher_s = plan.load_s + windows * plan.width * per_token * t.cost
            extra = max(extra, t.weight_bytes)
    return Estimate(
        step_s=step_s,
        train_s=train_s,
        heldout_s=heldout_s,
        teacher_s=teacher_s,
        total_s=train_s + heldout_s + teacher_s,
        peak_bytes=probe.peak_bytes + extra,
    )


def duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def size(n_bytes: float) -> str:
    return f"{n_bytes / 1e9:.1f} GB" if n_bytes >= 1e9 else f"{n_bytes / 1e6:.0f} MB"


def estimate_line(plan: Plan, probe: Probe, est: Estimate) -> str:
    """The one line heal prints (``heal: 60 steps x 2 windows of 512 tokens, ...``)."""
    unit = (
        f"examples of {plan.width} tokens (padded)"
        if plan.examples
        else f"windows of {plan.seq_len} tokens"
    )
    step = f"{est.step_s:.1f}" if est.step_s >= 1 else f"{est.step_s:.2g}"
    parts = [
        f"heal: {plan.steps} steps x {plan.batch_size} {unit}, {step} s a step "
        f"(measured on a probe step) -> about {duration(est.train_s)}"
    ]
    if plan.heldout_tokens:
        parts.append(f"held-out scoring before and after about {duration(est.heldout_s)}")
    t = plan.teacher
    if t is not None:
        parts.append(
            f"teacher pass over {t.missing} of {t.windows} windows about {duration(est.teacher_s)}"
            if t.missing
            else f"teacher cache holds all {t.windows} windows"
        )
    parts.append(f"total about {duration(est.total_s)}")
    parts.append(
        f"peak memory about {size(est.peak_bytes)} ({probe.peak_kind} measured after the probe, "
        "plus the trained rows' Adam state" + (" and the teacher" if t is not None else "") + ")"
    )
    return "; ".join(parts)


# ----------------------------------------------------------------------------- measuring


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measured_peak(device: torch.device) -> tuple[int, str]:
    """The process's peak memory so far: CUDA allocator peak on a GPU, else max RSS."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device)), "GPU memory"
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024), "RSS"  # darwin: bytes


def probe_step(model: Any, batch: Examples, matrices: list[torch.Tensor]) -> Probe:
    """Time one forward and backward pass of the LM loss on ``batch`` with gradients on
    ``matrices`` only; every weight and ``requires_grad`` flag is left as it was."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    training = model.training
    model.eval()
    model.requires_grad_(False)
    for m in matrices:
        m.requires_grad_(True)
    device = model.device
    try:
        _sync(device)
        t0 = time.perf_counter()
        loss = lm_loss(model, batch, list(range(len(batch))))
        _sync(device)
        t1 = time.perf_counter()
        loss.backward()
        _sync(device)
        t2 = time.perf_counter()
    finally:
        for m in matrices:
            m.grad = None
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(training)
    peak, kind = measured_peak(device)
    return Probe(t1 - t0, t2 - t1, int(batch.ids.numel()), len(batch), peak, kind)


def heldout_tokens(data: HealCorpus, tokenizer: Any, seq_len: int) -> int:
    """Tokens the held-out scoring reads (``evaluate/bpb.py``'s windows, BOS included)."""
    if data.heldout_examples is not None:
        return int(data.heldout_examples.ids.numel())
    bos = getattr(tokenizer, "bos_token_id", None) is not None
    total = 0
    for text in data.heldout.values():
        if text:
            n = len(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])
            total += n + (math.ceil(n / seq_len) if bos else 0)
    return total


def _file_params(model_dir: str) -> int:
    from safetensors import safe_open

    n = 0
    for f in sorted(Path(model_dir).glob("*.safetensors")):
        with safe_open(str(f), "pt") as fh:
            n += sum(math.prod(fh.get_slice(k).get_shape()) for k in fh.keys())
    return n


def teacher_pass(
    teacher: str,
    model: Any,
    model_dir: Path,
    data: HealCorpus,
    *,
    seq_len: int,
    eval_fraction: float,
    steps: int,
    batch_size: int,
    seed: int,
    layer: int,
    cache_dir: str | None,
    out: str,
) -> TeacherPass:
    """What the teacher pass of this run will do (the windows its cache lacks) and cost."""
    import transformers

    _, cache = cache_location(
        teacher, model_dir, data.sha256, seq_len, eval_fraction, layer, cache_dir, out
    )
    windows = scheduled_windows(len(data.train), steps, batch_size, seed)
    missing = sum(not window_file(cache, w).is_file() for w in windows)
    rows, width = model.get_input_embeddings().weight.shape
    total = sum(p.numel() for p in model.parameters())
    head = model.get_output_embeddings()
    tied = head is None or head.weight is model.get_input_embeddings().weight
    body = total - rows * width - (0 if tied else head.weight.numel())
    t_rows = transformers.AutoConfig.from_pretrained(teacher).get_text_config().vocab_size
    return TeacherPass(
        windows=len(windows),
        missing=missing,
        cost=(body + t_rows * width) / max(body + rows * width, 1),
        weight_bytes=4 * _file_params(teacher),
        target_bytes=len(windows) * data.train.ids.shape[1] * (width + 3) * 4,
    )


def announce(
    model: Any,
    matrices: list[torch.Tensor],
    row_count: int,
    data: HealCorpus,
    tokenizer: Any,
    *,
    steps: int,
    batch_size: int,
    micro_batch: int,
    processes: int,
    seq_len: int,
    load_s: float,
    teacher: TeacherPass | None,
) -> str:
    """Probe, estimate and print the line to stderr; return it."""
    per_process = max(1, batch_size // processes)
    k = min(micro_batch, per_process, len(data.train))
    probe = probe_step(model, data.train.take(range(k)), matrices)
    width = model.get_input_embeddings().weight.shape[1]
    plan = Plan(
        steps=steps,
        batch_size=batch_size,
        processes=processes,
        seq_len=seq_len,
        width=int(data.train.ids.shape[1]),
        examples=data.heldout_examples is not None or data.train.mask is not None,
        heldout_tokens=heldout_tokens(data, tokenizer, seq_len),
        row_floats=row_count * width * len(matrices),
        load_s=load_s,
        teacher=teacher,
    )
    line = estimate_line(plan, probe, estimate(plan, probe))
    print(line, file=sys.stderr, flush=True)
    return line
