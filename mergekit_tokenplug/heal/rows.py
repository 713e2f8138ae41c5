"""Which rows heal trains, read from the transplant's manifest.

``estimated``: rows no input model had (estimated by the transplant's method);
``new``: those plus rows copied from one of the model's ``<0xNN>`` byte-fallback pieces (the
same bytes, but a piece the model only emits when nothing else spells them, so its row was
barely trained, now standing for a whole token); ``all``: the whole matrix.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from mergekit_tokenplug.errors import InputError
from mergekit_tokenplug.output.manifest import MANIFEST_NAME, expand_ranges

RowChoice = Literal["estimated", "new", "all"]
ROW_CHOICES: tuple[str, ...] = ("estimated", "new", "all")


def rows_to_train(model_dir: str | Path, choice: RowChoice, n_rows: int) -> list[int]:
    """Sorted row ids of the input matrix to train (every id < ``n_rows``)."""
    if choice == "all":
        return list(range(n_rows))
    path = Path(model_dir) / MANIFEST_NAME
    if not path.is_file():
        raise InputError(
            f"has no {MANIFEST_NAME}, so which rows a transplant estimated is unknown; "
            "expected a transplant's output (or pass --rows all to train whole matrices)",
            where=str(model_dir),
        )
    try:
        report = json.loads(path.read_text(encoding="utf-8")).get("report", {})
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as exc:
        raise InputError(f"is not a readable manifest ({exc}); expected JSON", where=str(path)) from None
    records = [r for r in report.get("matrices", []) if isinstance(r.get("row_ids"), dict)]
    if not records:
        raise InputError(
            "records no estimated row ids (written by an older version or not by a transplant); "
            "expected a transplant's manifest (or pass --rows all)",
            where=str(path),
        )
    kinds = ("estimated",) if choice == "estimated" else ("estimated", "byte_fallback")
    ids = {i for r in records for k in kinds for i in expand_ranges(r["row_ids"].get(k, []))}
    return sorted(i for i in ids if i < n_rows)
