"""Up-front checks of model and donor directories, before any weight is loaded.

Failing here gives the user a one-line error naming the path and what was expected, instead
of a traceback from deep inside transformers halfway through a merge. Only headers and small
JSON files are read; the weight files checked are exactly those mergekit's loader will open.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any

from mergekit_tokenplug import settings
from mergekit_tokenplug.errors import InputError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.txt", "vocab.json")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
WEIGHT_SUFFIXES = (*PICKLE_SUFFIXES, ".safetensors")
# What mergekit 0.1.5's ShardedTensorIndex.from_disk looks for, in its order.
WEIGHT_NAMES = ("model.safetensors", "pytorch_model.bin")
MAX_HEADER = 100 << 20  # safetensors' own limit on a header


def model_path(path: str) -> str:
    """Where a model reference points on disk: ``~`` is expanded (validation and runs alike)."""
    return os.path.expanduser(path)


def is_local(path: str) -> bool:
    return os.path.exists(path) or path.startswith((".", "/", "~"))


def read_json(path: Path, where: str, what: str = "a JSON file") -> Any:
    """A small JSON file, or a one-line error naming it."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InputError(
            f"cannot read {path} ({exc.strerror or exc}); expected a readable file", where=where
        ) from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        why = f"{path} is not valid JSON ({exc}); expected {what}"
        raise InputError(why, where=where) from None


def weight_files(path: str | Path, where: str = "") -> list[Path]:
    """The weight files mergekit's loader will open for a model directory (same rules).

    ``model.safetensors`` (or its index) wins over ``pytorch_model.bin``; an index names
    the shards. Other files in the directory are never read, so they decide nothing.
    """
    p = Path(path).expanduser()
    for name in WEIGHT_NAMES:
        index = p / f"{name}.index.json"
        if index.exists():
            data = read_json(index, where, "a sharded-checkpoint index with a weight_map")
            weight_map = data.get("weight_map") if isinstance(data, dict) else None
            if not isinstance(weight_map, dict) or not weight_map:
                raise InputError(
                    f"{index} has no weight_map; expected a sharded-checkpoint index", where=where
                )
            shards = [
                p / shard_name(index, s, where) for s in sorted(set(map(str, weight_map.values())))
            ]
            for shard in shards:
                if not shard.is_file():
                    raise InputError(
                        f"{index} names the shard {shard.name}, which does not exist; expected every shard next to the index",
                        where=where,
                    )
            return shards
        if (p / name).exists():
            return [p / name]
    return []


def shard_name(index: Path, name: str, where: str) -> str:
    """A shard named by an index: a plain relative path inside the model folder (as
    transformers requires); ``../victim.safetensors`` or an absolute path is refused."""
    norm = os.path.normpath(name)
    if os.path.isabs(name) or norm == ".." or norm.startswith(".." + os.sep) or not name:
        raise InputError(
            f"{index} names the shard {name!r}, outside the model folder; expected shard files inside the folder of the index",
            where=where,
        )
    return norm


def is_pickle(files: list[Path]) -> bool:
    return any(not f.name.lower().endswith(".safetensors") for f in files)


