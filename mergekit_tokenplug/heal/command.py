"""``heal``: the run from MODEL to OUT (checks, corpus, rows, before/after scores, writing).

OUT holds the weights in their original dtype (every untrained tensor keeps its bytes), the
model card with a heal section and the manifest with a ``heal`` record.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from mergekit_tokenplug.compute.progress import quiet_bars
from mergekit_tokenplug.errors import ConfigError
from mergekit_tokenplug.evaluate.bpb import LN2, bits_per_byte
from mergekit_tokenplug.guards import fit_context
from mergekit_tokenplug.heal.adapter import (
    DEFAULT_LORA,
    LoraSettings,
    attach_lora,
    lora_record,
    merge_lora,
)
from mergekit_tokenplug.heal.checks import (
    ModelExtras,
    check_finite_model,
    check_heal_arguments,
    check_heal_inputs,
    check_healed,
    check_side_file_links,
)
from mergekit_tokenplug.heal.data import HealCorpus, load_corpus
from mergekit_tokenplug.heal.defaults import (
    DEFAULT_DISTILL,
    Adapter,
    Matrices,
    training_defaults,
)
from mergekit_tokenplug.heal.distill import DistillWeights
from mergekit_tokenplug.heal.estimate import announce, teacher_pass
from mergekit_tokenplug.heal.examples import example_scores
from mergekit_tokenplug.heal.frozen import restore_frozen
from mergekit_tokenplug.heal.labels import Labelled, objective_label
from mergekit_tokenplug.heal.rows import RowChoice, rows_to_train
from mergekit_tokenplug.heal.teach import distillation, objective_words, resolve_teacher
from mergekit_tokenplug.heal.train import LoopSettings, is_tied, train_rows, untie
from mergekit_tokenplug.output.atomic import atomic_directory
from mergekit_tokenplug.output.card import heal_section
from mergekit_tokenplug.output.manifest import MANIFEST_NAME, input_record, write_manifest

# Files the model's own save_pretrained writes or this module rewrites; every other file of
# MODEL (side files such as tool-token priors, recipes) is carried over unchanged.
REWRITTEN = ("config.json", "generation_config.json", "README.md", MANIFEST_NAME)


def carry_side_files(src: Path, out: Path) -> None:
    check_side_file_links(src)  # a link out of MODEL would publish the file it points to
    for path in sorted(src.rglob("*")):
        rel = path.relative_to(src)
        weights = len(rel.parts) == 1 and (
            rel.suffix == ".safetensors" or rel.name.endswith(".safetensors.index.json")
        )  # the model's own shards (save_pretrained rewrote them); side files live below
        if not path.is_file() or rel.name in REWRITTEN or weights or (out / rel).exists():
            continue
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, out / rel)


def write_healed(
    out: Path,
    *,
    model: Any,
    tokenizer: Any,
    src: Path,
    summary: dict[str, Any],
    command: str,
    extras: ModelExtras,
    trained: set[str],
) -> None:
    model.save_pretrained(out, safe_serialization=True)
    restore_frozen(out, src, trained)
    tokenizer.save_pretrained(out)
    carry_side_files(src, out)
    card = extras.card
    (out / "README.md").write_text(
        (card.rstrip() + "\n\n" if card.strip() else "") + heal_section(summary), encoding="utf-8"
    )
    before = extras.manifest
    inputs = [{"role": "model", **input_record(str(src))}]
    inputs += [
        {"role": "corpus", "path": path, "sha256": digest}
        for path, digest in summary["corpus"].items()
    ]
    if summary.get("teacher"):
        inputs.append({"role": "teacher", **summary["teacher"]})
    write_manifest(
        out,
        inputs=inputs,
        recipe=command,
        report={**before.get("report", {}), "heal": summary},
        extra={"transplant": {"recipe": before.get("recipe"), "inputs": before.get("inputs")}}
        if before
        else None,
    )


def _scores(
    model: Any,
    tokenizer: Any,
    data: HealCorpus,
    seq_len: int,
    device: Any,
    *,
    phase: str = "before",
    show_progress: bool = False,
) -> dict[str, Any] | None:
    """Held-out figures: the JSONL rows' completion loss (and tool-token accuracy, log-prob and
    rank where the rows hold tool tokens), or mean token loss and bits per byte of the text
    tails (``evaluate/bpb.py``: BOS-led windows of ``seq_len`` tokens, like the training
    windows) summed over every corpus file; None without held-out text. Its bar is
    ``held-out before`` or ``held-out after`` (``phase``): files, each with its windows."""
    desc = f"held-out {phase}"
    if data.heldout_examples is not None:
        return example_scores(
            model, data.heldout_examples, device=device, desc=desc, show_progress=show_progress
        )
    bits = 0.0
    n_bytes = scored = 0
    per_file: dict[str, float] = {}
    for path, text in tqdm(data.heldout.items(), desc=desc, unit="file", disable=not show_progress):
        if text:
            rec = bits_per_byte(
                model, tokenizer, text, window=seq_len, device=device, show_progress=show_progress
            )
            bits += rec["bits"]
            n_bytes += rec["bytes"]
            scored += rec["scored_tokens"]
            per_file[path] = rec["bpb"]  # the path: two files may share a name
    if not scored:
        return None
    return {
        "loss": bits * LN2 / scored,
        "bpb": bits / n_bytes,
        "bytes": n_bytes,
        "tokens": scored,
        "per_file": per_file,
    }


def trained_names(model: Any, matrices: list[torch.Tensor]) -> set[str]:
    """State-dict names of the matrices heal trains (every other tensor keeps MODEL's bytes)."""
    return {
        name
        for name, p in model.named_parameters(remove_duplicate=False)
        if any(p is m for m in matrices)
    }


@quiet_bars  # --quiet silences transformers' bars too
def run_heal(
    model_dir: str,
    out: str,
    corpus: list[str],
    *,
    steps: int = 60,
    rows: RowChoice = "all",
    matrices: Matrices | None = None,
    tool_tokens: tuple[str, ...] = (),
    lr: float | None = None,
    output_lr: float | None = None,
    lam: float = 1e-2,
    seq_len: int | None = None,
    batch_size: int = 2,
    micro_batch: int = 1,
    eval_fraction: float = 0.1,
    device: str = "cpu",
    seed: int = 0,
    overwrite: bool = False,
    allow_pickle: bool = False,
    quiet: bool = False,
    teacher: str | None = None,
    distill: DistillWeights = DEFAULT_DISTILL,
    teacher_cache: str | None = None,
    adapter: Adapter | None = None,
    lora: LoraSettings = DEFAULT_LORA,
) -> dict[str, Any]:
    """Heal MODEL into OUT; return the summary (also recorded in OUT's manifest).

    ``matrices``, ``lr``, ``output_lr`` and ``adapter`` default by the rows and the objective
    (``heal/defaults.py``: both matrices at low rates and a LoRA with a teacher, input rows
    with the LM loss alone, both for tool rows). ``seq_len``
    defaults to 512 tokens, or the model's context when that is shorter. ``teacher``
    (default: MODEL's base, ``heal/teach.py``; ``"none"``: LM loss only) adds distillation;
    ``adapter="lora"`` trains a low-rank adapter (``lora``'s settings) with the rows and merges
    it into OUT's weights."""
    import transformers
    from accelerate import Accelerator

    t0 = time.perf_counter()
    device = check_heal_arguments(
        steps=steps,
        lr=lr,
        lam=lam,
        batch_size=batch_size,
        micro_batch=micro_batch,
        eval_fraction=eval_fraction,
        seed=seed,
        device=device,
        rows=rows,
        tool_tokens=tool_tokens,
        output_lr=output_lr,
        matrices=matrices,
    )
    corpus_files, extras = check_heal_inputs(
        model_dir, out, corpus, overwrite=overwrite, allow_pickle=allow_pickle
    )
    seq_len = fit_context(seq_len, 512, model_dir, "--seq-len")
    src = Path(model_dir).expanduser()
    show = not quiet and os.environ.get("RANK", "0") == "0"  # one process draws and says
    # leave=False: a failed load (a bad --tool-token, rows) ends in one error line, no bar
    loading = tqdm(total=3, desc=f"load {src.name}", unit="part", leave=False, disable=not show)
    loading.set_postfix_str("tokenizer", refresh=False)
    tokenizer = transformers.AutoTokenizer.from_pretrained(src)
    n_rows = transformers.AutoConfig.from_pretrained(src).get_text_config().vocab_size
    row_ids = rows_to_train(src, rows, n_rows, tool_tokens=tool_tokens, vocab=tokenizer.get_vocab())
    if not row_ids:
        raise ConfigError(f"selects no rows of {src}; nothing to train", where="--rows")
    tool_ids = set(row_ids) if rows == "tool" else set()
    loading.update()
    loading.set_postfix_str("corpus", refresh=False)
    data = load_corpus(
        corpus,
        tokenizer,
        seq_len=seq_len,
        eval_fraction=eval_fraction,
        seed=seed,
        tool_ids=tool_ids,
    )
    teacher_dir = resolve_teacher(teacher, src, text_corpus=data.heldout_examples is None)
    training = training_defaults(
        rows, teacher_dir is not None, matrices=matrices, lr=lr, output_lr=output_lr,
        adapter=adapter,
    )  # fmt: skip
    matrices, lr, output_lr = training.matrices, training.lr, training.output_lr
    adapter_settings = lora if training.adapter == "lora" else None

    accelerator = Accelerator(cpu=device == "cpu")
    loading.update()
    loading.set_postfix_str("weights", refresh=False)
    t_load = time.perf_counter()
    model = transformers.AutoModelForCausalLM.from_pretrained(src, dtype="auto")
    check_finite_model(model, model_dir)
    file_dtype = model.get_input_embeddings().weight.dtype
    model = model.float().to(accelerator.device)
    load_s = time.perf_counter() - t_load
    loading.update()
    loading.close()
    # input rows alone, or an output matrix at its own rate: the two need their own rows
    untied = is_tied(model) and (matrices == "input" or output_lr is not None)
    if untied:
        untie(model)
    mats = [model.get_input_embeddings().weight]
    if matrices == "both" and not is_tied(model):
        mats.append(model.get_output_embeddings().weight)
    names = ["tied input/output"] if is_tied(model) else ["input", "output"][: len(mats)]
    trained = trained_names(model, mats)
    if show:  # what the run will cost, before its long parts
        announce(
            model, mats, len(row_ids), data, tokenizer,
            steps=steps, batch_size=batch_size, micro_batch=micro_batch,
            processes=accelerator.num_processes, seq_len=seq_len, load_s=load_s,
            teacher=None if teacher_dir is None else teacher_pass(
                teacher_dir, model, src, data, seq_len=seq_len, eval_fraction=eval_fraction,
                steps=steps, batch_size=batch_size, seed=seed, layer=distill.layer,
                cache_dir=teacher_cache, out=out,
            ),
        )  # fmt: skip
    before = _scores(
        model, tokenizer, data, seq_len, accelerator.device, phase="before", show_progress=show
    )
    objective, distilled = None, None
    if teacher_dir is not None:
        objective, distilled = distillation(
            teacher_dir, src, tokenizer, corpus, data.sha256, data.train,
            seq_len=seq_len, eval_fraction=eval_fraction, steps=steps, batch_size=batch_size,
            seed=seed, weights=distill, cache_dir=teacher_cache, out=out,
            accelerator=accelerator,
            show_progress=not quiet,
        )  # fmt: skip
        objective = Labelled(objective, objective_label(distill))  # the training bar's label
    wrapped, adapter_params = (
        (None, []) if adapter_settings is None else attach_lora(model, adapter_settings, seed)
    )
    loop = LoopSettings(
        steps, lr, lam, batch_size, micro_batch, seed,
        adapter_lr=adapter_settings.lr if adapter_settings else 0.0,
        adapter_decay=adapter_settings.decay if adapter_settings else 0.0,
        output_lr=output_lr,
    )  # fmt: skip
    losses = train_rows(
        model, mats, row_ids, data.train, loop, accelerator, show_progress=not quiet,
        objective=objective, adapter=adapter_params,
    )  # fmt: skip
    merged: list[str] = []
    if wrapped is not None:
        model, merged = merge_lora(wrapped)
        trained |= set(merged)  # merged projections are written as trained, not restored
    with torch.no_grad():  # what OUT will hold: rows rounded to the file's dtype
        ids = torch.tensor(row_ids, device=accelerator.device)
        for m in mats:
            m[ids] = m[ids].to(file_dtype).float()
    after = _scores(
        model, tokenizer, data, seq_len, accelerator.device, phase="after", show_progress=show
    )
    check_healed(mats, row_ids, after)
    summary: dict[str, Any] = {
        "rows": {
            "which": rows,
            "count": len(row_ids),
            **({"ids": row_ids} if rows == "tool" else {}),
            "matrices": names,
        },
        "untied": untied,
        "steps": steps,
        "lr": lr,
        **({"output_lr": output_lr} if output_lr is not None and len(mats) > 1 else {}),
        "lr_schedule": "cosine to lr/10",
        "lam": lam,
        "seq_len": seq_len,
        "batch_size": batch_size,
        "processes": accelerator.num_processes,
        "seed": seed,
        "train_windows": len(data.train),
        "eval_fraction": eval_fraction,
        "corpus": data.sha256,
        "heldout_before": before,
        "heldout_after": after,
        "train_loss": losses,
        **(distilled or {"teacher": None}),
        "adapter": lora_record(adapter_settings, merged),
    }
    command = (
        f"heal rows={rows} matrices={matrices} steps={steps} lr={lr} "
        + (f"output_lr={output_lr} " if output_lr is not None and len(mats) > 1 else "")
        + f"lam={lam} seq_len={seq_len} "
        f"batch_size={batch_size} eval_fraction={eval_fraction} seed={seed}"
    )
    command += objective_words(distilled, adapter_settings)
    if accelerator.is_main_process:
        model.to("cpu", file_dtype)
        with atomic_directory(out, inputs=[str(src), *corpus_files], overwrite=overwrite) as tmp:
            write_healed(
                tmp,
                model=model,
                tokenizer=tokenizer,
                src=src,
                summary=summary,
                command=command,
                extras=extras,
                trained=trained,
            )
    accelerator.wait_for_everyone()
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    return summary
