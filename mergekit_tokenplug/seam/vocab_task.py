"""The vocabulary seam: mergekit tasks that align vocabularies and fill missing rows.

``AlignVocabulary`` runs once per merge (every vocabulary tensor depends on the same task, so
mergekit's executor computes it once): it loads each model's tokenizer, aligns the output
vocabulary onto it in canonical form, and decides the output row count.
``ApproximatedVocabulary`` replaces stock ``PermutedVocabulary`` for one weight: it copies
rows each model has and fills the rest with the configured method in that model's own space
(see :mod:`mergekit_tokenplug.fill`).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import transformers
from mergekit.common import ModelReference
from mergekit.graph import Task
from mergekit.io.tasks import GatherTensors
from mergekit.tokenizer.build import BuildTokenizer, TokenizerInfo, get_vocab_size
from mergekit.tokenizer.embed import PermutedVocabulary

from mergekit_tokenplug import registry, report
from mergekit_tokenplug.errors import InputError
from mergekit_tokenplug.fill import (
    SourceSpace,
    TextSupport,
    check_finite,
    drop_rows,
    fill_matrix,
    plan_fill,
    unknown_method,
)
from mergekit_tokenplug.output.manifest import id_ranges
from mergekit_tokenplug.resources.corpus import read_corpus, resolve_corpus, tokenize_corpus
from mergekit_tokenplug.seam.method_resources import method_inputs
from mergekit_tokenplug.seam.schema import ApproximationConfig, ToolTokenSource
from mergekit_tokenplug.seam.tool_counts import TOOL_SOURCE, count_as_tool
from mergekit_tokenplug.seam.tool_rows import tool_token_rows
from mergekit_tokenplug.vocab.align import VocabAlignment, align_vocab
from mergekit_tokenplug.vocab.canonical import BYTE_PIECES
from mergekit_tokenplug.vocab.specials import estimated_by, special_table
from mergekit_tokenplug.vocab.texts import split_texts, token_texts

LOG = logging.getLogger(__name__)
_ROLE_TOKENS = ("bos_token", "eos_token", "unk_token", "pad_token")


@dataclass
class ModelVocab:
    """One model's tokenizer, row count and alignment onto the output vocabulary."""

    name: str
    tokenizer: Any
    rows: int
    alignment: VocabAlignment


@dataclass
class VocabPlan:
    """The output vocabulary and how every model (and the donor) maps onto it."""

    tokenizer: Any
    n_tokens: int  # output ids that are tokens (0..n_tokens-1)
    rows: int  # output rows (>= n_tokens: padding after)
    regular: np.ndarray  # (n_tokens,) bool: regular (non-special, non-added) output tokens
    models: dict[str, ModelVocab]
    donor: ModelVocab | None = None
    _texts: dict[str, TextSupport] = field(default_factory=dict)
    _corpora: dict[tuple[str, ...], list[torch.Tensor]] = field(default_factory=dict)

    def corpus_ids(self, patterns: tuple[str, ...]) -> list[torch.Tensor]:
        """The corpus tokenized by the output tokenizer, read once per merge."""
        if patterns not in self._corpora:
            self._corpora[patterns] = tokenize_corpus(
                self.tokenizer, read_corpus(resolve_corpus(list(patterns)))
            )
        return self._corpora[patterns]

    @functools.cached_property
    def output_texts(self) -> list[str]:
        """Decoded text of every output token, computed once per merge."""
        return token_texts(self.tokenizer, list(range(self.n_tokens)))

    def summary(self) -> dict[str, Any]:
        """Counts for the log, card and manifest."""
        out: dict[str, Any] = {
            "output_tokens": self.n_tokens,
            "output_rows": self.rows,
            "per_model": {k: v.alignment.counts() for k, v in self.models.items()},
        }
        if self.donor is not None:
            out["donor"] = {self.donor.name: self.donor.alignment.counts()}
        return out

    def text_support(self, key: str) -> TextSupport:
        """Tokenizer callables for methods that need texts, built once per model."""
        if key not in self._texts:
            mv = self.models[key]
            model_tok, rows = mv.tokenizer, mv.rows

            def split_base(texts: list[str]) -> list[list[int]]:
                pieces = split_texts(model_tok, texts, running_text=True)
                return [[i for i in ids if i < rows] for ids in pieces]

            self._texts[key] = TextSupport(
                out_texts=lambda ids: [self.output_texts[int(i)] for i in ids],
                split_base=split_base,
                # specials get "" (no text): they are never a method's text neighbours
                base_vocab_texts=functools.cache(
                    lambda: token_texts(model_tok, list(range(rows)), specials=False)
                ),
            )
        return self._texts[key]


def model_key(model: ModelReference) -> str:
    return str(model)