def safetensors_header(path: Path, where: str) -> dict[str, Any]:
    """A safetensors header, checked against the file's size (tensor name -> dtype/shape/offsets)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(8)
            n = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
            if n < 2 or n > MAX_HEADER or 8 + n > size:
                raise InputError(
                    f"{path} is not a safetensors file (truncated or corrupt header, {size} bytes); expected a complete safetensors checkpoint",
                    where=where,
                )
            header = json.loads(fh.read(n))
    except OSError as exc:
        raise InputError(
            f"cannot read {path} ({exc.strerror or exc}); expected a readable file", where=where
        ) from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise InputError(
            f"{path} has a corrupt safetensors header (not JSON); expected a complete safetensors checkpoint",
            where=where,
        ) from None
    if not isinstance(header, dict):
        raise InputError(f"{path} has a corrupt safetensors header", where=where)
    data = size - 8 - n
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    for name, info in tensors.items():
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1] <= data
        ):
            raise InputError(
                f"{path}: tensor {name} has data offsets {offsets} outside the file's {data} data bytes; expected a complete safetensors checkpoint",
                where=where,
            )
    return tensors


def tensor_shapes(path: str | Path, where: str = "") -> dict[str, list[int]]:
    """Shape of every tensor of a safetensors checkpoint, from its headers only."""
    shapes: dict[str, list[int]] = {}
    for f in weight_files(path, where):
        if not is_pickle([f]):
            shapes.update({k: v.get("shape", []) for k, v in safetensors_header(f, where).items()})
    return shapes


def check_model_dir(
    path: str,
    *,
    where: str,
    need_weights: bool = True,
    need_tokenizer: bool = False,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
) -> None:
    """Validate a local model directory; hub ids are left to mergekit (offline they fail there)."""
    if not is_local(path):
        return
    p = Path(path).expanduser()
    if not p.exists():
        raise InputError(f"{path} does not exist; expected a model directory", where=where)
    if not p.is_dir():
        raise InputError(f"{path} is not a directory; expected a model directory", where=where)
    if need_tokenizer and not any((p / name).exists() for name in TOKENIZER_FILES):
        raise InputError(
            f"{path} has no tokenizer (none of {', '.join(TOKENIZER_FILES)}); expected a model or tokenizer directory",
            where=where,
        )
    if not trust_remote_code:
        for f in (p / "config.json", p / "tokenizer_config.json"):
            data = read_json(f, where) if f.exists() else None
            if isinstance(data, dict) and data.get("auto_map"):
                raise InputError(
                    f"{f} asks for remote code (auto_map); the plugin never runs a model's own code — expected a model transformers supports natively",
                    where=where,
                )
    f = p / "tokenizer.json"
    data = read_json(f, where, "a tokenizers tokenizer.json") if f.exists() else None
    model = data.get("model") if isinstance(data, dict) else None
    vocab = model.get("vocab") if isinstance(model, dict) else None
    if isinstance(vocab, dict):
        seen: dict[Any, str] = {}
        for token, token_id in vocab.items():
            if token_id in seen:
                raise InputError(
                    f"{f} gives id {token_id} to both {seen[token_id]!r} and {token!r}; expected one token per id",
                    where=where,
                )
            seen[token_id] = token
    added = data.get("added_tokens") if isinstance(data, dict) else None
    names = [a.get("content") for a in added or [] if isinstance(a, dict)]
    for token in [*(vocab or {}), *names]:
        if isinstance(token, str) and not _is_utf8(token):
            raise InputError(
                f"{f} holds the token {token!r} with a lone surrogate (not UTF-8 text); expected a valid tokenizer.json",
                where=where,
            )
    if not need_weights:
        return
    config = p / "config.json"
    if not config.exists():
        raise InputError(
            f"{path} has no config.json; expected a Hugging Face model directory", where=where
        )
    if not isinstance(read_json(config, where, "a model config"), dict):
        raise InputError(f"{config} is not a JSON object; expected a model config", where=where)
    files = weight_files(p, where)
    if not files:
        others = [f.name for f in sorted(p.iterdir()) if f.suffix in WEIGHT_SUFFIXES]
        found = f" (found only {', '.join(others[:3])}, which mergekit does not read)"
        raise InputError(
            f"{path} has no weights mergekit can load{found if others else ''}; expected model.safetensors, pytorch_model.bin or a sharded index of either",
            where=where,
        )
    if is_pickle(files):
        if not (allow_pickle or settings.flag(settings.ALLOW_PICKLE)):
            raise InputError(
                f"{path} would be loaded from pickle checkpoints ({', '.join(f.name for f in files[:3])}); loading them can run arbitrary code — convert to safetensors, or opt in with --allow-pickle / {settings.ALLOW_PICKLE}=1",
                where=where,
            )
        return
    for f in files:
        safetensors_header(f, where)


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def hidden_size(path: str | Path) -> int | None:
    """The model's width from config.json (``hidden_size`` or its usual aliases)."""
    f = Path(path).expanduser() / "config.json"
    if not f.is_file():
        return None
    cfg = read_json(f, str(path))
    if not isinstance(cfg, dict):
        return None
    for c in (cfg, cfg.get("text_config") or {}):
        for key in ("hidden_size", "d_model", "n_embd"):
            if isinstance(c.get(key), int):
                return c[key]
    return None


def embedding_widths(path: str | Path) -> set[int]:
    """Widths config.json allows for the vocabulary matrices: the hidden size, or a separate
    embedding width where the architecture projects (OPT's word_embed_proj_dim, ALBERT's
    embedding_size). Empty when the config names none."""
    f = Path(path).expanduser() / "config.json"
    cfg = read_json(f, str(path)) if f.is_file() else None
    if not isinstance(cfg, dict):
        return set()
    found = set()
    for c in (cfg, cfg.get("text_config") or {}):
        for key in ("hidden_size", "d_model", "n_embd", "word_embed_proj_dim", "embedding_size"):
            if isinstance(c, dict) and isinstance(c.get(key), int):
                found.add(c[key])
    return found


def check_same_width(paths: list[str], where: str = "models") -> None:
    """Models merged together must have one hidden size; name both widths when they differ."""
    widths = {p: hidden_size(p) for p in paths if os.path.isdir(os.path.expanduser(p))}
    known = {p: w for p, w in widths.items() if w is not None}
    if len(set(known.values())) > 1:
        ordered = sorted(known.items(), key=lambda kv: kv[1])
        (a, wa), (b, wb) = ordered[0], ordered[-1]
        raise InputError(
            f"{a} has hidden size {wa} but {b} has {wb}; expected models of one width to merge (a transplant between widths uses tokenizer.source, not a second model)",
            where=where,
        )
