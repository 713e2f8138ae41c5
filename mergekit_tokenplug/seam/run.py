"""Wraps ``mergekit.merge.run_merge`` for recipes that use the plugin's keys.

The stock merge writes into a temporary sibling of OUT; the plugin then fixes the config
(row count, token ids), adds its model-card section and the manifest, and only then moves
the directory into place. A failure anywhere leaves no OUT that looks complete.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pydantic
from mergekit.common import ModelPath, ModelReference

from mergekit_tokenplug import report, settings
from mergekit_tokenplug.compute.distributed import is_main_process
from mergekit_tokenplug.inputs import check_model_dir, model_path
from mergekit_tokenplug.output.atomic import atomic_directory
from mergekit_tokenplug.output.card import model_card, vocabulary_section
from mergekit_tokenplug.output.config_fix import fix_config
from mergekit_tokenplug.output.manifest import input_record, write_manifest
from mergekit_tokenplug.seam.roles import needs_donor_embeddings, tokenizer_donor
from mergekit_tokenplug.seam.schema import uses_plugin

LOG = logging.getLogger("mergekit_tokenplug")


def apply(merge_module: ModuleType) -> None:
    original = merge_module.run_merge
    if getattr(original, "_tokenplug_wrapped", False):
        return

    @functools.wraps(original)
    def run_merge(merge_config, out_path, options, config_source=None):
        if not uses_plugin(merge_config):
            return original(merge_config, out_path, options, config_source=config_source)
        return run_plugin_merge(original, merge_config, out_path, options, config_source)

    run_merge._tokenplug_wrapped = True  # type: ignore[attr-defined]
    merge_module.run_merge = run_merge


def run_plugin_merge(
    original: Any,
    merge_config: Any,
    out_path: str,
    options: Any,
    config_source: str | None,
    overwrite: bool = False,
    allow_pickle: bool = False,
) -> None:
    """Stock merge into a temp dir, then finalize and move into place."""
    recipe = config_source or merge_config.to_yaml()
    expand_model_paths(merge_config)
    check_inputs(merge_config, allow_pickle=allow_pickle)
    report.reset()
    if not is_main_process():
        # Launched with N processes: this one only computes its share of the estimated rows
        # (the collectives inside the seam); the main process writes the checkpoint.
        with (
            tempfile.TemporaryDirectory(prefix="tokenplug-worker-") as scratch,
            discard_tensor_writes(),
        ):
            quiet = options.model_copy(update={"write_model_card": False, "quiet": True})
            original(merge_config, scratch, quiet, config_source=recipe)
        return
    # The plugin writes the whole card itself: stock card generation looks local relative
    # paths up on the hub, which fails offline and in CI.
    write_card = options.write_model_card
    with atomic_directory(out_path, overwrite=overwrite) as tmp:
        original(
            merge_config,
            str(tmp),
            options.model_copy(update={"write_model_card": False}),
            config_source=recipe,
        )
        finalize(tmp, merge_config, recipe, options, write_card=write_card)
    LOG.info("wrote %s", out_path)


def expand_model_paths(node: Any) -> None:
    """Point every model reference where validation looked (``inputs.model_path``: ``~``
    expanded), in place: the config is frozen, and its references are shared by the plan."""
    if isinstance(node, ModelPath):
        if node.path != model_path(node.path):
            object.__setattr__(node, "path", model_path(node.path))
    elif isinstance(node, pydantic.BaseModel):
        for name in type(node).model_fields:
            expand_model_paths(getattr(node, name))
    elif isinstance(node, list | tuple):
        for item in node:
            expand_model_paths(item)
    elif isinstance(node, dict):
        for item in node.values():
            expand_model_paths(item)


class _DiscardingWriter:
    """Stands in for mergekit's TensorWriter on worker processes: accepts tensors, writes nothing."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def save_tensor(self, name: str, tensor: Any, clone: bool = False) -> None:
        pass

    def finalize(self) -> None:
        pass


