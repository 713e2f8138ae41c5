"""The method registry: built-ins in one list, then third-party entry points.

Methods are plain :class:`~mergekit_tokenplug.methods.base.MethodSpec` values that never
import this module (mergekit's ``merge_methods/registry.py`` pattern). Third-party packages
expose a ``MethodSpec`` (or a zero-argument callable returning one) under the entry-point
group ``mergekit_tokenplug.methods``.
"""

from __future__ import annotations

import functools
import logging
from importlib.metadata import entry_points

from mergekit_tokenplug.errors import ConfigError
from mergekit_tokenplug.methods import baselines, cw2v, omp, omp_map, tokenadapt
from mergekit_tokenplug.methods.base import MethodSpec

LOG = logging.getLogger(__name__)
ENTRY_POINT_GROUP = "mergekit_tokenplug.methods"
#: Method used when none is named (``transplant`` and ``approximation:`` without ``method:``):
#: the best on held-out bits per byte (bench/RESULTS.md).
DEFAULT_METHOD = "omp_map"
#: Default when the tokenizer source holds no weights (see ``method_choice``): the best
#: method that needs no donor embeddings on held-out text (Qwen2's tokenizer on
#: Gemma-3-270M: 1.991 mean bits per byte against 2.108 for ``subword_mean``).
TOKENIZER_ONLY_METHOD = "tokenadapt"

BUILTIN_METHODS: list[MethodSpec] = [
    omp.SPEC,
    omp_map.SPEC,
    tokenadapt.TOKENADAPT,
    cw2v.SPEC,
    baselines.MEAN,
    baselines.ZERO,
    baselines.HEWITT,
    baselines.SUBWORD_MEAN,
]


@functools.cache
def all_methods() -> dict[str, MethodSpec]:
    """Every method by name, built-ins first, then entry points (read once per process)."""
    methods = {spec.name: spec for spec in BUILTIN_METHODS}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            obj = ep.load()
            spec = obj() if callable(obj) and not isinstance(obj, MethodSpec) else obj
            if not isinstance(spec, MethodSpec):
                raise TypeError(f"entry point gave {type(spec).__name__}, not MethodSpec")
        except Exception as exc:  # a broken third-party package must not break the rest
            LOG.warning("could not load method entry point %r: %s", ep.name, exc)
            continue
        if spec.name in methods:
            LOG.warning("entry point %s: method %r already registered, skipped", ep.name, spec.name)
            continue
        methods[spec.name] = spec
    return methods


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
