"""Which rows heal trains, read from the transplant's manifest.

``estimated``: rows no input model had (estimated by the transplant's method);
``new``: those plus rows copied from one of the model's ``<0xNN>`` byte-fallback pieces (the
same bytes, but a piece the model only emits when nothing else spells them, so its row was
barely trained, now standing for a whole token); ``tool``: the tool tokens a tool-token
recipe added (``tokenplug/tool_token_priors.safetensors`` lists them) or those named;
``all``: the whole matrix.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from safetensors import safe_open

from mergekit_tokenplug.errors import InputError
from mergekit_tokenplug.inputs import read_json
from mergekit_tokenplug.output.manifest import MANIFEST_NAME, expand_ranges
from mergekit_tokenplug.output.side_files import TOOL_PRIORS

RowChoice = Literal["all", "estimated", "new", "tool"]  # the CLI's choices, in this order


def tool_rows(model_dir: str | Path, names: Sequence[str], vocab: dict[str, int]) -> list[int]:
    """Ids of the named tool tokens, else of those the tool-token recipe recorded."""
    if names:
        unknown = [t for t in names if t not in vocab]
        if unknown:
            raise InputError(
                f"tool tokens {unknown} are not in the tokenizer; add them with a tool-token recipe first",
                where="--tool-token",
            )
        return sorted({vocab[t] for t in names})
    path = Path(model_dir) / TOOL_PRIORS
    if not path.is_file():
        raise InputError(
            f"has no {TOOL_PRIORS} and no --tool-token was given; expected a tool-token recipe's output",
            where=str(model_dir),
        )
    with safe_open(str(path), "pt") as fh:
        return sorted(int(i) for i in fh.get_tensor("token_ids").tolist())


def rows_to_train(
    model_dir: str | Path,
    choice: RowChoice,
    n_rows: int,
    *,
    tool_tokens: Sequence[str] = (),
    vocab: dict[str, int] | None = None,
) -> list[int]:
    """Sorted row ids of the input matrix to train (every id < ``n_rows``)."""
    if choice == "all":
        return list(range(n_rows))
    if choice == "tool":
        return [i for i in tool_rows(model_dir, tool_tokens, vocab or {}) if i < n_rows]
    return manifest_rows(Path(model_dir) / MANIFEST_NAME, choice, n_rows)


def _runs(value: Any, n_rows: int, where: str) -> list[list[int]]:
    """``[[first, last], ...]`` with ``0 <= first <= last < n_rows``, or one line naming the
    manifest (a tampered list must not train the wrong rows or allocate without bound)."""
    ok = isinstance(value, list) and all(
        isinstance(r, list)
        and len(r) == 2
        and all(isinstance(i, int) and not isinstance(i, bool) for i in r)
        and 0 <= r[0] <= r[1] < n_rows
        for r in value
    )
    if not ok:
        shown = json.dumps(value)[:80]
        raise InputError(
            f"row ids {shown} are not [[first, last], ...] runs of rows 0..{n_rows - 1}; expected a transplant's manifest of this model",
            where=where,
        )
    return value


def manifest_rows(path: Path, choice: RowChoice, n_rows: int) -> list[int]:
    """The rows a transplant's manifest records as estimated (and copied from byte pieces)."""
    model_dir = path.parent
    if not path.is_file():
        raise InputError(
            f"has no {MANIFEST_NAME}, so which rows a transplant estimated is unknown; "
            "expected a transplant's output (or pass --rows all to train whole matrices)",
            where=str(model_dir),
        )
    data = read_json(path, str(path), "a tokenplug manifest")
    report = data.get("report") if isinstance(data, dict) else None
    matrices = report.get("matrices") if isinstance(report, dict) else None
    records = [
        r for r in matrices or [] if isinstance(r, dict) and isinstance(r.get("row_ids"), dict)
    ]
    if not records and isinstance(data, dict) and "stages" in data:
        raise InputError(
            "is a mergekit-multi output's manifest, whose stages each estimated their own rows; expected a single transplant's manifest (or pass --rows all)",
            where=str(path),
        )
    if not records:
        raise InputError(
            "records no estimated row ids (written by an older version or not by a transplant); "
            "expected a transplant's manifest (or pass --rows all)",
            where=str(path),
        )
    kinds = ("estimated",) if choice == "estimated" else ("estimated", "byte_fallback")
    ids = {
        i
        for r in records
        for k in kinds
        for i in expand_ranges(_runs(r["row_ids"].get(k, []), n_rows, str(path)))
    }
    return sorted(ids)