def config_rows(model: ModelReference, trust_remote_code: bool) -> int | None:
    """The config's vocab_size, or None for a tokenizer-only directory (no model config)."""
    path = model.model.path
    if os.path.isdir(path) and not os.path.exists(os.path.join(path, "config.json")):
        return None
    rows = get_vocab_size(model.model, trust_remote_code=trust_remote_code)
    return int(rows) if rows else None


class AlignVocabulary(Task[VocabPlan]):
    """Align the output tokenizer onto every input model (and the donor) once per merge."""

    tokenizer_task: BuildTokenizer
    models: tuple[ModelReference, ...]
    donor: ModelReference | None = None
    reference_rows_model: ModelReference | None = None  # whose config vocab_size sets the rows
    cut_to_reference: bool = False  # its tokenizer is the output's: ids checked against its rows
    pad_to_multiple_of: int | None = None
    trust_remote_code: bool = False
    recipe_tokens: tuple[str, ...] = ()  # tokenizer.tokens entries (rows added for them)
    byte_pieces: str = "copy"  # ApproximationConfig.byte_tokens

    def arguments(self) -> dict[str, Task]:
        return {"tokenizer_info": self.tokenizer_task}

    def execute(self, tokenizer_info: TokenizerInfo) -> VocabPlan:
        fields = {k: getattr(self, k) for k in type(self).model_fields if k != "tokenizer_task"}
        plan = make_vocab_plan(tokenizer_info.tokenizer, **fields)
        report.set_vocab(plan.summary())
        for name, mv in plan.models.items():
            LOG.info("vocabulary %s: %s", name, mv.alignment.counts())
        return plan


def check_source_ids(
    out_tok: Any, rows: int, source: ModelReference, recipe_tokens: tuple[str, ...]
) -> None:
    """Every id of the source tokenizer must have a row in the source model.

    Ids past the config's ``vocab_size`` (a tokenizer that does not belong to the model, or a
    special token missing from the vocabulary, which transformers appends) would be written
    into the output tokenizer with no row behind them. Tokens the recipe adds get rows.
    """
    vocab = out_tok.get_vocab()
    regular = len(vocab) - len(out_tok.added_tokens_decoder)
    if regular <= 0:
        raise InputError(
            f"the tokenizer of {source.model.path} has an empty vocabulary; expected the tokens its {rows} embedding rows were trained for",
            where="tokenizer.source",
        )
    past = sorted((i, t) for t, i in vocab.items() if i >= rows and t not in recipe_tokens)
    if past:
        token_id, token = past[0]
        roles = [r for r in _ROLE_TOKENS if getattr(out_tok, r, None) == token]
        why = (
            f"its {roles[0]} {token!r} is not in its vocabulary (transformers appends it as id {token_id})"
            if roles
            else f"its tokenizer has token {token!r} at id {token_id}"
            + (f" and {len(past) - 1} more" if len(past) > 1 else "")
        )
        raise InputError(
            f"{source.model.path}: {why}, past the {rows} rows its config.json declares (vocab_size); expected every token id below vocab_size",
            where="tokenizer.source",
        )


def make_vocab_plan(
    out_tok: Any,
    models: tuple[ModelReference, ...] | list[ModelReference],
    *,
    donor: ModelReference | None = None,
    reference_rows_model: ModelReference | None = None,
    cut_to_reference: bool = False,
    pad_to_multiple_of: int | None = None,
    trust_remote_code: bool = False,
    recipe_tokens: tuple[str, ...] = (),
    byte_pieces: str = "copy",
) -> VocabPlan:
    """Decide the output rows and align every model (and the donor) onto the output vocabulary.

    Also used without running a merge (``plan``, ``recipes validate``): it reads tokenizers and
    configs only, never weights.
    """
    out_vocab = out_tok.get_vocab()
    if not out_vocab:
        raise InputError(
            "the output tokenizer has no tokens; expected a vocabulary", where="tokenizer.source"
        )
    n_tokens = max(out_vocab.values()) + 1
    rows = n_tokens
    if reference_rows_model is not None:
        ref_rows = config_rows(reference_rows_model, trust_remote_code)
        if ref_rows:
            if cut_to_reference:
                check_source_ids(out_tok, ref_rows, reference_rows_model, recipe_tokens)
            rows = max(n_tokens, ref_rows)
    if pad_to_multiple_of:
        rows += -rows % pad_to_multiple_of  # up to the next multiple

    def vocab_for(model: ModelReference, where: str) -> ModelVocab:
        try:
            tok = transformers.AutoTokenizer.from_pretrained(
                model.model.path,
                revision=model.model.revision,
                trust_remote_code=trust_remote_code,
                use_fast=True,
            )
        except Exception as exc:
            raise InputError(
                f"cannot load a tokenizer from {model.model.path} ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); expected a directory with tokenizer.json or tokenizer.model",
                where=where,
            ) from None
        model_rows = config_rows(model, trust_remote_code) or len(tok)
        alignment = align_vocab(
            out_tok, tok, model_rows=model_rows, out_rows=n_tokens, byte_pieces=byte_pieces
        )
        return ModelVocab(model_key(model), tok, model_rows, alignment)

    # regular: ordinary vocabulary tokens (not special/added, not holes)
    regular = np.zeros(n_tokens, dtype=bool)
    regular[[i for i in out_vocab.values() if i < n_tokens]] = True
    regular[[i for i in out_tok.added_tokens_decoder if i < n_tokens]] = False
    return VocabPlan(
        tokenizer=out_tok,
        n_tokens=n_tokens,
        rows=rows,
        regular=regular,
        models={model_key(m): vocab_for(m, f"models: {m.model.path}") for m in models},
        donor=vocab_for(donor, "tokenizer.source") if donor is not None else None,
    )


