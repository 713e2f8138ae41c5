"""The checks every command that writes runs before any work, one function per concern.

``transplant``, ``heal``, ``learn-tool-tokens``, ``evaluate``, ``compare`` and the plugin's
``mergekit-yaml`` path all go through these, so a bad argument, a file that cannot be written
or a model that cannot run is refused in one line naming the option or file, before a minute
of compute is spent. The output directory itself is guarded by ``output/atomic.py``
(``check_output_dir``: OUT apart from every input and every file read; ``atomic_directory``:
nothing half-written, modes from the umask).
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from mergekit_tokenplug.errors import ConfigError, InputError
from mergekit_tokenplug.inputs import read_json

# Limits far above any real run that stop a typo from asking for terabytes or years.
MAX_STEPS = 10_000_000
MAX_SEED = 2**63 - 1


def check_number(
    value: float | int,
    where: str,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    """A finite number within ``[low, high]`` (open ends where asked); NaN and inf are refused
    (they would train NaN rows or be written as non-JSON ``NaN`` into a manifest)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"expected a number, got {value!r}", where=where)
    if not math.isfinite(value):
        raise ConfigError(f"must be a finite number, got {value}", where=where)
    if low is not None and (value <= low if low_open else value < low):
        raise ConfigError(f"must be {'>' if low_open else '>='} {low}, got {value}", where=where)
    if high is not None and (value >= high if high_open else value > high):
        raise ConfigError(f"must be {'<' if high_open else '<='} {high}, got {value}", where=where)


def check_seed(seed: int | None, where: str = "--seed") -> None:
    if seed is not None:
        check_number(seed, where, low=0, high=MAX_SEED)


def check_device(device: str | None, where: str = "--device") -> str:
    """mergekit's device name for ``device``: an unknown name, or CUDA without a CUDA device,
    is refused (a run silently falling back to the CPU would take hours longer than asked)."""
    from mergekit_tokenplug.recipes.plan import resolve_plan_device  # lazy: imports mergekit

    name, available = resolve_plan_device(device)
    if not available:
        raise InputError(
            "CUDA was requested but no CUDA device is available; use --device cpu or --device auto",
            where=where,
        )
    return name


def context_length(model_dir: str | os.PathLike) -> int | None:
    """How many positions the model can attend to, from its config (None: unbounded/unknown)."""
    f = Path(model_dir).expanduser() / "config.json"
    cfg = read_json(f, str(f), "a model config") if f.is_file() else None
    if not isinstance(cfg, dict):
        return None
    for c in (cfg, cfg.get("text_config") or {}):
        for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
            value = c.get(key) if isinstance(c, dict) else None
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
    return None


def fit_context(requested: int | None, default: int, model_dir: str, where: str) -> int:
    """Tokens per window: ``requested``, refused past the model's context; unset, ``default``
    cut to the context (a 64-position model is scored in 63-token windows). One position is
    kept for the BOS token that leads every window."""
    context = context_length(model_dir)
    limit = context - 1 if context else None
    if requested is None:
        return max(2, min(default, limit)) if limit else default
    check_number(requested, where, low=2)
    if limit is not None and requested > limit:
        raise ConfigError(
            f"{requested} tokens do not fit the {context} positions of {model_dir} (max_position_embeddings, one kept for BOS); expected at most {limit}",
            where=where,
        )
    return int(requested)


def check_writable_file(
    path: str | None, where: str, *, outside: Iterable[str | os.PathLike] = ()
) -> None:
    """A file the run writes at its end (``--json``, ``--plot``): fail now, not after the
    computation; it must not lie inside an output directory (OUT is replaced as a whole, and
    a foreign file there fails ``verify``)."""
    if not path:
        return
    target = os.path.realpath(os.path.abspath(os.path.expanduser(path)))
    for out in outside:
        root = os.path.realpath(os.path.expanduser(out))
        if target == root or target.startswith(root.rstrip(os.sep) + os.sep):
            raise ConfigError(
                f"{path} lies inside the output directory {out}; expected a file outside it",
                where=where,
            )
    if os.path.isdir(target):
        raise ConfigError(f"{path} is a directory; expected a file path", where=where)
    try:
        with tempfile.NamedTemporaryFile(dir=os.path.dirname(target), prefix=".tokenplug-check-"):
            pass
        if os.path.exists(target) and not os.access(target, os.W_OK):
            raise PermissionError(13, "Permission denied")
    except OSError as exc:
        raise ConfigError(
            f"cannot write {path} ({exc.strerror or exc}); expected a writable file in an existing directory",
            where=where,
        ) from None


def check_finite_tensors(tensors: Iterable[tuple[str, torch.Tensor]], where: str) -> None:
    """Every floating tensor finite: a NaN or inf would spread into every trained row."""
    for name, tensor in tensors:
        if not tensor.is_floating_point() or tensor.numel() == 0:
            continue
        # min and max carry any NaN or inf: one fast reduction (isfinite over a bfloat16
        # matrix is ten times slower); the full mask only when something is wrong
        if bool(torch.isfinite(torch.stack(torch.aminmax(tensor.detach()))).all()):
            continue
        bad = ~torch.isfinite(tensor)
        if bool(bad.any()):
            first = bad.nonzero()[0].tolist()
            kind = "NaN" if bool(torch.isnan(tensor).any()) else "inf"
            raise InputError(
                f"tensor {name} holds {int(bad.sum())} {kind} values (first at {first}); expected finite weights",
                where=where,
            )


def read_text_file(path: Path, where: str) -> str:
    """A small text file of a model directory (model card), UTF-8, or one line naming it."""
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(
            f"cannot read {path} ({exc.strerror or exc}); expected a readable file", where=where
        ) from None
    except UnicodeDecodeError as exc:
        raise InputError(
            f"{path} is not UTF-8 text (byte {exc.start}); expected a UTF-8 model card",
            where=where,
        ) from None


def require_local_dir(path: str, where: str) -> None:
    """Commands that read a model's own files need it on disk: a missing relative path must
    not turn into a hub lookup (``couldn't connect to huggingface.co``)."""
    if not os.path.isdir(os.path.expanduser(path)):
        what = (
            "is not a directory" if os.path.exists(os.path.expanduser(path)) else "does not exist"
        )
        raise InputError(f"{path} {what}; expected a local model directory", where=where)


def config_ints(model_dir: str | os.PathLike, where: str) -> None:
    """Integer fields of config.json (sizes, counts) are integers: a quoted ``"700"`` would
    fail deep inside transformers or mergekit with a traceback naming nothing."""
    f = Path(model_dir).expanduser() / "config.json"
    cfg: Any = read_json(f, where, "a model config") if f.is_file() else None
    if not isinstance(cfg, dict):
        return
    keys = (
        "vocab_size",
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "intermediate_size",
        "max_position_embeddings",
        "head_dim",
    )
    for c, prefix in ((cfg, ""), (cfg.get("text_config"), "text_config.")):
        if not isinstance(c, dict):
            continue
        for key in keys:
            value = c.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise InputError(
                    f"{f}: {prefix}{key} is {value!r}; expected an integer", where=where
                )
