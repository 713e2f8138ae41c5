"""Dry-run plans: what a recipe would do to every vocabulary matrix, without loading weights.

A plan reads tokenizers, configs and safetensors *headers* only. It aligns the vocabularies
with the same code the merge runs (:func:`make_vocab_plan`), then replays the seam's decisions
(which rows are copied, which source space estimates each missing row, which fall back) so
its counts are the ones the run will report, and adds rough memory/flop figures so a user can
pick a device and batch size before a long run.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import struct
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mergekit_tokenplug import registry, settings
from mergekit_tokenplug.compute.batching import working_memory_budget
from mergekit_tokenplug.errors import InputError
from mergekit_tokenplug.fill import SourceSpace, plan_fill
from mergekit_tokenplug.methods.base import FP32, CostQuery, Need
from mergekit_tokenplug.seam.chat import chat_plan
from mergekit_tokenplug.seam.planner import plugin_tokens, tokenizer_task
from mergekit_tokenplug.seam.roles import align_settings, vocab_weights
from mergekit_tokenplug.seam.schema import uses_plugin
from mergekit_tokenplug.seam.tied import untie_message, untied_inputs
from mergekit_tokenplug.seam.tool_counts import TOOL_METHOD, TOOL_SOURCE
from mergekit_tokenplug.seam.vocab_task import (
    make_vocab_plan,
    model_key,
    source_order,
    token_overrides,
)
from mergekit_tokenplug.vocab.specials import estimated_by, special_table


@dataclass
class GroupCount:
    """Missing rows of one model estimated together: one method, one source space."""

    method: str
    source: str | None  # the space the rows are known in (None: the model's own space)
    count: int
    anchors: int | None = None  # shared regular tokens with that space (donor methods)


@dataclass
class ModelFill:
    """How one model's vocabulary matrices are rebuilt (same counts for every matrix)."""

    model: str
    rows: int  # the model's own rows (config vocab_size)
    exact: int
    canonical: int
    special: int
    copied: int
    estimated: int
    padded: int
    holes: int
    forced: int
    groups: list[GroupCount] = field(default_factory=list)
    specials: dict[str, Any] = field(default_factory=dict)  # vocab.specials.special_table

    def by_method(self) -> dict[str, int]:
        return _totals((g.method, g.count) for g in self.groups)

    def by_source(self) -> dict[str, int]:
        return _totals((g.source or "(none)", g.count) for g in self.groups)


