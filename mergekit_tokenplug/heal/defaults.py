"""heal's defaults for what trains, how fast and on which objective: matrices, learning rates,
adapter, loss weights.

They depend on what is trained and on the objective (``bench/RESULTS.md``, "Learning rates,
the next-piece loss and a LoRA"):

* **With a teacher** (a transplant's default): the LM loss plus the next-piece loss
  (``DEFAULT_DISTILL``; the chunk-likelihood and hidden-state terms off, not measured in this
  setting), both matrices, the input rows at 2.5e-4 and
  the output rows at 1e-4, and a rank-8 LoRA (``heal/adapter.py``) merged at the end. Adam
  moves every coordinate of a row that takes a gradient by about the rate each step,
  whatever the gradient's size; Gemma-3-270M's rows have an RMS of 0.04, so 2e-3 rewrites a
  frequent row within 60 steps, and English prose whose rows were exact copies got worse in
  every setting at that rate. The output rows are where the next-piece loss acts
  (predicting a word's pieces where the original predicted it whole), and every output row
  takes a gradient at every position, hence their lower rate. The adapter gives the
  transformer room to read familiar text in new pieces; with the teacher's targets it made
  every text of the prose set better, where rows alone left English flat.
* **LM loss alone** (``--teacher none``, or a prompt/completion corpus): input rows at 2e-3
  and no adapter, the setting chosen on the heal corpus's own documents (``bench/RESULTS.md``,
  "Choosing the setting"); the output matrix stays as transplanted, since without the
  teacher its only signal is the corpus's next tokens.
* **Tool rows** (``--rows tool``): both matrices at 2e-3, no adapter — a tool token must be
  predicted, and its rows start from a description prior far from where they end.

An option given on the command line always wins; ``--output-lr`` alone asks for the output
rows to train (``--matrices input`` with it is refused by ``heal/checks.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from mergekit_tokenplug.heal.distill import DistillWeights

Matrices = Literal["input", "both"]  # the CLI's choices
Adapter = Literal["none", "lora"]


@dataclass(frozen=True)
class Training:
    """What trains and at which peak rates (``output_lr`` None: the output rows take ``lr``,
    or do not train)."""

    matrices: Matrices
    lr: float
    output_lr: float | None
    adapter: Adapter


DEFAULT_DISTILL = DistillWeights(lm=1.0, chunk=0.0, hidden=0.0, tau=100.0, layer=-1, piece=1.0)
TEACHER_TRAINING = Training("both", 2.5e-4, 1e-4, "lora")
LM_TRAINING = Training("input", 2e-3, None, "none")
TOOL_TRAINING = Training("both", 2e-3, None, "none")


def training_defaults(
    rows: str,
    teacher: bool,
    *,
    matrices: Matrices | None = None,
    lr: float | None = None,
    output_lr: float | None = None,
    adapter: Adapter | None = None,
) -> Training:
    """The run's matrices, rates and adapter: the given options over the defaults for
    ``rows`` and the objective (``teacher``: distillation from the original model)."""
    base = TOOL_TRAINING if rows == "tool" else TEACHER_TRAINING if teacher else LM_TRAINING
    chosen = matrices or ("both" if output_lr is not None else base.matrices)
    out = output_lr if output_lr is not None else base.output_lr
    return Training(
        chosen,
        base.lr if lr is None else lr,
        out if chosen == "both" else None,
        adapter or base.adapter,
    )


def defaults_help() -> str:
    """The CLI's statement of the defaults (one place, so the help and the code agree)."""
    t, m, tool = TEACHER_TRAINING, LM_TRAINING, TOOL_TRAINING
    return (
        f"with a teacher: {t.matrices} matrices, lr {t.lr:g}, output lr {t.output_lr:g}, "
        f"adapter {t.adapter}; LM loss alone: {m.matrices} rows at {m.lr:g}, adapter "
        f"{m.adapter}; --rows tool: {tool.matrices} at {tool.lr:g}"
    )
