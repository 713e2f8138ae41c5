"""Recorded reference outputs that hold on any CPU.

A run's outputs are compared with a reference recorded once (``tests/fixtures/goldens/``),
with the tolerance each part's arithmetic allows:

- **exact**: tokenizer and config files, the manifest's account of the run (which rows were
  copied, estimated or padded, by which method, the BOS record, config changes, settings),
  the tensor names, dtypes and shapes, and every row the run copied rather than computed (rows
  of a passthrough transplant that the manifest does not list as estimated or padding, and
  every tensor it did not touch). Copies are the same bits on every machine.
- **bounded**: rows a method computed (least squares, Cholesky, sampling through a covariance
  factor, means, merges). BLAS/LAPACK and torch's vectorized kernels pick per-processor code
  paths that change the last bits, so these rows must agree within a relative L2 error of
  ``FP32_RTOL`` per row in float32, and within one unit in the last place per element in
  bfloat16/float16 (one rounding step after the cast).

Only what the comparison needs is stored: a digest of the exact rows (their bits are the same
everywhere), the values of the computed vocabulary rows, and for the other float32 weights of
a merge a per-row sketch (norm and a few fixed projections, see :func:`row_sketch`).

Record after a change that is meant to change outputs, and only then:
``TOKENPLUG_RECORD_GOLDENS=1 .venv/bin/python -m pytest tests/test_output_hashes.py
tests/test_recipes.py``.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file, save_file

GOLDEN_DIR = Path(__file__).parent / "fixtures" / "goldens"
RECORD_ENV = "TOKENPLUG_RECORD_GOLDENS"
FP32_RTOL = 1e-5  # relative L2 error per computed row, float32
FP32_ATOL = 1e-6  # absolute floor for rows whose norm is ~0
HALF_ULPS = 1  # bfloat16/float16: elements within one representable step
SKETCH_DIRS = 8  # fixed projections kept per row of a weight no method computes
EXACT_FILES = (
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "generation_config.json",
)
MANIFEST_KEYS = ("report", "config_changes", "bos", "seed", "settings", "recipe")


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _file_digest(path: Path) -> str:
    """Digest of an exact output file; JSON without the writer's ``transformers_version``
    (which names the installed library, not anything the run decided)."""
    if path.suffix != ".json":
        return _sha(path.read_bytes())
    data = json.loads(path.read_text(encoding="utf-8"))
    if isinstance(data, dict):
        data.pop("transformers_version", None)
    return _sha(json.dumps(data, sort_keys=True).encode())


def _manifest_record(out: Path) -> dict:
    """The manifest fields that describe what the run did (no versions, paths or hashes)."""
    path = out / "tokenplug_manifest.json"
    if not path.exists():
        return {}
    manifest = json.loads(path.read_text(encoding="utf-8"))
    record = {k: manifest[k] for k in MANIFEST_KEYS if k in manifest}
    record["side_files"] = sorted(manifest.get("side_files", {}))
    if "stages" in manifest:
        record["stages"] = {
            name: {k: stage[k] for k in MANIFEST_KEYS if k in stage}
            for name, stage in manifest["stages"].items()
        }
    return record


def _computed_rows(out: Path) -> dict[str, set[int]] | None:
    """Rows of each vocabulary tensor the run computed, from the manifest.

    ``None`` when the output is not a single-model transplant (a merge computes every value,
    so nothing is exact there)."""
    path = out / "tokenplug_manifest.json"
    if not path.exists():
        return None
    manifest = json.loads(path.read_text(encoding="utf-8"))
    docs = [d for d in yaml.safe_load_all(manifest.get("recipe") or "") if d]
    if "stages" in manifest or len(docs) != 1 or docs[0].get("merge_method") != "passthrough":
        return None
    report = manifest["report"]
    computed: dict[str, set[int]] = {}
    for matrix in report["matrices"]:
        rows = computed.setdefault(matrix["weight"], set())
        for lo, hi in matrix.get("row_ids", {}).get("estimated", []):
            rows.update(range(lo, hi + 1))
        # padding rows (the mean row) follow the vocabulary's tokens
        rows.update(range(matrix["rows"] - matrix.get("padded", 0), matrix["rows"]))
    return computed


def _row_view(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], -1) if t.dim() >= 2 else t.reshape(1, -1)


def _rows_digest(t: torch.Tensor, rows: list[int]) -> str:
    h = hashlib.sha256()
    view = _row_view(t)
    for i in rows:
        h.update(i.to_bytes(8, "little"))
        h.update(view[i].contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _split(out: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(record, bounded reference values) of a run's output directory."""
    computed = _computed_rows(out)
    vocab_rows = json.loads((out / "config.json").read_text(encoding="utf-8")).get("vocab_size")
    record: dict = {
        "files": {name: _file_digest(out / name) for name in EXACT_FILES if (out / name).exists()},
        "manifest": _manifest_record(out),
        "tensors": {},
    }
    values: dict[str, torch.Tensor] = {}
    for f in sorted(out.rglob("*.safetensors")):
        rel = str(f.relative_to(out))
        tensors_of_file = {}
        with safe_open(str(f), "pt") as fh:
            names = sorted(fh.keys())
            for name in names:
                t = fh.get_tensor(name)
                n = _row_view(t).shape[0] if t.numel() else 0
                if computed is None or rel != "model.safetensors":
                    bounded = list(range(n)) if t.dtype.is_floating_point else []
                else:
                    bounded = sorted(i for i in computed.get(name, ()) if i < n)
                exact = sorted(set(range(n)) - set(bounded))
                tensors_of_file[name] = {
                    "dtype": str(t.dtype),
                    "shape": list(t.shape),
                    "exact_rows": len(exact),
                    "exact_digest": _rows_digest(t, exact),
                    "bounded_rows": len(bounded),
                }
                if bounded:
                    key = f"{rel}::{name}"
                    rows = _row_view(t)[bounded].contiguous()
                    if t.dtype == torch.float32 and n != vocab_rows:
                        values[key + "::sketch"] = row_sketch(rows)
                    else:
                        values[key] = rows
                    if len(bounded) != n:
                        values[key + "::rows"] = torch.tensor(bounded, dtype=torch.int64)
        record["tensors"][rel] = tensors_of_file
    return record, values