@contextlib.contextmanager
def discard_tensor_writes() -> Iterator[None]:
    import mergekit.io.tasks as io_tasks

    real = io_tasks.TensorWriter
    io_tasks.TensorWriter = _DiscardingWriter
    try:
        yield
    finally:
        io_tasks.TensorWriter = real


def check_inputs(merge_config: Any, allow_pickle: bool = False) -> None:
    """Fail fast, with the path in the message, before mergekit touches any weight."""
    for model in sorted(merge_config.referenced_models(), key=str):
        check_model_dir(
            model.model.path, where=f"models: {model.model.path}", allow_pickle=allow_pickle
        )
    donor = tokenizer_donor(merge_config)
    if donor is not None:
        check_model_dir(
            donor.model.path,
            where="tokenizer.source",
            need_tokenizer=True,
            need_weights=needs_donor_embeddings(merge_config),
            allow_pickle=allow_pickle,
        )


TOOL_PRIORS_NAME = "tool_token_priors.safetensors"


def write_tool_priors(out_dir: Path, merge_config: Any) -> None:
    """Export the tool-token priors (the base model's) so training code can regularize toward them.

    Keys: ``prior/<weight name>`` (one ``(n, d)`` tensor per written matrix) plus ``token_ids``;
    metadata ``tokens`` (JSON list, same order) and ``model``.
    """
    records = report.tool_rows()
    if not records:
        return
    import json

    import torch
    from safetensors.torch import save_file

    base = str(merge_config.base_model) if merge_config.base_model else records[0]["model"]
    mine = [r for r in records if r["model"] == base] or [
        r for r in records if r["model"] == records[0]["model"]
    ]
    tensors = {f"prior/{r['weight']}": r["rows"].contiguous() for r in mine}
    tensors["token_ids"] = torch.tensor(mine[0]["ids"], dtype=torch.int64)
    save_file(
        tensors,
        str(out_dir / TOOL_PRIORS_NAME),
        metadata={"tokens": json.dumps(mine[0]["tokens"]), "model": mine[0]["model"]},
    )


def finalize(
    out_dir: Path, merge_config: Any, recipe: str, options: Any, write_card: bool = True
) -> dict[str, Any]:
    """Config fix-ups, generation config, model card section and manifest."""
    import transformers

    snap = report.snapshot()
    rows = snap["vocabulary"].get("output_rows")
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(out_dir))
    source = merge_config.tokenizer.source
    if isinstance(source, ModelReference):
        gen = Path(source.model.path) / "generation_config.json"
        if gen.exists() and not (out_dir / "generation_config.json").exists():
            shutil.copyfile(gen, out_dir / "generation_config.json")
    changes = fix_config(out_dir, rows=rows, tokenizer=tokenizer)
    write_tool_priors(out_dir, merge_config)
    approx = merge_config.tokenizer.approximation
    if write_card:
        section = vocabulary_section(
            method=approx.method, params=approx.method_params(), report=snap
        )
        (out_dir / "README.md").write_text(
            model_card(merge_config, recipe, section), encoding="utf-8"
        )
        (out_dir / "mergekit_config.yml").write_text(recipe, encoding="utf-8")
    for rec in snap["matrices"]:
        LOG.info(
            "%s %s: copied %d, estimated %d (%s), padded %d",
            rec["model"],
            rec["weight"],
            rec["copied"],
            rec["estimated"],
            rec["by_method"],
            rec["padded"],
        )
    inputs = [
        {"role": "model", **input_record(m.model.path)}
        for m in sorted(merge_config.referenced_models(), key=str)
    ]
    donor = tokenizer_donor(merge_config)
    if donor is not None:
        inputs.append({"role": "donor", **input_record(donor.model.path)})
    write_manifest(
        out_dir,
        inputs=inputs,
        recipe=recipe,
        report=snap,
        extra={
            "config_changes": changes,
            "seed": options.random_seed,
            "settings": settings.output_settings(),
        },
    )
    return snap
