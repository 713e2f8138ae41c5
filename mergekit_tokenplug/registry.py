"""The method registry: the plugin's own extension point.

A method is a :class:`MethodSpec` (name, pydantic parameter model, what it needs) plus a
pure kernel ``estimate(problem, params) -> Tensor``. Built-in methods register themselves
when :mod:`mergekit_tokenplug.methods` is imported; third-party packages expose a
``MethodSpec`` (or a zero-argument callable returning one) under the entry-point group
``mergekit_tokenplug.methods``.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

import pydantic

from mergekit_tokenplug.errors import ConfigError

if TYPE_CHECKING:
    import torch

    from mergekit_tokenplug.methods.base import EstimationProblem

LOG = logging.getLogger(__name__)
ENTRY_POINT_GROUP = "mergekit_tokenplug.methods"
#: Method used when none is named (``transplant`` and ``approximation:`` without ``method:``):
#: the best on held-out bits per byte (bench/RESULTS.md).
DEFAULT_METHOD = "omp_map"


class Need(str, enum.Enum):
    """Inputs a method requires beyond the model's own matrix."""

    DONOR_EMBEDDINGS = "donor_embeddings"  # rows of the target tokens in another space
    BASE_TOKENIZER = "base_tokenizer"  # target token texts split by the base tokenizer
    BASE_VOCAB_TEXTS = "base_vocab_texts"  # decoded text of every base row
    CORPUS = "corpus"  # text files (given as a parameter)
    MODEL_FORWARD = "model_forward"  # the frozen base model (tool-token prior)


class MethodParams(pydantic.BaseModel):
    """Base class of every method's parameter model: unknown keys are errors."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)


EstimateFn = Callable[["EstimationProblem", Any], "torch.Tensor"]


@dataclass(frozen=True)
class MethodSpec:
    """A registered approximation method."""

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

    def parse_params(self, raw: dict[str, Any], where: str = "tokenizer.approximation") -> Any:
        """Validate raw parameters, raising a one-line ConfigError that lists valid keys."""
        try:
            return self.params.model_validate(raw)
        except pydantic.ValidationError as exc:
            raise ConfigError(describe_validation_error(exc, self), where=where) from None


_REGISTRY: dict[str, MethodSpec] = {}
_entry_points_loaded = False


def register(spec: MethodSpec, *, replace: bool = False) -> MethodSpec:
    """Add a method to the registry (refuses silent shadowing of an existing name)."""
    if spec.name in _REGISTRY and not replace and _REGISTRY[spec.name] is not spec:
        raise ValueError(f"method {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def _load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            obj = ep.load()
            spec = obj() if callable(obj) and not isinstance(obj, MethodSpec) else obj
            if not isinstance(spec, MethodSpec):
                raise TypeError(f"entry point gave {type(spec).__name__}, not MethodSpec")
            if spec.name in _REGISTRY:
                LOG.warning(
                    "entry point %s: method %r already registered, skipped", ep.name, spec.name
                )
                continue
            register(spec)
        except Exception as exc:  # a broken third-party package must not break the rest
            LOG.warning("could not load method entry point %r: %s", ep.name, exc)


def _ensure_loaded() -> None:
    import mergekit_tokenplug.methods  # noqa: F401  (registers built-ins)

    _load_entry_points()


def all_methods() -> dict[str, MethodSpec]:
    """Every registered method, built-ins first, then entry points."""
    _ensure_loaded()
    return dict(_REGISTRY)


def get(name: str) -> MethodSpec:
    """Look a method up by name; unknown names list the valid ones."""
    methods = all_methods()
    if name not in methods:
        valid = ", ".join(sorted(methods))
        raise ConfigError(
            f"unknown method {name!r}; expected one of: {valid}",
            where="tokenizer.approximation.method",
        )
    return methods[name]


def describe_validation_error(exc: pydantic.ValidationError, spec: MethodSpec) -> str:
    """Turn pydantic's multi-line report into one line naming key and expectation."""
    parts = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(parameters)"
        if err["type"] == "extra_forbidden":
            valid = ", ".join(sorted(k for k in spec.params.model_fields)) or "(none)"
            parts.append(f"{key}: unknown parameter for method {spec.name!r}; valid: {valid}")
        else:
            parts.append(f"{key}: {err['msg']} (got {err.get('input')!r})")
    return "; ".join(parts)
