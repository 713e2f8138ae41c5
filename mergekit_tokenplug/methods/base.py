"""The plugin API: everything a method (built-in or third-party) imports.

A method is a :class:`MethodSpec`: a name, a pydantic parameter model (:class:`MethodParams`),
the inputs it needs (:class:`Need`) and a pure kernel ``estimate(problem, params) -> Tensor``
(no files, no tokenizer objects), or an :class:`Estimate` naming the rows it could not
really estimate. The vocabulary seam builds an :class:`EstimationProblem`
holding what the ``needs`` ask for and writes the returned rows into the model's matrix.

Which ``Need`` fills which :class:`EstimationProblem` field (others stay ``None``):

=====================  ===================================================================
need                   fields
=====================  ===================================================================
(always)               ``base``, ``anchor_ids``, ``n_targets``, ``role``, ``seed``, ``label``,
                       ``out_to_base`` (which output tokens the model has, and where),
                       ``out_to_target`` (which output ids are the targets)
``DONOR_EMBEDDINGS``   ``donor``, ``donor_anchor_ids``, ``donor_target_ids`` (rows without a
                       source space go to the spec's ``fallback`` method instead)
any text need below    ``target_texts``, ``split_texts``
``BASE_TOKENIZER``     ``target_pieces``
``BASE_VOCAB_TEXTS``   ``base_vocab_texts``
``CORPUS``             ``corpus_ids``, ``context_matrix``
``MODEL_FORWARD``      ``model_forward`` (tool tokens)
(param ``embedder``)   ``embed_texts`` when the parameters name an embedder directory
=====================  ===================================================================
"""

from __future__ import annotations

import enum
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pydantic
import torch

from mergekit_tokenplug.errors import ConfigError

FP32 = 4


class Need(str, enum.Enum):
    """Inputs a method requires beyond the model's own matrix."""

    DONOR_EMBEDDINGS = "donor_embeddings"  # rows of the target tokens in another space
    BASE_TOKENIZER = "base_tokenizer"  # target token texts split by the base tokenizer
    BASE_VOCAB_TEXTS = "base_vocab_texts"  # decoded text of every base row
    CORPUS = "corpus"  # text files (given as a parameter)
    MODEL_FORWARD = "model_forward"  # the frozen base model (tool-token prior)


TEXT_NEEDS = frozenset(
    {Need.BASE_TOKENIZER, Need.BASE_VOCAB_TEXTS, Need.CORPUS, Need.MODEL_FORWARD}
)


class MethodParams(pydantic.BaseModel):
    """Base class of every method's parameter model: unknown keys are errors; a single value
    for a list parameter is a one-element list (``--param corpus=notes.txt``, ``corpus: a.txt``);
    a boolean is refused where the parameter is not itself a bool (YAML's ``k: true``)."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    @pydantic.field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, value: Any, info: pydantic.ValidationInfo) -> Any:
        if isinstance(value, bool) and info.field_name is not None:
            if bool not in _leaf_types(cls.model_fields[info.field_name].annotation):
                raise ValueError("expected a number or text, not a boolean")
        return value

    @pydantic.model_validator(mode="before")
    @classmethod
    def _single_as_list(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        out = dict(data)
        for name, info in cls.model_fields.items():
            value = out.get(name)
            if _is_list_type(info.annotation) and isinstance(value, str | int | float):
                out[name] = [value]
        return out


def _leaf_types(annotation: Any) -> set[Any]:
    """Every type an annotation admits (through Optional/Union/list arguments)."""
    args = typing.get_args(annotation)
    if not args:
        return {annotation}
    return set().union(*(_leaf_types(a) for a in args))


def _is_list_type(annotation: Any) -> bool:
    """``list[...]``, also inside ``Optional``/unions."""
    origin = typing.get_origin(annotation)
    if origin in (list, tuple):
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_is_list_type(a) for a in typing.get_args(annotation))
    return False


@dataclass
class EstimationProblem:
    """Rows to estimate for one matrix (input embeddings or output head) of one model.

    ``base`` is the model's own matrix: estimates must live in its space. Anchors are tokens
    the model shares with the space the targets are known in (``donor``); for a one-model
    transplant that is the donor model, for a union merge another input model.
    """

    base: torch.Tensor  # (V_m, d) the model's own rows, float32, on the compute device
    anchor_ids: torch.Tensor  # (N,) long: rows of `base` whose tokens are shared
    n_targets: int  # T, the number of rows to estimate
    donor: torch.Tensor | None = None  # (V_s, d_s) matrix of the space the targets are known in
    donor_anchor_ids: torch.Tensor | None = None  # (N,) rows of `donor` for the same anchors
    donor_target_ids: torch.Tensor | None = None  # (T,) rows of `donor` holding the targets
    target_texts: list[str] | None = None  # decoded text of each target token
    target_pieces: list[list[int]] | None = (
        None  # ids (rows of `base`) of each text split by the base tokenizer
    )
    base_vocab_texts: list[str] | None = None  # decoded text of every row of `base`
    split_texts: Callable[[list[str]], list[list[int]]] | None = None  # texts -> rows of `base`
    embed_texts: Callable[[list[str]], torch.Tensor] | None = None  # auxiliary text embedder
    corpus_ids: list[torch.Tensor] | None = None  # the corpus in output-vocabulary ids
    out_to_base: torch.Tensor | None = None  # (V_out,) row of `base` per output id, -1 where absent
    out_to_target: torch.Tensor | None = None  # (V_out,) target index per output id, -1 otherwise
    context_matrix: torch.Tensor | None = None  # the model's other vocabulary matrix (float32)
    model_forward: Callable[[list[str]], torch.Tensor] | None = (
        None  # texts -> pooled hidden states
    )
    role: str = "input"  # "input" (embeddings) or "output" (lm_head)
    seed: int = 0
    label: str = ""  # shown on progress bars, e.g. "model-a lm_head"
    show_progress: bool = True

    @property
    def device(self) -> torch.device:
        return self.base.device

    def generator(self, offset: int = 0) -> torch.Generator:
        """A generator seeded from the problem's seed: same inputs + seed -> same rows."""
        gen = torch.Generator(device=self.base.device)
        gen.manual_seed((int(self.seed) * 1_000_003 + offset) % (2**63 - 1))
        return gen

    def mean_row(self) -> torch.Tensor:
        """Mean of the model's rows: the documented fallback estimate."""
        return self.base.float().mean(dim=0)


