"""Build one model's output matrix for a new vocabulary: copy what it has, estimate the rest.

This is the heart of the plugin and knows nothing about mergekit or files. Given the model's
matrix, where each output token lives in it (``src_ids``), and other spaces where missing
tokens are known (other input models, the donor), it copies shared rows exactly (one
vectorised gather), groups the missing rows by the space they are known in, asks the
configured method for estimates *in the model's own space*, and pads to the requested size.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from mergekit_tokenplug.compute.distributed import chunk_bounds, sharded_rows
from mergekit_tokenplug.errors import InputError
from mergekit_tokenplug.methods.base import (
    TEXT_NEEDS,
    Estimate,
    EstimationProblem,
    MethodSpec,
    Need,
)
from mergekit_tokenplug.output.manifest import expand_ranges, id_ranges
from mergekit_tokenplug.registry import get

LOG = logging.getLogger(__name__)


@dataclass
class SourceSpace:
    """Another embedding space in which some output tokens are known."""

    name: str
    matrix: torch.Tensor | None  # (V_s, d_s); None where only the plan is needed
    src_ids: np.ndarray  # (V_out,) row of `matrix` per output id, -1 where absent
    anchor_mask: np.ndarray | None = None  # (V_out,) bool: ids usable as anchors (regular tokens)


@dataclass
class TextSupport:
    """Tokenizer-side callables for methods that need texts (built lazily by the caller)."""

    out_texts: Callable[[np.ndarray], list[str]]  # decoded text of output ids
    split_base: Callable[[list[str]], list[list[int]]]  # texts -> the model's rows (its pieces)
    base_vocab_texts: Callable[[], list[str]]  # decoded text of every model row
    # Further EstimationProblem fields by name (embed_texts, corpus_ids, context_matrix).
    inputs: dict[str, Any] = field(default_factory=dict)


@dataclass
class FillReport:
    """What happened to one matrix of one model (logged, and written to card/manifest)."""

    model: str
    role: str
    rows: int
    copied: int = 0
    estimated: int = 0
    padded: int = 0
    by_source: dict[str, int] = field(default_factory=dict)
    by_method: dict[str, int] = field(default_factory=dict)  # rows each method really produced
    # rows that got a fallback instead of the method's estimate, and rows estimated from
    # little evidence: {"method", "to" (fallbacks), "reason", "count", "tokens" (a few)}
    fallbacks: list[dict[str, Any]] = field(default_factory=list)
    thin: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def add_fallback(
        self, method: str, to: str, reason: str, count: int, shown: dict[str, Any]
    ) -> None:
        """``count`` rows counted under ``method`` really hold ``to``'s rows, because ``reason``
        (``shown``: their id ranges and first tokens)."""
        left = self.by_method.get(method, 0) - count
        if left > 0:
            self.by_method[method] = left
        else:
            self.by_method.pop(method, None)
        self.by_method[to] = self.by_method.get(to, 0) + count
        self.fallbacks.append(
            {"method": method, "to": to, "reason": reason, "count": count} | shown
        )


SHOWN_TOKENS = 10  # tokens a fallback or thin record names (the count says how many in all)
NO_SPACE = "known in no source space (neither the donor nor another model has the token)"


def stable_seed(*parts: Any) -> int:
    """A run-independent seed derived from names (Python's hash() is salted per process)."""
    return zlib.crc32("\x1f".join(str(p) for p in parts).encode("utf-8")) & 0x7FFFFFFF


def check_finite(matrix: torch.Tensor, what: str) -> None:
    """NaN/Inf rows would poison every estimate built from them: refuse with the row ids."""
    bad = ~torch.isfinite(matrix.reshape(matrix.shape[0], -1)).all(dim=1)
    if bool(bad.any()):
        rows = bad.nonzero().flatten()[:5].tolist()
        listed = f"rows {rows}{'...' if int(bad.sum()) > 5 else ''}"
        if matrix.dtype == torch.float16 and not bool(torch.isnan(matrix).any()):
            raise InputError(
                f"overflows float16 ({listed} hold values past ±65504, or Inf); expected values float16 can hold — use dtype float32 or bfloat16",
                where=what,
            )
        raise InputError(
            f"contains NaN or Inf values ({listed}); expected finite embeddings", where=what
        )


def bar_name(ref: str) -> str:
    """A model on a progress bar: its directory's name (``gemma3-270m``) or hub id, not the
    absolute path (two of those made a 180-character bar label)."""
    text = str(ref).rstrip("/")
    return text if text.count("/") == 1 and not text.startswith((".", "~")) else Path(text).name


def fill_matrix(
    *,
    model: str,
    role: str,
    matrix: torch.Tensor,
    src_ids: np.ndarray,
    out_rows: int,
    sources: list[SourceSpace],
    method: str,
    params: Any,
    anchor_mask: np.ndarray | None = None,
    texts: TextSupport | None = None,
    seed: int = 0,
    force_estimate: np.ndarray | None = None,
    show_progress: bool = True,
) -> tuple[torch.Tensor, FillReport]:
    """Return ``(out_rows, *matrix.shape[1:])`` rows for the output vocabulary.

    ``src_ids`` covers the output token ids (its length is the number of output tokens,
    at most ``out_rows``); ids past it are padding and get the mean row. ``anchor_mask``
    marks output ids that are regular tokens (usable as OMP anchors).
    """
    token_shape = matrix.shape[1:]
    flat = matrix.reshape(matrix.shape[0], -1)
    n_tokens = len(src_ids)
    if n_tokens > out_rows:
        raise ValueError(f"{n_tokens} output tokens do not fit in {out_rows} rows")
    report = FillReport(model=model, role=role, rows=out_rows)
    device = flat.device
    out = torch.empty((out_rows, flat.shape[1]), dtype=flat.dtype, device=device)

    spec = get(method)
    have_np, missing, groups = plan_fill(
        src_ids, sources, spec, anchor_mask=anchor_mask, force_estimate=force_estimate
    )
    src = torch.as_tensor(src_ids, dtype=torch.long, device=device)
    have = torch.as_tensor(have_np, dtype=torch.bool, device=device)
    out[:n_tokens][have] = flat[src[have]]
    report.copied = int(have.sum())
    if len(missing):
        estimates = _estimate_missing(
            model=model,
            role=role,
            base=flat,
            src_ids=src_ids,
            missing=missing,
            groups=groups,
            spec=spec,
            params=params,
            texts=texts,
            seed=seed,
            show_progress=show_progress,
            report=report,
        )
        out[torch.as_tensor(missing, device=device)] = estimates.to(device=device, dtype=flat.dtype)
        report.estimated = len(missing)
    if out_rows > n_tokens:
        # Padding rows are never produced by the tokenizer: the mean row keeps them harmless
        # (a convex combination cannot out-score real tokens) and deterministic.
        out[n_tokens:] = out[:n_tokens].float().mean(dim=0).to(out.dtype) if n_tokens else 0
        report.padded = out_rows - n_tokens
    return out.reshape((out_rows, *token_shape)), report


@dataclass
class FillGroup:
    """Missing rows of one model estimated together: one method, one source space."""

    method: str
    source: SourceSpace | None  # the space the rows are known in (None: the model's own)
    positions: np.ndarray  # indices into the missing ids
    out_ids: np.ndarray  # the output ids of those rows
    anchor_out: np.ndarray | None  # output ids shared with the source (regular tokens)

    @property
    def anchors(self) -> int | None:
        return None if self.anchor_out is None else int(self.anchor_out.size)


def plan_fill(
    src_ids: np.ndarray,
    sources: list[SourceSpace],
    spec: MethodSpec,
    *,
    anchor_mask: np.ndarray | None = None,
    force_estimate: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, list[FillGroup]]:
    """``(have, missing, groups)``: which output ids are copied, which are estimated, and how.

    Pure and weight-free: the run, ``plan``/``recipes validate`` and the benchmarks all call it,
    so what they report is what the run does. Methods that read donor rows estimate each
    missing row in the first source space that has it (sources in priority order); rows no
    space has go to the spec's fallback method.
    """
    known = src_ids >= 0
    have = known if force_estimate is None else known & ~np.asarray(force_estimate, dtype=bool)
    missing = np.flatnonzero(~have)
    base_anchor_ok = known if anchor_mask is None else known & anchor_mask
    groups: list[FillGroup] = []
    unassigned = np.ones(len(missing), dtype=bool)
    for space in sources if Need.DONOR_EMBEDDINGS in spec.needs else []:
        found = unassigned & (space.src_ids[missing] >= 0)
        if found.any():
            anchors = base_anchor_ok & (space.src_ids >= 0)
            if space.anchor_mask is not None:
                anchors &= space.anchor_mask
            pos = np.nonzero(found)[0]
            groups.append(FillGroup(spec.name, space, pos, missing[pos], np.nonzero(anchors)[0]))
            unassigned &= ~found
    if unassigned.any():
        pos = np.nonzero(unassigned)[0]
        groups.append(FillGroup(unknown_method(spec), None, pos, missing[pos], None))
    return have, missing, groups


def unknown_method(spec: MethodSpec) -> str:
    """The method for tokens no source space knows: a donor-reading method's fallback."""
    return (spec.fallback or "mean") if Need.DONOR_EMBEDDINGS in spec.needs else spec.name


def build_problem(
    base32: torch.Tensor,
    src_ids: np.ndarray,
    out_ids: np.ndarray,
    anchor_out: np.ndarray | None,
    space: SourceSpace | None,
    spec: MethodSpec,
    texts: TextSupport | None,
    *,
    role: str,
    seed: int,
    label: str,
    show_progress: bool,
) -> EstimationProblem:
    """Everything ``spec`` needs to estimate the rows of ``out_ids`` in ``base32``'s space
    (see the Need -> field table in :mod:`mergekit_tokenplug.methods.base`)."""
    dev = base32.device

    def long(ids: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(ids, dtype=torch.long, device=dev)

    problem = EstimationProblem(
        base=base32,
        anchor_ids=torch.empty(0, dtype=torch.long, device=dev),
        n_targets=len(out_ids),
        role=role,
        seed=seed,
        label=label,
        show_progress=show_progress,
    )
    # Every method sees which output tokens the model has (and where) and which are targets.
    problem.out_to_base = long(src_ids)
    problem.out_to_target = torch.full((len(src_ids),), -1, dtype=torch.long, device=dev)
    problem.out_to_target[long(out_ids)] = torch.arange(len(out_ids), device=dev)
    if space is not None and anchor_out is not None:
        problem.anchor_ids = long(src_ids[anchor_out])
        problem.donor = space.matrix.float().reshape(space.matrix.shape[0], -1).to(dev)
        problem.donor_anchor_ids = long(space.src_ids[anchor_out])
        problem.donor_target_ids = long(space.src_ids[out_ids])
    needs = spec.needs
    if needs & TEXT_NEEDS:
        if texts is None:
            raise InputError(
                f"method {spec.name!r} needs the tokenizers, which are not available here",
                where="tokenizer.approximation.method",
            )
        problem.target_texts = texts.out_texts(out_ids)
        problem.split_texts = texts.split_base
        for name, value in texts.inputs.items():
            setattr(problem, name, value)
        if Need.BASE_TOKENIZER in needs:
            problem.target_pieces = texts.split_base(problem.target_texts)
        if Need.BASE_VOCAB_TEXTS in needs:
            problem.base_vocab_texts = texts.base_vocab_texts()
    return problem


def _estimate_missing(
    *,
    model: str,
    role: str,
    base: torch.Tensor,
    src_ids: np.ndarray,
    missing: np.ndarray,
    groups: list[FillGroup],
    spec: MethodSpec,
    params: Any,
    texts: TextSupport | None,
    seed: int,
    show_progress: bool,
    report: FillReport,
) -> torch.Tensor:
    """Estimates for ``missing`` output ids, in the order given."""
    base32 = base.float()
    result = torch.empty((len(missing), base.shape[1]), dtype=torch.float32, device=base.device)
    for g in groups:
        space, n = g.source, len(g.out_ids)
        if space is None and g.method != spec.name:
            LOG.info(
                "%s %s: %d tokens are known in no other space; using %r for them",
                model, role, n, g.method,
            )  # fmt: skip
            report.fallbacks.append(
                {"method": spec.name, "to": g.method, "reason": NO_SPACE, "count": n}
                | _shown(texts, g.out_ids)
            )
        if g.anchors == 0:
            raise InputError(
                f"model {model} shares no regular tokens with {space.name}; cannot estimate with {g.method!r}",
                where="tokenizer.approximation",
            )
        group_spec = get(g.method)
        group_params = params if g.method == spec.name else group_spec.parse_params({})
        label = f"{g.method} {bar_name(model)} {role}" + (
            f" <- {bar_name(space.name)}" if space else ""
        )
        n_chunks = len(chunk_bounds(n)) if group_spec.shardable else 1
        # the outer bar moves once per chunk (minutes for OMP on CPU): the method's own bar
        # (OMP: greedy steps) shows progress within the chunk
        with tqdm(
            total=n, desc=label, unit="tok", disable=not show_progress or n_chunks == 1, leave=False
        ) as bar:

            def compute(
                chunk: int,
                lo: int,
                hi: int,
                g: FillGroup = g,
                group_spec: MethodSpec = group_spec,
                group_params: Any = group_params,
                label: str = label,
            ) -> torch.Tensor:
                space_name = g.source.name if g.source else ""
                problem = build_problem(
                    base32,
                    src_ids,
                    g.out_ids[lo:hi],
                    g.anchor_out,
                    g.source,
                    group_spec,
                    texts,
                    role=role,
                    seed=stable_seed(seed, model, role, group_spec.name, space_name, chunk),
                    label=label,
                    show_progress=show_progress,
                )
                est = group_spec.estimate(problem, group_params)
                rows = est.rows if isinstance(est, Estimate) else est
                fallback = est.fallback if isinstance(est, Estimate) else {}
                thin = est.thin if isinstance(est, Estimate) else {}
                if rows.shape != (hi - lo, base.shape[1]):
                    raise RuntimeError(
                        f"method {group_spec.name!r} returned shape {tuple(rows.shape)}, expected {(hi - lo, base.shape[1])}"
                    )
                if not bool(torch.isfinite(rows).all()):
                    raise RuntimeError(
                        f"method {group_spec.name!r} produced non-finite rows for {model} {role}"
                    )
                bar.update(hi - lo)
                masks = [{k: v.bool().cpu() for k, v in d.items()} for d in (fallback, thin)]
                return rows.float().to(base.device), *masks

            blocks = sharded_rows(n, compute, shardable=group_spec.shardable)
        result[torch.as_tensor(g.positions, device=base.device)] = torch.cat([b[0] for b in blocks])
        key = space.name if space else "(none)"
        report.by_source[key] = report.by_source.get(key, 0) + n
        report.by_method[g.method] = report.by_method.get(g.method, 0) + n
        to = group_spec.fallback or "mean"
        for reason, ids in _flagged(blocks, 1, g.out_ids).items():
            report.add_fallback(g.method, to, reason, len(ids), _shown(texts, ids))
            LOG.warning(
                "%s %s: %d rows got the %s row instead of a %s estimate: %s",
                model, role, len(ids), to, g.method, reason,
            )  # fmt: skip
        for reason, ids in _flagged(blocks, 2, g.out_ids).items():
            report.thin.append(
                {"method": g.method, "reason": reason, "count": len(ids)} | _shown(texts, ids)
            )
            LOG.warning("%s %s: %d rows %s: %s", model, role, len(ids), g.method, reason)
    return result


def _flagged(blocks: list[tuple], part: int, out_ids: np.ndarray) -> dict[str, np.ndarray]:
    """Output ids flagged by the chunks' masks (``part`` 1: fallbacks, 2: thin), by reason."""
    sizes = [len(b[0]) for b in blocks]
    reasons = sorted({r for b in blocks for r in b[part]})
    flagged = {}
    for reason in reasons:
        mask = torch.cat(
            [
                b[part].get(reason, torch.zeros(k, dtype=torch.bool)).cpu()
                for b, k in zip(blocks, sizes, strict=True)
            ]
        ).numpy()
        if mask.any():
            flagged[reason] = out_ids[mask]
    return flagged


def _shown(texts: TextSupport | None, ids: np.ndarray) -> dict[str, Any]:
    """The rows (id ranges) and the first few tokens' texts, for the card and manifest."""
    shown = list(texts.out_texts(np.asarray(ids[:SHOWN_TOKENS]))) if texts and len(ids) else []
    return {"tokens": shown, "ids": id_ranges(ids)}


def drop_rows(records: list[dict[str, Any]], ids: list[int]) -> list[dict[str, Any]]:
    """Fallback/thin records without ``ids`` (rows replaced afterwards, e.g. tool priors)."""
    gone = set(ids)
    kept = []
    for rec in records:
        left = [i for i in expand_ranges(rec.get("ids", [])) if i not in gone]
        if "ids" not in rec or len(left) == rec["count"]:
            kept.append(rec)
        elif left:
            kept.append({**rec, "count": len(left), "ids": id_ranges(left)})
    return kept