class ApproximatedVocabulary(PermutedVocabulary):
    """``PermutedVocabulary`` whose missing rows are estimated in each model's own space."""

    align_task: AlignVocabulary
    donor_tensors: GatherTensors | None = None
    approximation: str  # ApproximationConfig.key()
    role: str  # "input" | "output"
    weight_name: str
    seed: int = 0
    show_progress: bool = True

    def arguments(self) -> dict[str, Task]:
        args: dict[str, Task] = {
            "tokenizer_info": self.tokenizer_task,
            "tensors": self.gather_tensors,
            "plan": self.align_task,
        }
        if self.donor_tensors is not None:
            args["donor"] = self.donor_tensors
        return args

    def uses_accelerator(self) -> bool:
        return True

    def execute(  # type: ignore[override]
        self,
        tokenizer_info: TokenizerInfo,
        tensors: dict[ModelReference, torch.Tensor],
        plan: VocabPlan,
        donor: dict[ModelReference, torch.Tensor] | None = None,
    ) -> dict[ModelReference, torch.Tensor]:
        if not tensors:
            return {}
        approx = ApproximationConfig.from_key(self.approximation)
        params = approx.parsed_params()
        spec = registry.get(approx.method)
        views = {m: t.movedim(self.vocabulary_axis, 0) for m, t in tensors.items()}
        dtype = functools.reduce(torch.promote_types, (t.dtype for t in views.values()))
        spaces = {
            m: self._space(plan, plan.models[model_key(m)], view, m.model.path)
            for m, view in views.items()
        }
        sources = [spaces[m] for m in source_order(list(views), self.base_model)]
        for d_ref, d_tensor in (donor or {}).items():  # one donor
            view = d_tensor.movedim(self.vocabulary_axis, 0)
            sources.append(self._space(plan, plan.donor, view, d_ref.model.path, donor=True))

        forced, explicit, tools = token_overrides(
            self.tokens, plan.tokenizer.get_vocab(), plan.n_tokens
        )
        permutations = tokenizer_info.permutations
        result = {}
        for m, view in views.items():
            mv = plan.models[model_key(m)]
            texts = plan.text_support(mv.name)
            inputs = method_inputs(
                spec,
                params,
                model=m,
                plan=plan,
                role=self.role,
                device=view.device,
                show_progress=self.show_progress,
            )
            filled, rep = fill_matrix(
                model=mv.name,
                role=self.role,
                matrix=view,
                src_ids=mv.alignment.src_ids,
                out_rows=plan.rows,
                sources=[s for s in sources if s is not spaces[m]],
                method=approx.method,
                params=params,
                anchor_mask=plan.regular,
                texts=dataclasses.replace(texts, inputs={**texts.inputs, **inputs}),
                seed=self.seed if approx.seed is None else approx.seed,
                force_estimate=forced,
                show_progress=self.show_progress,
            )
            filled = filled.to(dtype)
            for token, token_id in explicit.items():  # stock sources: stock rows
                if (forced is not None and forced[token_id]) or mv.alignment.src_ids[token_id] < 0:
                    filled[token_id] = self.compute_default_embedding(
                        tokenizer_info, views, permutations, token, token_id, self.tokens[token]
                    ).to(dtype)
            if tools:
                ids = torch.tensor([i for i, _ in tools.values()], device=filled.device)
                rows = tool_token_rows(
                    model=m,
                    tokenizer=mv.tokenizer,
                    matrix=view,
                    role=self.role,
                    tools=[src for _, src in tools.values()],
                    split_base=texts.split_base,
                )
                filled[ids] = rows.to(device=filled.device, dtype=dtype)
                report.add_tool_rows(
                    mv.name, self.weight_name, list(tools), ids.tolist(), rows.cpu()
                )
                count_as_tool(rep.by_method, rep.by_source, len(tools), unknown_method(spec))
                rep.fallbacks = drop_rows(rep.fallbacks, ids.tolist())
                rep.thin = drop_rows(rep.thin, ids.tolist())
            report.set_specials(
                mv.name,
                self._special_table(
                    plan, mv, spec, [s for s in sources if s is not spaces[m]], forced, tools
                ),
            )
            row_ids = _row_ids(mv.alignment, forced, mv.tokenizer)
            fill = {"weight": self.weight_name, "method": approx.method, "row_ids": row_ids}
            report.add_fill({**rep.as_dict(), **fill})
            result[m] = filled.movedim(0, self.vocabulary_axis)
        return result

    @staticmethod
    def _special_table(
        plan: VocabPlan, mv: ModelVocab, spec: Any, sources: list, forced: Any, tools: dict
    ) -> dict[str, Any]:
        """Where each special/added token's row comes from (the groups ``fill_matrix`` used)."""
        _, _, groups = plan_fill(
            mv.alignment.src_ids, sources, spec, anchor_mask=plan.regular, force_estimate=forced
        )
        by = estimated_by(groups) | {i: TOOL_SOURCE for i, _ in tools.values()}
        return special_table(plan.tokenizer, mv.alignment, mv.tokenizer, by)

    def _space(
        self, plan: VocabPlan, mv: ModelVocab, view: torch.Tensor, path: str, donor: bool = False
    ) -> SourceSpace:
        """One model's (or the donor's) rows, checked against its config and tokenizer."""
        rows = view.shape[0]
        where = f"{'tokenizer.source' if donor else 'models'}: {path} ({self.weight_name})"
        if rows != mv.rows:
            raise InputError(
                f"has {rows} rows but the model's config declares vocab_size {mv.rows}; expected them to agree",
                where=where,
            )
        regular = len(mv.tokenizer.get_vocab()) - len(mv.tokenizer.added_tokens_decoder)
        if rows < regular:
            raise InputError(
                f"has {rows} rows but its tokenizer has {regular} regular tokens; expected at least one row per token",
                where=where,
            )
        check_finite(
            view, f"{path}: " + (f"donor {self.role} embeddings" if donor else self.weight_name)
        )
        name = f"donor {path}" if donor else mv.name
        return SourceSpace(name, view, mv.alignment.src_ids, anchor_mask=plan.regular)


