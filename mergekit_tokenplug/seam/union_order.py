"""A reproducible output vocabulary for ``tokenizer.source: union`` when the plugin is active.

Stock ``build_tokenizer`` visits the models in ``referenced_models`` order (a set: it changes
with the hash seed, i.e. from run to run) and each vocabulary in ``get_vocab()`` order (a
hash map), so the ids of tokens the base model lacks, and with them every row of the
vocabulary matrices, change between two runs of one recipe. The rule used instead:

1. the base model (``base_model``, else the first input by path) keeps its ids;
2. the other models are visited in order of their reference string (``path[@revision]``);
3. within a model, tokens are visited by ascending id (regular tokens, then added tokens).
"""

from __future__ import annotations

from typing import Any

from mergekit.tokenizer import build as stock_build
from mergekit.tokenizer.build import BuildTokenizer, TokenizerInfo


class _IdOrdered:
    """A tokenizer view whose vocabulary and added tokens iterate by ascending id."""

    def __init__(self, tokenizer: Any):
        self._tokenizer = tokenizer

    def get_vocab(self) -> dict[str, int]:
        return dict(sorted(self._tokenizer.get_vocab().items(), key=lambda kv: kv[1]))

    @property
    def added_tokens_decoder(self) -> dict[int, Any]:
        return dict(sorted(self._tokenizer.added_tokens_decoder.items()))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tokenizer, name)


def _ordered_union(base_tok: Any, tokenizers: dict, trust_remote_code: bool = False) -> Any:
    models = list(tokenizers)
    order = models[:1] + sorted(models[1:], key=str)  # build_tokenizer puts the base first
    ordered = {m: _IdOrdered(tokenizers[m]) for m in order}
    return _STOCK_UNION(base_tok, ordered, trust_remote_code=trust_remote_code)


_STOCK_UNION = stock_build.build_union_tokenizer


class OrderedBuildTokenizer(BuildTokenizer):
    """Stock ``BuildTokenizer`` with the order rule of this module's docstring."""

    def execute(self, **kwargs: Any) -> TokenizerInfo:
        models = tuple(sorted(self.referenced_models, key=str))
        base = self.base_model or models[0]
        task = self.model_copy(update={"referenced_models": models, "base_model": base})
        stock_build.build_union_tokenizer = _ordered_union
        try:
            return BuildTokenizer.execute(task, **kwargs)
        finally:
            stock_build.build_union_tokenizer = _STOCK_UNION