def _totals(pairs: Iterable[tuple[str, int]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for key, count in pairs:
        out[key] = out.get(key, 0) + count
    return out


@dataclass
class RecipeVocab:
    """A validated recipe's output vocabulary and every model's fill, before any weight loads."""

    config: Any
    vocab: Any  # VocabPlan
    inputs: list[Any]  # ModelReference, in the order the merge gathers them
    fills: dict[str, ModelFill]
    method: str
    params: Any


def recipe_vocab(config: Any, trust_remote_code: bool = False) -> RecipeVocab:
    """Align a plugin recipe's vocabularies and plan every model's fill as the run does."""
    # the output tokenizer, built by the run's task (its progress bar over the permutation
    # tables is not part of a plan's output)
    task = tokenizer_task(config, trust_remote_code)
    align = align_settings(config, plugin_tokens(task))
    with contextlib.redirect_stderr(io.StringIO()):
        out_tok = task.execute().tokenizer
    vocab = make_vocab_plan(
        out_tok, tuple(config.referenced_models()), trust_remote_code=trust_remote_code, **align
    )
    approx = config.tokenizer.approximation
    spec = registry.get(approx.method)
    forced, _, tools = token_overrides(config.tokenizer.tokens, out_tok.get_vocab(), vocab.n_tokens)
    tool_mask = np.zeros(vocab.n_tokens, dtype=bool)
    tool_mask[[token_id for token_id, _ in tools.values()]] = True
    # input models in the order mergekit gathers their tensors (models, else first slice)
    if config.models:
        inputs = [m.model for m in config.models]
    elif config.slices:
        inputs = [s.model for s in config.slices[0].sources]
    else:
        inputs = list(config.referenced_models())
    spaces = {
        key: SourceSpace(key, None, vocab.models[key].alignment.src_ids, vocab.regular)
        for key in map(model_key, source_order(inputs, config.base_model))
    }
    donor = align["donor"]
    if donor is not None and vocab.donor is not None:
        name = f"donor {donor.model.path}"
        spaces[name] = SourceSpace(name, None, vocab.donor.alignment.src_ids, vocab.regular)

    fills: dict[str, ModelFill] = {}
    for key in map(model_key, inputs):
        mv = vocab.models[key]
        src = mv.alignment.src_ids
        sources = [space for name, space in spaces.items() if name != key]
        have, missing, groups = plan_fill(
            src, sources, spec, anchor_mask=vocab.regular, force_estimate=forced
        )
        counts = [
            GroupCount(g.method, g.source.name if g.source else None, len(g.out_ids), g.anchors)
            for g in groups
        ]
        n_tools = int((tool_mask & ~have[: vocab.n_tokens]).sum())
        if n_tools:  # computed like tokens no space knows, then replaced by the prior
            next(g for g in counts if g.source is None).count -= n_tools
            counts = [g for g in counts if g.count > 0]
            counts.append(GroupCount(TOOL_METHOD, TOOL_SOURCE, n_tools))
        by = estimated_by(groups) | {i: TOOL_SOURCE for i, _ in tools.values()}
        matches = mv.alignment.counts()
        fills[key] = ModelFill(
            model=key,
            rows=mv.rows,
            exact=matches["exact"],
            canonical=matches["canonical"],
            special=matches["special"],
            copied=int(have.sum()),
            estimated=int(missing.size),
            padded=vocab.rows - vocab.n_tokens,
            holes=matches["holes"],
            forced=0 if forced is None else int((forced & (src >= 0)).sum()),
            groups=counts,
            specials=special_table(out_tok, mv.alignment, mv.tokenizer, by),
        )
    return RecipeVocab(config, vocab, inputs, fills, approx.method, approx.parsed_params())


def corpus_coverage(rv: RecipeVocab) -> list[str]:
    """For a method that learns from a corpus: per model, the tokens it must estimate that
    the corpus never shows (they get the mean row, a fallback) and those it shows fewer than
    ``warn_below`` times (thin estimates). Tokenizes the corpus; reads no weight."""
    corpus = getattr(rv.params, "corpus", None)
    if Need.CORPUS not in registry.get(rv.method).needs or not corpus:
        return []
    seqs = rv.vocab.corpus_ids(tuple(corpus))
    flat = np.concatenate([np.asarray(s).reshape(-1) for s in seqs] or [np.zeros(0, np.int64)])
    counts = np.bincount(
        flat[(flat >= 0) & (flat < rv.vocab.n_tokens)], minlength=rv.vocab.n_tokens
    )
    _, _, tools = token_overrides(
        rv.config.tokenizer.tokens, rv.vocab.tokenizer.get_vocab(), rv.vocab.n_tokens
    )
    tool_ids = {token_id for token_id, _ in tools.values()}
    below = int(getattr(rv.params, "warn_below", 0))
    lines = []
    for key, mv in rv.vocab.models.items():
        ids = [i for i in mv.alignment.missing_ids().tolist() if i not in tool_ids]
        absent = [i for i in ids if counts[i] == 0]
        rare = [i for i in ids if 0 < counts[i] < below]
        for found, what in (
            (absent, f"never occur in the corpus, so {rv.method} gives them the mean row"),
            (rare, f"occur fewer than {below} times in the corpus (thin {rv.method} estimates)"),
        ):
            if found:
                shown = ", ".join(repr(rv.vocab.output_texts[i]) for i in found[:10])
                more = f" and {len(found) - 10} more" if len(found) > 10 else ""
                lines.append(
                    f"model {key}: {len(found)} of the {len(ids)} tokens it lacks {what}: {shown}{more}"
                )
    return lines


# ---------------------------------------------------------------- tensor shapes (headers only)


def safetensors_shapes(model_dir: str | Path) -> dict[str, tuple[list[int], str]]:
    """name -> (shape, dtype) of every tensor, read from the safetensors headers."""
    out: dict[str, tuple[list[int], str]] = {}
    for path in sorted(Path(model_dir).glob("*.safetensors")):
        with open(path, "rb") as fh:
            (size,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(size))
        for name, info in header.items():
            if name != "__metadata__":
                out[name] = (list(info["shape"]), str(info["dtype"]))
    return out


def _matrix_shape(
    model: Any, weights: list[Any], shapes: dict, fallback: Any, trust_remote_code: bool
) -> tuple[int, int]:
    """(rows, width) of the first of ``weights`` in the safetensors headers ``shapes``; without
    one there, ``fallback.rows`` and the hidden size in the model's config (0 if it has none)."""
    for w in weights:
        for name in (w.name, *(w.aliases or ()), *(w.tied_names or ())):
            shape = shapes.get(name, ([],))[0]
            if len(shape) == 2:
                return int(shape[w.vocabulary_axis]), int(shape[1 - w.vocabulary_axis])
    cfg = model.config(trust_remote_code=trust_remote_code)
    for attr in ("hidden_size", "n_embd", "d_model"):
        value = getattr(cfg, attr, None) or getattr(getattr(cfg, "text_config", None), attr, None)
        if value:
            return fallback.rows, int(value)
    return fallback.rows, 0


# ---------------------------------------------------------------- devices


def resolve_plan_device(device: str | None) -> tuple[str, bool]:
    """(device name, whether it exists here): a CPU box can plan a GPU run; a name that is no
    device at all is refused."""
    name = (device or "cpu").lower()
    if not re.fullmatch(r"cpu|auto|mps|cuda(:\d+)?", name):
        raise InputError(
            f"{device!r} is not a device; expected cpu, cuda, cuda:N or auto", where="--device"
        )
    if name == "auto":
        return ("cuda" if torch.cuda.is_available() else "cpu"), True
    if name.startswith("cuda"):
        return name, torch.cuda.is_available()
    return name, True


# ---------------------------------------------------------------- plans


def plan_recipe(
    config: Any, *, device: str | None = "cpu", trust_remote_code: bool = False
) -> dict[str, Any]:
    """What running a validated recipe would do; a JSON-ready dict (see ``format_plan``)."""
    dev, available = resolve_plan_device(device)
    untied = untied_inputs(config, trust_remote_code)
    tie = {"untie": untie_message(config, untied)} if untied else {}
    if not uses_plugin(config) or config.tokenizer is None:
        return {
            "plugin": False,
            "device": dev,
            "device_available": available,
            "note": "no tokenizer.approximation: stock mergekit vocabulary handling",
            **tie,
        }
    rv = recipe_vocab(config, trust_remote_code)
    vocab = rv.vocab
    budget = working_memory_budget(dev) if available else settings.cpu_budget_bytes()
    out_model = config.base_model or config.referenced_models()[0]  # as mergekit's out config
    out_cfg = out_model.config(trust_remote_code=trust_remote_code)
    tied_out = bool(getattr(out_cfg, "tie_word_embeddings", False)) and not untied
    donor = align_settings(config)["donor"]
    shapes = {str(m): safetensors_shapes(m.model.path) for m in rv.inputs}
    weights = [
        _weight_record(rv, w, shapes, donor, budget, trust_remote_code)
        for w in vocab_weights(out_model, trust_remote_code) or []
        if not (w.tied_names and tied_out)
    ]
    flops = [w["flops"] for w in weights]
    rate = add_time_estimates(weights, dev, available)
    fills = [rv.fills[str(m)] for m in rv.inputs]
    models = [{**asdict(f), "by_method": f.by_method(), "by_source": f.by_source()} for f in fills]
    # (asdict copies specials; the special-token table is shown per model)
    source = config.tokenizer.source
    return {
        "plugin": True,
        "method": rv.method,
        "method_note": config.tokenizer.approximation.choice_note,
        "chat_template": chat_plan(config, trust_remote_code).record(),
        "corpus_coverage": corpus_coverage(rv),
        "params": _params_dict(rv.params),
        "fallback": registry.get(rv.method).fallback,
        "device": dev,
        "device_available": available,
        "output": {
            "tokens": vocab.n_tokens,
            "rows": vocab.rows,
            "tokenizer_source": source if isinstance(source, str) else str(source),
        },
        "donor": None
        if donor is None
        else {"model": str(donor), "rows": vocab.donor.rows if vocab.donor else None},
        "weights": weights,
        "models": models,
        "peak_bytes": max((w["peak_bytes"] for w in weights), default=0),
        "flops": None if None in flops else sum(flops, 0.0),
        "matmul_flops_per_s": rate,
        **tie,
    }


def add_time_estimates(weights: list[dict[str, Any]], device: str, available: bool) -> float | None:
    """Each weight's ``seconds``: its flops at this machine's measured matmul rate (None when
    the flops are unknown or the device is not here); returns the rate."""
    if not available or all(w["flops"] is None for w in weights):
        for w in weights:
            w["seconds"] = None
        return None
    from mergekit_tokenplug.compute.rate import matmul_rate  # lazy: timed only when plan prints

    rate = matmul_rate(device)
    for w in weights:
        w["seconds"] = None if w["flops"] is None else w["flops"] / rate
    return rate


def _weight_record(
    rv: RecipeVocab, w: Any, shapes: dict, donor: Any, budget: int, trust_remote_code: bool
) -> dict[str, Any]:
    """Memory and flops of rebuilding one vocabulary matrix in every input model."""
    dims = {}
    matrices = 0
    for m in rv.inputs:
        fill = rv.fills[str(m)]
        rows, dims[str(m)] = _matrix_shape(m, [w], shapes[str(m)], fill, trust_remote_code)
        matrices += (rows + rv.vocab.rows) * dims[str(m)] * FP32
    d_donor = 0
    if donor is not None:  # the donor matrix that plays ``w``'s part (tied or not)
        donor_shapes = safetensors_shapes(donor.model.path)
        same_part = [
            dw
            for dw in vocab_weights(donor, trust_remote_code) or []
            if (dw.tied_names is None) == (w.tied_names is None)
        ]
        rows, d_donor = _matrix_shape(
            donor, same_part, donor_shapes, rv.vocab.donor, trust_remote_code
        )
        matrices += rows * d_donor * FP32
    working = 0
    flops: float | None = 0.0
    for m in rv.inputs:
        fill = rv.fills[str(m)]
        for g in fill.groups:
            if g.method == TOOL_METHOD:  # the base model's forward over the tool texts
                flops = None
                continue
            d_src = (
                d_donor
                if g.source and g.source.startswith("donor ")
                else dims.get(g.source or str(m), dims[str(m)])
            )
            spec = registry.get(g.method)
            params = rv.params if g.method == rv.method else spec.parse_params({})
            wb, fl = spec.cost(
                CostQuery(
                    params=params,
                    targets=g.count,
                    anchors=g.anchors or 0,
                    dim_source=d_src,
                    dim_model=dims[str(m)],
                    model_rows=fill.rows,
                    budget=budget,
                )
            )
            working = max(working, wb)
            flops = None if fl is None or flops is None else flops + fl
    return {
        "weight": w.name,
        "matrices_bytes": int(matrices),
        "working_bytes": int(working),
        "peak_bytes": int(matrices + working),
        "flops": flops,
    }


def _params_dict(params: Any) -> dict[str, Any]:
    dump = getattr(params, "model_dump", None)
    return json.loads(json.dumps(dump() if dump else {}, default=str))


def _duration(seconds: float) -> str:
    if seconds < 1:
        return "<1 s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def _mib(n: int | float) -> str:
    return f"{n / 2**20:,.1f} MiB"


def format_plan(plan: dict[str, Any]) -> str:
    """The human-readable form printed by ``mergekit-tokenplug plan``."""
    dev = plan["device"] + ("" if plan.get("device_available", True) else " (not available here)")
    tie = [f"note: {plan['untie']}"] if plan.get("untie") else []
    if not plan.get("plugin"):
        return "\n".join([f"{plan['note']}; device {dev}", *tie])
    params = ", ".join(f"{k}={v}" for k, v in plan["params"].items())
    tie += [f"note: {plan['method_note']}"] if plan.get("method_note") else []
    tie += [f"warning: {line}" for line in plan.get("corpus_coverage") or []]
    lines = [
        f"method: {plan['method']}"
        + (f" ({params})" if params else "")
        + f"; fallback for tokens no source space has: {plan['fallback'] or 'none'}; device: {dev}",
        f"output vocabulary: {plan['output']['tokens']} tokens in {plan['output']['rows']} rows"
        f" (tokenizer.source: {plan['output']['tokenizer_source']})",
    ]
    if plan.get("donor"):
        lines.append(f"donor: {plan['donor']['model']} ({plan['donor']['rows']} rows)")
    chat = plan.get("chat_template") or {}
    if chat:
        lines.append(f"chat template ({chat['mode']}): {chat['note']}")
    for m in plan["models"]:
        groups = ", ".join(
            f"{g['method']} {g['count']}"
            + (f" <- {g['source']}" if g["source"] else "")
            + (f" [{g['anchors']} shared tokens]" if g["anchors"] is not None else "")
            for g in m["groups"]
        )
        lines.append(
            f"model {m['model']}: copied {m['copied']} (exact {m['exact']}, canonical "
            f"{m['canonical']}, special {m['special']}), estimated {m['estimated']}"
            + (f" ({groups})" if groups else "")
            + f", padded {m['padded']}"
        )
        table = m.get("specials") or {}
        for r in table.get("rows", []):
            roles = f" [{', '.join(r['roles'])}]" if r["roles"] else ""
            lines.append(f"  special {r['token']!r} (id {r['id']}){roles}: {r['source']}")
        if table.get("same_token"):
            lines.append(f"  and {table['same_token']} special tokens copied from the same token")
    rate = plan.get("matmul_flops_per_s")
    for w in plan["weights"]:
        flops = "unknown" if w["flops"] is None else f"{w['flops']:.3g}"
        secs = w.get("seconds")
        lines.append(
            f"{w['weight']}: peak ~{_mib(w['peak_bytes'])} (matrices {_mib(w['matrices_bytes'])}"
            f" + working {_mib(w['working_bytes'])}), ~{flops} flops"
            + (f", ~{_duration(secs)} of estimation" if secs is not None else "")
        )
    if rate:
        lines.append(
            f"time: the estimation figures are the flops at this machine's float32 matmul rate "
            f"measured now ({rate / 1e9:.1f} GFLOP/s on {plan['device']}): rough, and high for "
            "omp/omp_map, whose flops are counted as a dense implementation does them (their "
            "Gram-based kernel does fewer); loading, aligning and writing come on top"
        )
    return "\n".join([*lines, *tie])