def row_sketch(rows: torch.Tensor) -> torch.Tensor:
    """Per row, in float64: its L2 norm and its projections on ``SKETCH_DIRS`` fixed unit vectors.

    What the bounded check keeps of float32 weights no method computes (the transformer
    weights of a merge): a few numbers a row instead of the row. Each entry moves by at most
    the row's own L2 change, so the per-row bound applies to every entry."""
    d = rows.shape[1]
    signs = np.random.RandomState(d).randint(0, 2, size=(d, SKETCH_DIRS)) * 2.0 - 1.0
    r = rows.double()
    return torch.cat([r.norm(dim=1, keepdim=True), r @ torch.from_numpy(signs / np.sqrt(d))], 1)


def sketch_mismatch(got: torch.Tensor, ref: torch.Tensor) -> str | None:
    """Why sketched rows ``got`` are outside the per-row bound of ``ref`` (``None`` if inside)."""
    bound = FP32_RTOL * ref[:, :1] + FP32_ATOL
    excess = ((got - ref).abs() / bound).amax(dim=1)
    if bool((excess > 1).any()):
        row = int(excess.argmax())
        return f"row {row} moved {float(excess[row]):.1f} times the bound {FP32_RTOL:g}"
    return None


def half_ulp_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Representable steps between two bfloat16/float16 tensors, element by element."""
    ia = a.view(torch.int16).to(torch.int32)
    ib = b.view(torch.int16).to(torch.int32)
    # map the sign-magnitude bit patterns onto a line ordered like the values
    ia = torch.where(ia < 0, -(ia & 0x7FFF), ia)
    ib = torch.where(ib < 0, -(ib & 0x7FFF), ib)
    return (ia - ib).abs()


def bounded_mismatch(got: torch.Tensor, ref: torch.Tensor) -> str | None:
    """Why computed rows ``got`` are outside the tolerance of ``ref`` (``None`` if inside)."""
    if got.dtype in (torch.bfloat16, torch.float16):
        steps = half_ulp_distance(got, ref)
        worst = int(steps.max()) if steps.numel() else 0
        if worst > HALF_ULPS:
            row = int(steps.amax(dim=1).argmax())
            return f"{worst} {got.dtype} steps apart in computed row {row} (bound {HALF_ULPS})"
        return None
    g, r = got.double(), ref.double()
    if not torch.isfinite(g).all() or not torch.isfinite(r).all():
        return (
            None
            if torch.equal(g.isnan(), r.isnan())
            and torch.equal(torch.nan_to_num(g), torch.nan_to_num(r))
            else "non-finite values differ"
        )
    err = (g - r).norm(dim=1)
    bound = FP32_RTOL * r.norm(dim=1) + FP32_ATOL
    bad = err > bound
    if bad.any():
        row = int((err / bound).argmax())
        rel = float(err[row] / r[row].norm().clamp_min(1e-30))
        return f"computed row {row}: relative L2 error {rel:.2e} (bound {FP32_RTOL:g})"
    return None


def _tensor_differences(where: str, got: dict, want: dict) -> list[str]:
    """Exact parts of one tensor's record: dtype, shape, row classes, copied rows' bits."""
    problems = [
        f"{where}: {key} {got[key]} != {want[key]}"
        for key in ("dtype", "shape", "exact_rows", "bounded_rows")
        if got[key] != want[key]
    ]
    if not problems and got["exact_digest"] != want["exact_digest"]:
        problems.append(f"{where}: copied rows are not bit-identical")
    return problems


def golden_differences(case: str, out_dir: str | Path) -> list[str]:
    """Every way the output of ``case`` differs from its reference beyond the tolerances."""
    out = Path(out_dir)
    meta_path = GOLDEN_DIR / f"{case.replace(':', '__')}.json"
    values_path = meta_path.with_suffix(".safetensors")
    record, values = _split(out)
    if not meta_path.exists():
        return [f"no reference for {case}; record it with {RECORD_ENV}=1"]
    ref = json.loads(meta_path.read_text(encoding="utf-8"))
    ref_values = load_file(str(values_path)) if values_path.exists() else {}
    problems: list[str] = []
    for name in sorted(set(ref["files"]) | set(record["files"])):
        if ref["files"].get(name) != record["files"].get(name):
            problems.append(f"{name}: content differs")
    if ref["manifest"] != record["manifest"]:
        keys = set(ref["manifest"]) | set(record["manifest"])
        diff = sorted(k for k in keys if ref["manifest"].get(k) != record["manifest"].get(k))
        problems.append(f"tokenplug_manifest.json: {', '.join(diff)} differ")
    if set(ref["tensors"]) != set(record["tensors"]):
        problems.append(f"tensor files {sorted(record['tensors'])} != {sorted(ref['tensors'])}")
        return problems
    for rel, ref_file in ref["tensors"].items():
        got_file = record["tensors"][rel]
        if set(ref_file) != set(got_file):
            problems.append(f"{rel}: tensor names differ")
            continue
        for name, want in ref_file.items():
            found = _tensor_differences(f"{rel}:{name}", got_file[name], want)
            problems += found
            key = f"{rel}::{name}"
            if found or not {key, key + "::sketch"} & set(ref_values):
                continue
            rows = key + "::rows"
            if rows in ref_values and not torch.equal(values[rows], ref_values[rows]):
                problems.append(f"{rel}:{name}: computed rows are not the same rows")
                continue
            if key + "::sketch" in ref_values:
                why = sketch_mismatch(values[key + "::sketch"], ref_values[key + "::sketch"])
            else:
                why = bounded_mismatch(values[key], ref_values[key])
            if why:
                problems.append(f"{rel}:{name}: {why}")
    return problems


def check_golden(case: str, out_dir: str | Path) -> None:
    """Assert the output of ``case`` matches its reference (or record it under RECORD_ENV)."""
    if os.environ.get(RECORD_ENV):
        record, values = _split(Path(out_dir))
        GOLDEN_DIR.mkdir(parents=True, exist_ok=True)
        meta_path = GOLDEN_DIR / f"{case.replace(':', '__')}.json"
        meta_path.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        values_path = meta_path.with_suffix(".safetensors")
        if values:
            save_file(values, str(values_path))
        elif values_path.exists():
            values_path.unlink()
        return
    problems = golden_differences(case, out_dir)
    assert not problems, f"{case}: " + "; ".join(problems)