def token_overrides(
    tokens: Any, out_vocab: dict[str, int], n_tokens: int
) -> tuple[np.ndarray | None, dict[str, int], dict[str, tuple[int, ToolTokenSource]]]:
    """Tokens listed under ``tokenizer.tokens``: forced ones, stock explicit sources, tool tokens."""
    forced = np.zeros(n_tokens, dtype=bool)
    explicit: dict[str, int] = {}
    tools: dict[str, tuple[int, ToolTokenSource]] = {}
    # ImmutableMap iterates in hash order (salted per process): sort for stable output files.
    for token, cfg in sorted((tokens or {}).items(), key=lambda kv: kv[0]):
        token_id = out_vocab.get(token)
        if token_id is None or token_id >= n_tokens:
            continue
        forced[token_id] = bool(getattr(cfg, "force", False))
        source = getattr(cfg, "source", None)
        if isinstance(source, ToolTokenSource):
            tools[token] = (token_id, source)
        elif source is not None:
            explicit[token] = token_id
    return (forced if forced.any() else None), explicit, tools


def source_order(models: list[ModelReference], base: ModelReference | None) -> list[ModelReference]:
    """Input models in the order their spaces are tried for a missing row: the base first."""
    return sorted(models, key=lambda m: (m != base, models.index(m)))


def _row_ids(
    alignment: VocabAlignment, forced: np.ndarray | None, model_tokenizer: Any
) -> dict[str, list[list[int]]]:
    """Output ids (as :func:`id_ranges` runs) whose rows were estimated, and those copied
    from one of the model's ``<0xNN>`` byte-fallback pieces (rows the model barely trained,
    now standing for a whole token): what ``heal`` trains."""
    copied = alignment.src_ids >= 0
    if forced is not None:
        copied &= ~forced
    vocab = model_tokenizer.get_vocab()
    byte_rows = [vocab[t] for t in BYTE_PIECES if t in vocab]
    from_bytes = copied & np.isin(alignment.src_ids, np.asarray(byte_rows, dtype=np.int64))
    return {
        "estimated": id_ranges(np.flatnonzero(~copied)),
        "byte_fallback": id_ranges(np.flatnonzero(from_bytes)),
    }
