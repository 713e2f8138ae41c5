"""What ``heal`` (and ``learn-tool-tokens``) checks before training and before publishing.

Before: its own arguments (``guards``), MODEL (the checks ``transplant`` runs, plus the model
card and manifest it will carry, read now so a bad file fails before training), the corpus
files and OUT apart from all of them. After: the trained rows and held-out figures are
finite, so exit 0 always means a checkpoint that works.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mergekit_tokenplug.errors import ConfigError, InputError
from mergekit_tokenplug.guards import (
    MAX_STEPS,
    check_device,
    check_finite_tensors,
    check_number,
    check_seed,
    read_text_file,
    require_local_dir,
)
from mergekit_tokenplug.inputs import check_model_dir, read_json
from mergekit_tokenplug.output.atomic import check_output_dir
from mergekit_tokenplug.output.manifest import MANIFEST_NAME
from mergekit_tokenplug.resources.corpus import resolve_corpus

WHERE = "MODEL"
MAX_LR = 1e6  # far past any useful rate; Adam's step must stay a float32


def check_heal_arguments(
    *,
    steps: int,
    lr: float | None,
    lam: float,
    batch_size: int,
    micro_batch: int,
    eval_fraction: float,
    seed: int,
    device: str,
    rows: str,
    tool_tokens: Sequence[str],
    output_lr: float | None = None,
    matrices: str | None = None,
) -> str:
    """Every numeric option finite and in range, the device one that exists here; returns
    the device name."""
    check_number(steps, "--steps", low=1, high=MAX_STEPS)
    check_number(batch_size, "--batch-size", low=1, high=1 << 20)
    check_number(micro_batch, "--micro-batch", low=1, high=1 << 20)
    if lr is not None:  # None: heal/defaults.py decides
        check_number(lr, "--lr", low=0, low_open=True, high=MAX_LR)
    if output_lr is not None:
        check_number(output_lr, "--output-lr", low=0, low_open=True, high=MAX_LR)
        if matrices == "input":
            raise ConfigError(
                "sets the output matrix's rate, but --matrices input trains input rows only; "
                "expected --matrices both or no --output-lr",
                where="--output-lr",
            )
    check_number(lam, "--lam", low=0)
    check_number(eval_fraction, "--eval-fraction", low=0, high=1, high_open=True)
    check_seed(seed)
    if tool_tokens and rows != "tool":
        raise ConfigError(
            f"names tool tokens, which only --rows tool trains (got --rows {rows})",
            where="--tool-token",
        )
    return check_device(device)


@dataclass
class ModelExtras:
    """MODEL's files heal carries into OUT, read before training."""

    card: str = ""
    manifest: dict[str, Any] = field(default_factory=dict)


def check_heal_inputs(
    model_dir: str, out: str, corpus: list[str], *, overwrite: bool, allow_pickle: bool
) -> tuple[list[str], ModelExtras]:
    """MODEL as ``transplant`` checks it, its side files, card and manifest; the corpus files;
    OUT apart from every one of them (even with --overwrite). Returns the corpus files and
    what MODEL's card and manifest hold."""
    from mergekit.common import ModelReference  # lazy: mergekit, needed by heal only here

    from mergekit_tokenplug.seam.run import check_embedding_rows  # lazy: imports mergekit

    require_local_dir(model_dir, WHERE)
    check_model_dir(model_dir, where=WHERE, need_tokenizer=True, allow_pickle=allow_pickle)
    check_embedding_rows(ModelReference.model_validate(model_dir), WHERE, False)
    src = Path(model_dir).expanduser()
    check_side_file_links(src)
    files = resolve_corpus(list(corpus), where="--corpus")
    check_output_dir(out, inputs=[str(src), *files], overwrite=overwrite)
    extras = ModelExtras()
    if (src / "README.md").is_file():
        extras.card = read_text_file(src / "README.md", WHERE)
    if (src / MANIFEST_NAME).is_file():
        data = read_json(src / MANIFEST_NAME, WHERE, "a tokenplug manifest (a JSON object)")
        if not isinstance(data, dict):
            raise InputError(
                f"{src / MANIFEST_NAME} is not a JSON object; expected a tokenplug manifest",
                where=WHERE,
            )
        extras.manifest = data
    return files, extras


def link_roots(src: Path) -> list[Path]:
    """Where a symlink of MODEL may point: inside MODEL, or (a Hugging Face cache snapshot,
    whose files all link to the repository's blobs) that repository's blob store."""
    roots = [src.resolve()]
    if src.resolve().parent.name == "snapshots":
        roots.append(src.resolve().parent.parent / "blobs")
    return roots


def check_side_file_links(src: Path) -> None:
    """A symlink in MODEL that leads outside it is refused: heal copies side files into OUT,
    and a link to a private file would publish its content with the model."""
    roots = link_roots(src)
    for path in sorted(src.rglob("*")):
        if not path.is_symlink():
            continue
        target = path.resolve()
        if not any(target == r or r in target.parents for r in roots):
            raise InputError(
                f"{path} is a symbolic link to {target}, outside the model folder; expected the model's files inside it (heal copies them into OUT)",
                where=WHERE,
            )


def check_finite_model(model: Any, model_dir: str) -> None:
    """Non-finite weights are refused as ``transplant`` refuses them: a NaN anywhere reaches
    every trained row through the loss."""
    check_finite_tensors(model.state_dict().items(), where=f"{WHERE} {model_dir}")


def check_healed(matrices: list[torch.Tensor], row_ids: list[int], figures: Any) -> None:
    """The trained rows and the held-out figures are finite; else training diverged and
    nothing is published."""
    ids = torch.tensor(row_ids, dtype=torch.long, device=matrices[0].device)
    bad = sum(int((~torch.isfinite(m.detach()[ids])).sum()) for m in matrices)
    loss = (figures or {}).get("loss")
    if bad or (isinstance(loss, float) and not math.isfinite(loss)):
        what = f"{bad} non-finite values in the trained rows" if bad else f"held-out loss {loss}"
        raise InputError(
            f"training diverged ({what}); nothing was written; expected a smaller --lr or a larger --lam",
            where="heal",
        )
