"""Wraps ``mergekit.merge.run_merge`` for recipes that use the plugin's keys.

The stock merge writes into a temporary sibling of OUT; the plugin then fixes the config
(row count, token ids), adds its model-card section and the manifest, and only then moves
the directory into place. A failure anywhere leaves no OUT that looks complete.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import mergekit.io.tasks as io_tasks
import pydantic
import torch
import transformers
from mergekit.common import ModelPath, ModelReference, dtype_from_name
from mergekit.tokenizer.build import get_vocab_size
from safetensors.torch import save_file

from mergekit_tokenplug import report, settings
from mergekit_tokenplug.compute.distributed import is_main_process
from mergekit_tokenplug.errors import InputError
from mergekit_tokenplug.guards import config_ints
from mergekit_tokenplug.inputs import (
    check_model_dir,
    check_same_width,
    embedding_widths,
    hidden_size,
    is_local,
    is_pickle,
    model_path,
    tensor_shapes,
    weight_files,
)
from mergekit_tokenplug.output.atomic import atomic_directory
from mergekit_tokenplug.output.bos import match_bos
from mergekit_tokenplug.output.card import model_card, vocabulary_section
from mergekit_tokenplug.output.config_fix import fix_config, strip_loader_flags
from mergekit_tokenplug.output.manifest import input_record, write_manifest
from mergekit_tokenplug.output.modes import apply_umask
from mergekit_tokenplug.output.side_files import TOOL_PRIORS
from mergekit_tokenplug.resources.corpus import corpus_matches
from mergekit_tokenplug.seam.chat import chat_plan, write_chat_template
from mergekit_tokenplug.seam.roles import needs_donor_embeddings, role_weight, tokenizer_donor
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
        # Stock commands write into a non-empty OUT and keep the other files there
        # (mergekit-multi --no-lazy re-runs stages in place); the refusal of a non-empty OUT
        # is for mergekit-tokenplug's own commands.
        return run_plugin_merge(
            original, merge_config, out_path, options, config_source, keep_others=True
        )

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
    keep_others: bool = False,
) -> None:
    """Stock merge into a temp dir, then finalize and move into place."""
    recipe = config_source or merge_config.to_yaml()
    note = merge_config.tokenizer.approximation.choice_note
    if note:
        LOG.warning(note)
    expand_model_paths(merge_config)
    check_inputs(
        merge_config, allow_pickle=allow_pickle, trust_remote_code=options.trust_remote_code
    )
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
    stock = options.model_copy(update={"write_model_card": False})
    with atomic_directory(
        out_path, inputs=input_paths(merge_config), overwrite=overwrite, keep_others=keep_others
    ) as tmp:
        original(merge_config, str(tmp), stock, config_source=recipe)
        name = Path(out_path).name
        finalize(tmp, merge_config, recipe, options, write_card=options.write_model_card, name=name)
    LOG.info("wrote %s", out_path)


def expand_model_paths(node: Any) -> None:
    """Point every model reference where validation looked (``inputs.model_path``: ``~``
    expanded), in place: the config is frozen, and its references are shared by the plan."""
    if isinstance(node, ModelPath):
        object.__setattr__(node, "path", model_path(node.path))
    elif isinstance(node, pydantic.BaseModel):
        for name in type(node).model_fields:
            expand_model_paths(getattr(node, name))
    elif isinstance(node, list | tuple | dict):
        for item in node.values() if isinstance(node, dict) else node:
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
    real = io_tasks.TensorWriter
    io_tasks.TensorWriter = _DiscardingWriter
    try:
        yield
    finally:
        io_tasks.TensorWriter = real


def input_paths(merge_config: Any) -> list[str]:
    """Every directory and file the run reads: the models, a tokenizer source, a method's
    corpus files and embedder (OUT may hold none of them, even with --overwrite)."""
    refs = [*merge_config.referenced_models(), merge_config.tokenizer.source]
    paths = [r.model.path for r in refs if isinstance(r, ModelReference)]
    approx = getattr(merge_config.tokenizer, "approximation", None)
    params = approx.method_params() if approx is not None else {}
    corpus = params.get("corpus")
    for pattern in corpus if isinstance(corpus, list) else [corpus] if corpus else []:
        paths += corpus_matches(str(pattern))
    embedder = params.get("embedder")
    if isinstance(embedder, str) and is_local(model_path(embedder)):
        paths.append(model_path(embedder))
    return paths


def check_inputs(
    merge_config: Any, allow_pickle: bool = False, trust_remote_code: bool = False
) -> None:
    """Fail fast, with the path in the message, before mergekit touches any weight."""
    for key in ("dtype", "out_dtype"):
        name = getattr(merge_config, key, None)
        try:
            dtype_from_name(name)
        except RuntimeError:
            raise InputError(
                f"{name!r} is not a dtype mergekit knows; expected bfloat16, float16, float32 or float64",
                where=key,
            ) from None
    models = sorted(merge_config.referenced_models(), key=str)
    for model in models:
        where = f"models: {model.model.path}"
        check_model_dir(
            model.model.path,
            where=where,
            allow_pickle=allow_pickle,
            trust_remote_code=trust_remote_code,
        )
        check_embedding_rows(model, where, trust_remote_code)
    check_same_width([m.model.path for m in models])
    donor = tokenizer_donor(merge_config)
    if donor is not None:
        need_weights = needs_donor_embeddings(merge_config)
        check_model_dir(
            donor.model.path,
            where="tokenizer.source",
            need_tokenizer=True,
            need_weights=need_weights,
            allow_pickle=allow_pickle,
            trust_remote_code=trust_remote_code,
        )
        if need_weights:
            check_embedding_rows(donor, "tokenizer.source", trust_remote_code)


def check_embedding_rows(model: ModelReference, where: str, trust_remote_code: bool) -> None:
    """The vocabulary tensors exist, their row count is the config's ``vocab_size`` and their
    width its hidden size (read from the safetensors headers; pickles are left to the run):
    an output copies the config, and a config that disagrees with its weights does not load."""
    path = model.model.path
    if not is_local(path) or is_pickle(weight_files(path, where)):
        return
    config_ints(path, where)
    shapes = tensor_shapes(path, where)
    declared = get_vocab_size(model.model, trust_remote_code=trust_remote_code)
    widths = embedding_widths(path)
    for role in ("input", "output"):
        try:
            weight = role_weight(model, role, trust_remote_code)
        except InputError:  # an architecture mergekit does not know: its own error follows
            return
        names = [weight.name, *(weight.aliases or ()), *(weight.tied_names or ())]
        found = next((n for n in names if n in shapes), None)
        if found is None:
            if weight.optional:
                continue
            raise InputError(
                f"{path} has no tensor {weight.name} (the {role} embeddings); expected a complete checkpoint of its architecture",
                where=where,
            )
        rows = shapes[found][0] if shapes[found] else 0
        if declared and rows != declared:
            raise InputError(
                f"{path}: {found} has {rows} rows but config.json declares vocab_size {declared}; expected them to agree",
                where=where,
            )
        cols = shapes[found][1] if len(shapes[found]) == 2 else None
        if widths and cols is not None and cols not in widths:
            raise InputError(
                f"{path}: {found} is {cols} wide but config.json declares hidden_size {hidden_size(path)}; expected them to agree",
                where=where,
            )


def write_tool_priors(out_dir: Path, merge_config: Any) -> str | None:
    """Export the tool-token priors (the base model's) so training code can regularize toward them.

    Keys: ``prior/<weight name>`` (one ``(n, d)`` tensor per written matrix) plus ``token_ids``;
    metadata ``tokens`` (JSON list, same order) and ``model``.
    """
    records = report.tool_rows()
    if not records:
        return None
    base = str(merge_config.base_model) if merge_config.base_model else None
    owner = base if any(r["model"] == base for r in records) else records[0]["model"]
    mine = [r for r in records if r["model"] == owner]
    tensors = {f"prior/{r['weight']}": r["rows"].contiguous() for r in mine}
    tensors["token_ids"] = torch.tensor(mine[0]["ids"], dtype=torch.int64)
    path = out_dir / TOOL_PRIORS
    path.parent.mkdir(exist_ok=True)
    save_file(
        tensors,
        str(path),
        metadata={"tokens": json.dumps(mine[0]["tokens"]), "model": mine[0]["model"]},
    )
    return TOOL_PRIORS


def finalize(
    out_dir: Path,
    merge_config: Any,
    recipe: str,
    options: Any,
    write_card: bool = True,
    name: str = "Merged model",
) -> None:
    """Config fix-ups, generation config, model card section and manifest."""
    snap = report.snapshot()
    models = sorted(merge_config.referenced_models(), key=str)
    base = merge_config.base_model or models[0]  # the model whose conventions the output keeps
    bos = match_bos(out_dir, base.model.path, merge_config.tokenizer.add_bos)
    chat = write_chat_template(out_dir, chat_plan(merge_config, options.trust_remote_code))
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(out_dir))
    source = merge_config.tokenizer.source
    if isinstance(source, ModelReference):
        gen = Path(source.model.path) / "generation_config.json"
        if gen.exists() and not (out_dir / "generation_config.json").exists():
            shutil.copyfile(gen, out_dir / "generation_config.json")
    changes = fix_config(out_dir, rows=snap["vocabulary"].get("output_rows"), tokenizer=tokenizer)
    strip_loader_flags(out_dir)
    priors = write_tool_priors(out_dir, merge_config)
    approx = merge_config.tokenizer.approximation
    if write_card:
        section = vocabulary_section(
            method=approx.method,
            params=approx.method_params(),
            report=snap,
            bos=bos,
            method_note=approx.choice_note,
            chat=chat,
        )
        (out_dir / "README.md").write_text(
            model_card(merge_config, recipe, section, name=name), encoding="utf-8"
        )
        (out_dir / "mergekit_config.yml").write_text(recipe, encoding="utf-8")
    logged = ("model", "weight", "copied", "estimated", "by_method", "padded")
    for rec in snap["matrices"]:
        LOG.info("%s %s: copied %d, estimated %d (%s), padded %d", *(rec[k] for k in logged))
    inputs = [{"role": "model", **input_record(m.model.path)} for m in models]
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
            "method": {"name": approx.method, "note": approx.choice_note},
            "seed": options.random_seed,
            "bos": bos,
            "chat_template": chat,
            "side_files": {"tool_token_priors": priors} if priors else {},
            "settings": settings.output_settings(),
        },
    )
    apply_umask(out_dir)