@dataclass(frozen=True)
class CostQuery:
    """The size of one group of rows, for a method's cost estimate (``plan``)."""

    params: Any  # the method's parsed parameters
    targets: int  # rows to estimate
    anchors: int  # shared tokens with the source space (0 without one)
    dim_source: int  # width of the source space's rows
    dim_model: int  # width of the model's rows
    model_rows: int  # rows of the model's matrix
    budget: int  # working-memory budget of the device, bytes


def default_cost(q: CostQuery) -> tuple[int, float | None]:
    """The output rows only; flops unknown."""
    return q.targets * q.dim_model * FP32, None


@dataclass
class Estimate:
    """A kernel's rows plus the targets it could not really estimate, by reason.

    A kernel may return plain rows (every row is its estimate) or an ``Estimate``: rows in
    ``fallback[reason]`` (a ``(T,)`` bool mask) hold the mean row, not the method's estimate
    (a CW2V token absent from the corpus), and are reported as fallbacks; rows in
    ``thin[reason]`` are estimates from little evidence (seen a few times), reported as a
    warning.
    """

    rows: torch.Tensor
    fallback: dict[str, torch.Tensor] = field(default_factory=dict)
    thin: dict[str, torch.Tensor] = field(default_factory=dict)


def rows_of(result: torch.Tensor | Estimate) -> torch.Tensor:
    """The rows of a kernel's result, whichever form it returned."""
    return result.rows if isinstance(result, Estimate) else result


EstimateFn = Callable[[EstimationProblem, Any], "torch.Tensor | Estimate"]
CostFn = Callable[[CostQuery], tuple[int, float | None]]


@dataclass(frozen=True)
class MethodSpec:
    """An approximation method."""

    name: str
    params: type[MethodParams]
    estimate: EstimateFn
    summary: str
    needs: frozenset[Need] = field(default_factory=frozenset)
    # Method used for rows whose needs cannot be met (e.g. OMP for a token no model has).
    fallback: str | None = "mean"
    # Rows depend only on their own target (and a per-chunk seed): the seam may compute them
    # in fixed chunks spread over processes. False for methods that fit all rows jointly.
    shardable: bool = True
    # (working bytes, flops or None) of one group of rows, shown by ``plan``.
    cost: CostFn = default_cost

    def parse_params(self, raw: dict[str, Any], where: str = "tokenizer.approximation") -> Any:
        """Validate raw parameters, raising a one-line ConfigError that lists valid keys."""
        try:
            return self.params.model_validate(raw)
        except pydantic.ValidationError as exc:
            raise ConfigError(describe_validation_error(exc, self), where=where) from None


def param_error_message(spec: MethodSpec, err: Any) -> str:
    """One pydantic error of a method's parameters, as ``recipes validate`` and the run say it."""
    fields = spec.params.model_fields
    if err["type"] == "extra_forbidden":
        valid = ", ".join(sorted(fields)) or "(none)"
        return f"unknown parameter for method {spec.name!r}; valid: {valid}"
    if err["type"] == "missing":
        name = str(err["loc"][0]) if err["loc"] else ""
        desc = fields[name].description if name in fields else None
        return f"required by method {spec.name!r}" + (f" ({desc})" if desc else "")
    return f"{err['msg']} (got {short_repr(err.get('input'))})"


def short_repr(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def describe_validation_error(exc: pydantic.ValidationError, spec: MethodSpec) -> str:
    """pydantic's multi-line report as one line: ``key: message; key: message``."""
    parts = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(parameters)"
        parts.append(f"{key}: {param_error_message(spec, err)}")
    return "; ".join(parts)
