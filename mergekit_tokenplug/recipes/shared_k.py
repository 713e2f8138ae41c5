"""OMP's ``k`` against the shared tokens, decided from the tokenizers alone.

``k`` larger than the tokens a model shares with a source space cannot be coded; finding out
inside the merge costs the load of every weight first. One check, used by ``recipes validate
--inputs`` (and so by ``mergekit-yaml``) and by ``transplant`` before anything is read.
"""

from __future__ import annotations

from typing import Any


def k_problems(config: Any, method: str, k: int, trust_remote_code: bool = False) -> list[str]:
    """One-line problems (empty: ``k`` fits) of a validated recipe whose method takes ``k``.

    Raises TokenplugError when the vocabularies cannot be aligned."""
    # lazy: loads transformers and mergekit's planner
    from mergekit_tokenplug.recipes.plan import recipe_vocab

    rv = recipe_vocab(config, trust_remote_code)
    problems, limits = [], []
    for fill in rv.fills.values():
        for g in fill.groups:
            if g.anchors is None or g.method != method:
                continue
            if g.anchors == 0:
                problems.append(
                    f"model {fill.model} shares no regular tokens with {g.source}; {method!r} "
                    f"cannot estimate its {g.count} missing tokens"
                )
            elif k > g.anchors:
                limits.append((g.anchors, fill.model, g.source))
    if limits:
        n, model, source = min(limits)
        problems.append(
            f"k must be <= {n} shared tokens (got {k}; model {model} and {source} share {n} "
            "regular tokens)"
        )
    return problems
