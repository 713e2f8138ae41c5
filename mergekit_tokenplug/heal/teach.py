"""Distillation for ``heal``: choose the teacher, run it once (cached), build the objective.

``--teacher`` defaults to the base model MODEL's manifest records (when that directory is
there and the corpus is text); ``none`` keeps the LM-only objective. Prompt/completion
corpora have no shared text to align, so they take no teacher.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from mergekit_tokenplug.errors import ConfigError, InputError
from mergekit_tokenplug.heal.corpus_spans import student_windows, training_texts
from mergekit_tokenplug.heal.distill import DistillWeights, channel_scale, window_losses
from mergekit_tokenplug.heal.examples import Examples
from mergekit_tokenplug.heal.teacher import (
    WHERE,
    TeacherKey,
    build_cache,
    cache_bytes,
    check_teacher,
    default_teacher,
    load_targets,
    teacher_key,
)
from mergekit_tokenplug.heal.train import Objective, scheduled_windows
from mergekit_tokenplug.output.manifest import input_record

CACHE_NAME = ".tokenplug-teacher-cache"  # next to OUT: heal's working files live there


def resolve_teacher(option: str | None, model_dir: Path, text_corpus: bool) -> str | None:
    """The teacher directory to use (checked), or None for the LM-only objective."""
    if option is not None and option.strip().lower() == "none":
        return None
    if option is None:
        found = default_teacher(model_dir) if text_corpus else None
        if found is not None:
            try:
                check_teacher(found, model_dir)
            except InputError as exc:  # e.g. MODEL was healed with a merged adapter
                raise InputError(
                    f"{exc} (the default teacher, from MODEL's manifest; pass --teacher none "
                    "to heal without one)"
                ) from None
        return found
    if not text_corpus:
        raise ConfigError(
            "distils on text only; a prompt/completion corpus takes --teacher none", where=WHERE
        )
    check_teacher(option, model_dir)
    return option


def default_cache_dir(out: str) -> Path:
    """Beside OUT (where its ``.partial`` working directory lives), shared by every heal
    writing to the same folder, so reruns and variants reuse one teacher pass."""
    return Path(out).resolve().parent / CACHE_NAME


def cache_location(
    teacher: str,
    model_dir: Path,
    corpus_sha: dict[str, str],
    seq_len: int,
    eval_fraction: float,
    layer: int,
    cache_dir: str | None,
    out: str,
) -> tuple[TeacherKey, Path]:
    """The teacher cache's key and directory for a run (also read by heal's time estimate)."""
    key = teacher_key(
        teacher,
        model_dir,
        corpus_sha,
        {"seq_len": seq_len, "eval_fraction": eval_fraction, "layer": layer},
    )
    return key, (Path(cache_dir) if cache_dir else default_cache_dir(out)) / key.digest


def distillation(
    teacher: str,
    model_dir: Path,
    tokenizer: Any,
    corpus: list[str],
    corpus_sha: dict[str, str],
    train: Examples,
    *,
    seq_len: int,
    eval_fraction: float,
    steps: int,
    batch_size: int,
    seed: int,
    weights: DistillWeights,
    cache_dir: str | None,
    out: str,
    accelerator: Any,
    show_progress: bool,
) -> tuple[Objective, dict[str, Any]]:
    """Fill the teacher cache for the windows this run reads; return the objective and the
    record the summary keeps (teacher, objective, cache)."""
    t0 = time.perf_counter()
    texts = training_texts(corpus, eval_fraction)
    student = student_windows(tokenizer, texts, seq_len, train.ids)
    key, cache = cache_location(
        teacher, model_dir, corpus_sha, seq_len, eval_fraction, weights.layer, cache_dir, out
    )
    windows = scheduled_windows(len(train), steps, batch_size, seed)
    ran = build_cache(
        teacher,
        cache,
        student,
        texts,
        windows,
        layer=weights.layer,
        accelerator=accelerator,
        show_progress=show_progress,
        student_tokenizer=tokenizer,
    )
    ran_all = int(accelerator.reduce(torch.tensor(ran, device=accelerator.device), "sum"))
    targets = load_targets(cache, windows)
    scale = channel_scale([targets[w] for w in windows])
    n_chunks = sum(len(t.lo) for t in targets.values())

    def objective(model: Any, batch: Examples, picks: list[int]) -> torch.Tensor:
        device = model.device
        mask = None if batch.mask is None else batch.mask.to(device)
        out = model(input_ids=batch.ids.to(device), attention_mask=mask, output_hidden_states=True)
        hidden = out.hidden_states[weights.layer]
        total = out.logits.new_zeros(())
        for i, w in enumerate(picks):
            loss, _ = window_losses(
                out.logits[i], hidden[i], batch.labels[i].to(device), targets[w], scale, weights
            )
            total = total + loss
        return total / len(picks)

    record = {
        "teacher": {"path": str(Path(teacher).resolve()), **_hashes(teacher)},
        "objective": {
            "lm": weights.lm,
            "chunk_likelihood": weights.chunk,
            "hidden_state": weights.hidden,
            "next_piece": weights.piece,
            "tau": weights.tau,
            "layer": weights.layer,
        },
        "cache": {
            "dir": str(cache),
            "key": key.digest,
            "bytes": cache_bytes(cache),
            "windows": len(windows),
            "chunks": n_chunks,
            "teacher_forwards": ran_all,
            "reused": len(windows) - ran_all,
            "seconds": round(time.perf_counter() - t0, 1),
        },
    }
    return objective, record


def _hashes(teacher: str) -> dict[str, Any]:

    return {"safetensors": input_record(teacher)["safetensors"]}


def objective_words(distilled: dict[str, Any] | None, lora: Any) -> str:
    """The manifest recipe line's words for the teacher and the adapter."""
    words = ""
    if distilled:
        o = distilled["objective"]
        words += (
            f" teacher={distilled['teacher']['path']} lm={o['lm']} "
            f"chunk={o['chunk_likelihood']} hidden={o['hidden_state']} piece={o['next_piece']} "
            f"tau={o['tau']} "
            f"layer={o['layer']}"
        )
    if lora is not None:
        words += f" lora_rank={lora.rank} lora_alpha={lora.alpha} lora_lr={lora.lr}"
    return words
