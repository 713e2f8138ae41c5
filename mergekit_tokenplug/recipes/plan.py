"""Dry-run plans: what a recipe would do to every vocabulary matrix, without loading weights.

A plan reads tokenizers, configs and safetensors *headers* only. It aligns the vocabularies
with the same code the merge runs (:func:`make_vocab_plan`), then replays the seam's decisions
(which rows are copied, which source space estimates each missing row, which fall back) so
its counts are the ones the run will report, and adds rough memory/flop figures so a user can
pick a device and batch size before a long run.
"""

from __future__ import annotations

import json
import struct
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mergekit_tokenplug import registry
from mergekit_tokenplug.registry import DEFAULT_METHOD, Need
from mergekit_tokenplug.seam.planner import align_settings
from mergekit_tokenplug.seam.schema import uses_plugin

FP32 = 4
# tokenadapt scores its neighbour search in chunks of at most this many elements.
TOKENADAPT_SCORE_BUDGET = 2**26


@dataclass
class FillGroup:
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
    groups: list[FillGroup] = field(default_factory=list)

    def by_method(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for g in self.groups:
            out[g.method] = out.get(g.method, 0) + g.count
        return out

    def by_source(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for g in self.groups:
            key = g.source or "(none)"
            out[key] = out.get(key, 0) + g.count
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


def input_order(config: Any) -> list[Any]:
    """Input models in the order mergekit gathers their tensors (models, else first slice)."""
    if config.models:
        return [m.model for m in config.models]
    if config.slices:
        return [s.model for s in config.slices[0].sources]
    return list(config.referenced_models())


def output_tokenizer(config: Any, trust_remote_code: bool = False) -> Any:
    """The output tokenizer as mergekit's ``build_tokenizer`` makes it (tokenizers only).

    Its tokenizer half, with mergekit's own helpers, minus the permutation tables (and their
    progress bar) that a plan does not need.
    """
    import transformers
    from mergekit.common import ModelReference
    from mergekit.tokenizer.build import build_union_tokenizer, get_stripped_tokenizer

    models = list(config.referenced_models())
    base = config.base_model or models[0]
    source = config.tokenizer.source

    def load(ref: Any) -> Any:
        return transformers.AutoTokenizer.from_pretrained(
            ref.model.path, revision=ref.model.revision, trust_remote_code=trust_remote_code
        )

    if isinstance(source, ModelReference):
        out = load(source)
    else:
        base_tok = get_stripped_tokenizer(base.model, trust_remote_code=trust_remote_code)
        if source == "base":
            out = base_tok
        else:
            tokenizers = {base: base_tok}
            for ref in models:
                if ref != base:
                    try:
                        tokenizers[ref] = load(ref)
                    except Exception:  # mergekit also skips (and assumes the base's)
                        continue
            out = build_union_tokenizer(base_tok, tokenizers, trust_remote_code=trust_remote_code)
    existing = set(out.get_vocab())
    for token in config.tokenizer.tokens or {}:
        if token not in existing:
            out.add_tokens(token)
            existing.add(token)
    return out


def _forced_mask(config: Any, out_tok: Any, n_tokens: int) -> np.ndarray:
    forced = np.zeros(n_tokens, dtype=bool)
    vocab = out_tok.get_vocab()
    for token, cfg in (config.tokenizer.tokens or {}).items():
        token_id = vocab.get(token)
        if token_id is not None and token_id < n_tokens and getattr(cfg, "force", False):
            forced[token_id] = True
    return forced


def recipe_vocab(config: Any, trust_remote_code: bool = False) -> RecipeVocab:
    """Align a plugin recipe's vocabularies and replay the seam's fill decisions."""
    from mergekit_tokenplug.seam.vocab_task import make_vocab_plan, model_key

    settings = align_settings(config)
    out_tok = output_tokenizer(config, trust_remote_code)
    vocab = make_vocab_plan(
        out_tok,
        tuple(config.referenced_models()),
        trust_remote_code=trust_remote_code,
        **settings,
    )
    approx = config.tokenizer.approximation
    spec = registry.get(approx.method)
    forced = _forced_mask(config, out_tok, vocab.n_tokens)
    inputs = input_order(config)
    base = config.base_model
    order = sorted(inputs, key=lambda m: (m != base, inputs.index(m)))
    donor = settings["donor"]
    spaces: list[tuple[str, np.ndarray]] = [
        (model_key(m), vocab.models[model_key(m)].alignment.src_ids) for m in order
    ]
    if donor is not None and vocab.donor is not None:
        spaces.append((f"donor {donor.model.path}", vocab.donor.alignment.src_ids))

    fills: dict[str, ModelFill] = {}
    for m in inputs:
        key = model_key(m)
        mv = vocab.models[key]
        src = mv.alignment.src_ids
        have = (src >= 0) & ~forced
        missing = np.flatnonzero(~have)
        counts = mv.alignment.counts()
        fill = ModelFill(
            model=key,
            rows=mv.rows,
            exact=counts["exact"],
            canonical=counts["canonical"],
            special=counts["special"],
            copied=int(have.sum()),
            estimated=int(missing.size),
            padded=vocab.rows - vocab.n_tokens,
            holes=counts["holes"],
            forced=int((forced & (src >= 0)).sum()),
        )
        if missing.size and Need.DONOR_EMBEDDINGS in spec.needs:
            anchor_ok = (src >= 0) & vocab.regular
            unassigned = np.ones(missing.size, dtype=bool)
            for name, space_src in spaces:
                if name == key:
                    continue
                known = unassigned & (space_src[missing] >= 0)
                if known.any():
                    anchors = int((anchor_ok & (space_src >= 0)).sum())
                    fill.groups.append(FillGroup(spec.name, name, int(known.sum()), anchors))
                    unassigned &= ~known
            if unassigned.any():
                fill.groups.append(FillGroup(spec.fallback or "mean", None, int(unassigned.sum())))
        elif missing.size:
            fill.groups.append(FillGroup(spec.name, None, int(missing.size)))
        fills[key] = fill
    return RecipeVocab(config, vocab, inputs, fills, approx.method, approx.parsed_params())


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


def vocab_weights(model: Any, trust_remote_code: bool = False) -> list[Any]:
    """The model architecture's weights with a vocabulary axis (embeddings, LM head)."""
    from mergekit.architecture import arch_info_for_config

    cfg = model.config(trust_remote_code=trust_remote_code)
    arch = arch_info_for_config(cfg)
    if arch is None:
        return []
    return [w for w in arch.all_weights(cfg) if w.vocabulary_axis is not None]


def _matrix_shape(model: Any, weight: Any, shapes: dict) -> tuple[int, int] | None:
    for name in (weight.name, *(weight.aliases or ()), *(weight.tied_names or ())):
        if name in shapes:
            shape = shapes[name][0]
            if len(shape) == 2:
                rows = shape[weight.vocabulary_axis]
                return int(rows), int(shape[1 - weight.vocabulary_axis])
    return None


def _hidden_size(model: Any, trust_remote_code: bool) -> int:
    cfg = model.config(trust_remote_code=trust_remote_code)
    for attr in ("hidden_size", "n_embd", "d_model"):
        value = getattr(cfg, attr, None) or getattr(getattr(cfg, "text_config", None), attr, None)
        if value:
            return int(value)
    return 0


# ---------------------------------------------------------------- cost model


def method_cost(
    method: str,
    params: Any,
    targets: int,
    anchors: int,
    dim_source: int,
    dim_model: int,
    model_rows: int,
    budget: int,
) -> tuple[int, float | None]:
    """(working bytes, flops or None) of estimating ``targets`` rows with ``method``."""
    if targets == 0:
        return 0, 0.0
    if method in ("omp", "omp_map"):  # omp_map: OMP plus a small check and a d x d map
        k = min(int(getattr(params, "k", 64)), max(anchors, 1))
        fixed = (targets + anchors) * dim_source * FP32  # targets + dictionary in fp32
        per_target = (anchors + k * dim_source + k * k) * FP32  # score row + support + factor
        batch = getattr(params, "batch_size", None) or max(1, (budget - fixed) // per_target)
        batch = min(int(batch), targets)
        return fixed + batch * per_target, 2.0 * k * targets * anchors * dim_source
    if method == "tokenadapt":
        chunk = max(1, min(targets, TOKENADAPT_SCORE_BUDGET // max(model_rows, 1)))
        return chunk * model_rows * FP32 + targets * dim_model * FP32, (
            2.0 * targets * model_rows * dim_model
        )
    if method == "cw2v":
        rank = int(getattr(params, "rank", 64))
        # A1 (T, r) and A2 (r, V) with their gradients and two Adam moments.
        return 4 * rank * (targets + model_rows) * FP32 + targets * dim_model * FP32, None
    if method in ("mean", "zero"):
        return targets * dim_model * FP32, float(model_rows * dim_model)
    return targets * dim_model * FP32, None


def resolve_plan_device(device: str | None) -> tuple[str, bool]:
    """(device name, whether it exists here); never fails, so a CPU box can plan a GPU run."""
    import torch

    name = (device or "cpu").lower()
    if name == "auto":
        return ("cuda" if torch.cuda.is_available() else "cpu"), True
    if name.startswith("cuda"):
        return name, torch.cuda.is_available()
    return name, True


def _budget(device: str, available: bool) -> int:
    from mergekit_tokenplug.compute.batching import CPU_BUDGET_CAP, working_memory_budget

    if not available:
        return CPU_BUDGET_CAP
    return working_memory_budget(device)


# ---------------------------------------------------------------- plans


def plan_recipe(
    config: Any, *, device: str | None = "cpu", trust_remote_code: bool = False
) -> dict[str, Any]:
    """What running a validated recipe would do; a JSON-ready dict (see ``format_plan``)."""
    dev, available = resolve_plan_device(device)
    if not uses_plugin(config) or config.tokenizer is None:
        return {
            "plugin": False,
            "device": dev,
            "device_available": available,
            "note": "no tokenizer.approximation: stock mergekit vocabulary handling",
        }
    rv = recipe_vocab(config, trust_remote_code)
    vocab = rv.vocab
    spec = registry.get(rv.method)
    budget = _budget(dev, available)
    out_model = config.base_model or config.referenced_models()[0]  # as mergekit's out config
    out_cfg = out_model.config(trust_remote_code=trust_remote_code)
    tied_out = bool(getattr(out_cfg, "tie_word_embeddings", False))
    out_weights = [
        w for w in vocab_weights(out_model, trust_remote_code) if not (w.tied_names and tied_out)
    ]
    settings = align_settings(config)
    donor = settings["donor"]
    donor_shapes = safetensors_shapes(donor.model.path) if donor is not None else {}

    models = []
    shapes = {}
    for m in rv.inputs:
        shapes[str(m)] = safetensors_shapes(m.model.path)
    weight_records = []
    peak = 0
    total_flops = 0.0
    flops_known = True
    for w in out_weights:
        matrices = 0
        working = 0
        flops = 0.0
        dims = {}
        for m in rv.inputs:
            fill = rv.fills[str(m)]
            shape = _matrix_shape(m, w, shapes[str(m)])
            rows, dim = shape if shape else (fill.rows, _hidden_size(m, trust_remote_code))
            dims[str(m)] = dim
            matrices += (rows + vocab.rows) * dim * FP32
        d_donor = 0
        if donor is not None:
            dshape = None
            for dw in vocab_weights(donor, trust_remote_code):
                if (dw.tied_names is None) == (w.tied_names is None):
                    dshape = _matrix_shape(donor, dw, donor_shapes)
                    if dshape:
                        break
            if dshape is None:
                dshape = (vocab.donor.rows, _hidden_size(donor, trust_remote_code))
            d_donor = dshape[1]
            matrices += dshape[0] * d_donor * FP32
        for m in rv.inputs:
            fill = rv.fills[str(m)]
            for g in fill.groups:
                d_src = (
                    d_donor
                    if g.source and g.source.startswith("donor ")
                    else dims.get(g.source or str(m), dims[str(m)])
                )
                params = rv.params if g.method == rv.method else None
                wb, fl = method_cost(
                    g.method,
                    params,
                    g.count,
                    g.anchors or 0,
                    d_src,
                    dims[str(m)],
                    fill.rows,
                    budget,
                )
                working = max(working, wb)
                if fl is None:
                    flops_known = False
                else:
                    flops += fl
        weight_records.append(
            {
                "weight": w.name,
                "matrices_bytes": int(matrices),
                "working_bytes": int(working),
                "peak_bytes": int(matrices + working),
                "flops": flops if flops_known else None,
            }
        )
        peak = max(peak, matrices + working)
        total_flops += flops
    for m in rv.inputs:
        fill = rv.fills[str(m)]
        record = asdict(fill)
        record["by_method"] = fill.by_method()
        record["by_source"] = fill.by_source()
        models.append(record)
    source = config.tokenizer.source
    return {
        "plugin": True,
        "method": rv.method,
        "params": _params_dict(rv.params),
        "fallback": spec.fallback,
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
        "weights": weight_records,
        "models": models,
        "peak_bytes": int(peak),
        "flops": total_flops if flops_known else None,
    }


def _params_dict(params: Any) -> dict[str, Any]:
    dump = getattr(params, "model_dump", None)
    return json.loads(json.dumps(dump() if dump else {}, default=str))


def plan_transplant(
    base: str,
    donor: str,
    method: str = DEFAULT_METHOD,
    params: dict[str, Any] | None = None,
    device: str | None = "cpu",
    **recipe_options: Any,
) -> dict[str, Any]:
    """The plan of ``transplant BASE DONOR`` (for ``transplant --dry-run``)."""
    from mergekit_tokenplug.surgery import load_recipe, transplant_recipe

    recipe = transplant_recipe(base, donor, method, params, **recipe_options)
    plan = plan_recipe(load_recipe(recipe, "transplant"), device=device)
    plan["recipe"] = recipe
    return plan


def _mib(n: int | float) -> str:
    return f"{n / 2**20:,.1f} MiB"


def format_plan(plan: dict[str, Any]) -> str:
    """The human-readable form printed by ``mergekit-tokenplug plan``."""
    dev = plan["device"] + ("" if plan.get("device_available", True) else " (not available here)")
    if not plan.get("plugin"):
        return f"{plan['note']}; device {dev}"
    params = ", ".join(f"{k}={v}" for k, v in plan["params"].items())
    lines = [
        f"method: {plan['method']}"
        + (f" ({params})" if params else "")
        + f"; fallback for tokens no source space has: {plan['fallback'] or 'none'}; device: {dev}",
        f"output vocabulary: {plan['output']['tokens']} tokens in {plan['output']['rows']} rows"
        f" (tokenizer.source: {plan['output']['tokenizer_source']})",
    ]
    if plan.get("donor"):
        lines.append(f"donor: {plan['donor']['model']} ({plan['donor']['rows']} rows)")
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
    for w in plan["weights"]:
        flops = "unknown" if w["flops"] is None else f"{w['flops']:.3g}"
        lines.append(
            f"{w['weight']}: peak ~{_mib(w['peak_bytes'])} (matrices {_mib(w['matrices_bytes'])}"
            f" + working {_mib(w['working_bytes'])}), ~{flops} flops"
        )
    return "\n".join(lines)
