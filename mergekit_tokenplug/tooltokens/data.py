"""Tool-use data: a generated arithmetic set and a strict JSONL reader.

A row is ``{"prompt": str, "completion": str}``. The completion *starts* with the tool
token, so the position right before it (the prompt's last token) is where the model must
decide to call the tool; prompts and completions are tokenized separately by the trainer,
which keeps that boundary exact whatever the tokenizer does with spaces.
"""

from __future__ import annotations

import json
import operator
import random
from pathlib import Path

from mergekit_tokenplug.errors import InputError

CALCULATOR = "<tool:calculator>"
CLOSE = "</tool>"
_TEMPLATES = (
    "What is {a} {op} {b}?",
    "Compute {a} {op} {b}.",
    "Calculate {a} {op} {b}.",
    "How much is {a} {op} {b}?",
    "Work out {a} {op} {b}.",
)
_OPS = {"+": operator.add, "-": operator.sub, "*": operator.mul}


def generate_arithmetic_dataset(
    n: int, seed: int, *, tool_token: str = CALCULATOR, close: str = CLOSE
) -> list[dict[str, str]]:
    """``n`` calculator-call rows, e.g. prompt ``"Question: What is 37 * 12?\\nAnswer:"``,
    completion ``"<tool:calculator>37*12</tool> = 444"``. Deterministic given ``seed``."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.randint(2, 99), rng.randint(2, 99)
        op = rng.choice(list(_OPS))
        question = rng.choice(_TEMPLATES).format(a=a, op=op, b=b)
        rows.append(
            {
                "prompt": f"Question: {question}\nAnswer:",
                "completion": f"{tool_token}{a}{op}{b}{close} = {_OPS[op](a, b)}",
            }
        )
    return rows


def read_jsonl(path: str | Path) -> list[dict[str, str]]:
    """Rows of a JSONL file; each non-blank line must be an object with string
    ``prompt`` and ``completion``. Errors name the file and 1-based line number."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise InputError(
            f"cannot read JSONL file: {exc.strerror or exc}", where=str(path)
        ) from None
    except UnicodeDecodeError:
        raise InputError("not UTF-8 text; expected JSON lines", where=str(path)) from None
    rows = []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(
                f"invalid JSON ({exc.msg}); expected one object per line", where=where
            ) from None
        if not isinstance(obj, dict):
            raise InputError(f"expected a JSON object, got {type(obj).__name__}", where=where)
        missing = [k for k in ("prompt", "completion") if not isinstance(obj.get(k), str)]
        if missing:
            raise InputError(
                f"missing or non-string key(s) {', '.join(missing)}; expected "
                '{"prompt": "...", "completion": "..."}',
                where=where,
            )
        rows.append({"prompt": obj["prompt"], "completion": obj["completion"]})
    return rows
