"""``mergekit-tokenplug``: transplant, list methods, evaluate (and more subcommands)."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, get_args

import click
import yaml

from mergekit_tokenplug import settings
from mergekit_tokenplug.assets_cli import assets as assets_command
from mergekit_tokenplug.compute.distributed import is_main_process, launched_world_size
from mergekit_tokenplug.compute.progress import bar_policy
from mergekit_tokenplug.errors import ConfigError, TokenplugError, one_line_error
from mergekit_tokenplug.evaluate.bpb import evaluate_models, format_table
from mergekit_tokenplug.gguf_cli import gguf as gguf_command
from mergekit_tokenplug.guards import check_device, check_number, check_seed, check_writable_file
from mergekit_tokenplug.heal.adapter import DEFAULT_LORA, LoraSettings
from mergekit_tokenplug.heal.command import run_heal
from mergekit_tokenplug.heal.defaults import DEFAULT_DISTILL, Adapter, Matrices, defaults_help
from mergekit_tokenplug.heal.distill import DistillWeights
from mergekit_tokenplug.heal.rows import RowChoice
from mergekit_tokenplug.output.card import HEAL_FIGURES
from mergekit_tokenplug.recipes.cli import commands as recipe_commands
from mergekit_tokenplug.registry import DEFAULT_METHOD, TOKENIZER_ONLY_METHOD, all_methods
from mergekit_tokenplug.resources.corpus import read_text_strict


def parse_params(pairs: tuple[str, ...]) -> dict[str, Any]:
    """``--param key=value`` pairs; values are read as YAML scalars/lists (``k=64`` is an int)."""
    params: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"expected key=value, got {pair!r}", where="--param")
        try:
            params[key.strip()] = yaml.safe_load(value) if value.strip() else ""
        except yaml.YAMLError as exc:
            raise ConfigError(
                f"{value!r} is not a YAML value ({getattr(exc, 'problem', None) or exc}); expected a number, string or [list]",
                where=f"--param {key.strip()}",
            ) from None
    return params


def json_option(help_text: str | None = None) -> Any:
    """``--json FILE``, the same option on every command that can also write its result."""
    return click.option("--json", "json_out", type=click.Path(dir_okay=False), help=help_text)


def write_json(path: str | None, data: Any) -> None:
    if path:
        Path(path).write_text(json.dumps(data, indent=2), encoding="utf-8")


_VERBOSE = {"on": False}


def setup_logging(quiet: bool, verbose: int) -> None:
    _VERBOSE["on"] = verbose > 0
    worker = launched_world_size() > 1 and os.environ.get("RANK", "0") != "0"
    level = logging.WARNING if quiet or worker else (logging.DEBUG if verbose > 1 else logging.INFO)
    logging.basicConfig(
        level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )


class OneLineGroup(click.Group):
    """Anything that escapes a command becomes ``Error: <one line>`` and exit 1; ``-v``
    shows the traceback instead. Progress bars follow ``compute.progress.bar_policy``."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            with bar_policy(quiet=False):  # a command's --quiet tightens it further
                return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as exc:
            if _VERBOSE["on"]:
                raise
            raise ConfigError(one_line_error(exc)) from None


def set_hub_ids(pairs: tuple[str, ...], roles: dict[str, str]) -> None:
    """``--hub-id``: add ``PATH=ORG/NAME`` pairs (``base=`` / ``donor=`` name the inputs) to
    MERGEKIT_TOKENPLUG_HUB_IDS, which the model card reads."""
    if not pairs:
        return
    added = []
    for pair in pairs:
        key, sep, hub = pair.partition("=")
        if not sep or not key.strip() or "/" not in hub.strip():
            raise ConfigError(
                f"expected base=ORG/NAME, donor=ORG/NAME or PATH=ORG/NAME, got {pair!r}",
                where="--hub-id",
            )
        added.append(f"{roles.get(key.strip(), key.strip())}={hub.strip()}")
    current = os.environ.get(settings.HUB_IDS, "")
    os.environ[settings.HUB_IDS] = ",".join(filter(None, [current, *added]))


@click.group(
    cls=OneLineGroup,
    context_settings={"help_option_names": ["-h", "--help"], "show_default": True},
)
@click.version_option(package_name="mergekit-tokenplug")
def main() -> None:
    """Principled tokenizer transplantation for mergekit."""


@main.command()
@click.argument("base")
@click.argument("donor")
@click.argument("out")
@click.option(
    "--method",
    "-m",
    default=None,
    show_default=False,
    help=f"Approximation method (see `mergekit-tokenplug methods`).  [default: {DEFAULT_METHOD}; "
    f"{TOKENIZER_ONLY_METHOD} when DONOR is a tokenizer without weights]",
)
@click.option("--k", type=int, help="OMP sparsity (shortcut for --param k=N).")
@click.option(
    "--param",
    "-p",
    "param_pairs",
    multiple=True,
    metavar="KEY=VALUE",
    help="Method parameter; repeatable.",
)
@click.option("--device", default="cpu", help="cpu, cuda, cuda:N or auto.")
@click.option("--seed", type=int, help="Seed for stochastic methods.")
@click.option(
    "--dtype",
    help="Compute/output dtype (e.g. float32, bfloat16); default: the inputs'.",
)
@click.option(
    "--pad-to-multiple-of",
    type=click.IntRange(min=1),
    help="Pad the output vocabulary to a multiple of N rows.",
)
@click.option(
    "--add-bos",
    type=click.Choice(["base", "source"]),
    default="base",
    help="The output tokenizer adds BOS like BASE's tokenizer, or like DONOR's (source: e.g. "
    "a draft model that must tokenize exactly like its target).",
)
@click.option(
    "--chat-template",
    type=click.Choice(["base", "source", "none"]),
    default="base",
    help="The output's chat template: BASE's own (none if it has none), DONOR's (its default "
    "system prompt included) or none.",
)
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists and is not empty.")
@click.option(
    "--allow-pickle", is_flag=True, help="Allow loading .bin/.pt pickle checkpoints (can run code)."
)
@click.option("--dry-run", is_flag=True, help="Print the recipe that would run and exit.")
@click.option(
    "--hub-id",
    "hub_pairs",
    multiple=True,
    metavar="base|donor|PATH=ORG/NAME",
    help="The Hub id the model card names for an input (base_model / tokenizer_source); "
    "repeatable. Same as MERGEKIT_TOKENPLUG_HUB_IDS.",
)
@json_option("Write a JSON summary of the run.")
@click.option("--quiet", "-q", is_flag=True, help="Warnings only, no progress bars.")
@click.option("--verbose", "-v", count=True, show_default=False)
def transplant(
    base: str,
    donor: str,
    out: str,
    method: str | None,
    k: int | None,
    param_pairs: tuple[str, ...],
    device: str,
    overwrite: bool,
    allow_pickle: bool,
    dry_run: bool,
    hub_pairs: tuple[str, ...],
    json_out: str | None,
    quiet: bool,
    verbose: int,
    **recipe_options: Any,
) -> None:
    """Give BASE the tokenizer of DONOR, writing a new checkpoint to OUT."""
    from mergekit_tokenplug import surgery  # lazy: keeps the CLI's start-up fast

    setup_logging(quiet, verbose)
    check_seed(recipe_options.get("seed"))
    set_hub_ids(hub_pairs, {"base": base, "donor": donor})
    params = parse_params(param_pairs)
    if k is not None:
        if "k" in params and params["k"] != k:
            raise ConfigError(
                f"--k {k} and -p k={params['k']} disagree; expected one of them", where="--k"
            )
        params["k"] = k
    if dry_run:
        # lazy: keeps the CLI's start-up fast
        from mergekit_tokenplug.recipes.plan import format_plan

        plan = surgery.plan_transplant(base, donor, method, params, device=device, **recipe_options)
        click.echo(yaml.safe_dump(plan["recipe"], sort_keys=False), nl=False)
        click.echo(format_plan(plan))
        return
    check_writable_file(json_out, "--json", outside=[out])
    summary = surgery.transplant(
        base,
        donor,
        out,
        method,
        params,
        device=device,
        overwrite=overwrite,
        quiet=quiet,
        allow_pickle=allow_pickle,
        **recipe_options,
    )
    if not is_main_process():
        return
    write_json(json_out, {"out": out, **summary})
    if not quiet:
        vocab = summary["vocabulary"]
        click.echo(
            f"wrote {out}: {vocab.get('output_tokens')} tokens in {vocab.get('output_rows')} rows"
        )


@main.command("methods")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def list_methods(as_json: bool) -> None:
    """List the registered approximation methods, their parameters and defaults."""

    def param(name: str, f: Any) -> dict[str, Any]:
        default = "(required)" if f.is_required() else f.get_default(call_default_factory=True)
        kind = f.annotation
        return {
            "name": name,
            "type": kind.__name__ if isinstance(kind, type) else str(kind).replace("typing.", ""),
            "default": default,
            "help": f.description or "",
        }

    records = [
        {
            "name": name,
            "summary": spec.summary,
            "needs": sorted(n.value for n in spec.needs),
            "fallback": spec.fallback,
            "params": [param(p, f) for p, f in spec.params.model_fields.items()],
        }
        for name, spec in sorted(all_methods().items())
    ]
    if as_json:
        click.echo(json.dumps(records, indent=2, default=str))
        return
    for rec in records:
        needs = ", ".join(rec["needs"]) or "nothing"
        click.echo(f"{rec['name']}: {rec['summary']}  [needs: {needs}]")
        for p in rec["params"]:
            click.echo(
                f"    {p['name']}: {p['type']} = {p['default']!r}"
                + (f"  {p['help']}" if p["help"] else "")
            )


@main.command()
@click.argument("models", nargs=-1, required=True)
@click.option(
    "--text",
    "texts",
    multiple=True,
    required=True,
    type=click.Path(),
    help="Text file; repeatable.",
)
@json_option("Write the records as JSON.")
@click.option(
    "--label",
    "labels",
    multiple=True,
    help="Name of each MODEL in the table and the figure, in order (default: its path).",
)
@click.option(
    "--plot",
    type=click.Path(dir_okay=False),
    help="Bar chart of bits per byte per text, a bar per model (PNG; needs matplotlib).",
)
@click.option("--device", default="cpu")
@click.option(
    "--window",
    type=int,
    help="Tokens per evaluation window.  [default: 512, or a model's context when shorter]",
)
@click.option("--allow-pickle", is_flag=True)
@click.option("--quiet", "-q", is_flag=True)
def evaluate(
    models: tuple[str, ...],
    texts: tuple[str, ...],
    json_out: str | None,
    labels: tuple[str, ...],
    plot: str | None,
    device: str,
    window: int | None,
    allow_pickle: bool,
    quiet: bool,
) -> None:
    """Bits per byte of each MODEL (with its own tokenizer) on each --text file."""
    # lazy: keeps the CLI's start-up fast
    from mergekit_tokenplug.evaluate.plot import plot_bpb, require_matplotlib

    if labels and len(labels) != len(models):
        raise click.BadParameter(
            f"{len(labels)} labels for {len(models)} models; give one per MODEL, in order",
            param_hint="--label",
        )
    if plot:
        require_matplotlib()
    setup_logging(quiet, 0)
    device = check_device(device)
    check_writable_file(json_out, "--json")
    check_writable_file(plot, "--plot")
    records = evaluate_models(
        list(models),
        list(texts),
        device=device,
        window=window,
        show_progress=not quiet,
        allow_pickle=allow_pickle,
    )
    per_model = len(records) // len(models)  # records come model by model, a text each
    for i, rec in enumerate(records):
        rec["label"] = labels[i // per_model] if labels else rec["model"]
    shown = [{**rec, "model": rec["label"]} for rec in records]
    click.echo(format_table(shown))
    write_json(json_out, records)
    if plot:
        plot_bpb(shown, plot)
        click.echo(f"figure: {plot}")


@main.command()
@click.argument("base")
@click.argument("donor")
@click.option(
    "--methods",
    help=(
        "Comma-separated methods (default: every registered method that can run on the pair); "
        "tokensurgeon:NAME (omp, common_interpolation, subword, mean, ...) adds "
        "mergekit-tokensurgeon's own method NAME with its defaults."
    ),
)
@click.option(
    "--hold-out",
    "hold_out",
    default=0.05,
    help="Fraction of the shared tokens hidden and estimated back.",
)
@click.option("--seed", default=0, help="Seed of the hidden draw.")
@click.option(
    "--text",
    "texts",
    multiple=True,
    type=click.Path(),
    help="Also transplant with each method and report bits per byte on this text; repeatable.",
)
@json_option()
@click.option("--plot", type=click.Path(dir_okay=False), help="Bar chart (needs matplotlib).")
@click.option("--quiet", "-q", is_flag=True)
def compare(
    base: str,
    donor: str,
    methods: str | None,
    hold_out: float,
    seed: int,
    texts: tuple[str, ...],
    json_out: str | None,
    plot: str | None,
    quiet: bool,
) -> None:
    """Which method is best for BASE wearing DONOR's tokenizer: hide shared tokens drawn like
    the missing ones, estimate them with each method, score per token category."""
    # lazy: keeps the CLI's start-up fast
    from mergekit_tokenplug.evaluate.compare import (
        compare_methods,
        format_report,
        plot_report,
    )
    from mergekit_tokenplug.evaluate.plot import require_matplotlib  # lazy, as above

    setup_logging(quiet, 0)
    check_number(hold_out, "--hold-out", low=0, high=1, low_open=True, high_open=True)
    check_seed(seed)
    check_writable_file(json_out, "--json")
    check_writable_file(plot, "--plot")
    for text in texts:  # an empty or binary --text fails now, not after the methods ran
        try:
            read_text_strict(text)
        except TokenplugError as exc:
            raise ConfigError(exc.message, where="--text") from None
    if plot:
        require_matplotlib()
    names = [m.strip() for m in methods.split(",") if m.strip()] if methods is not None else None
    if names is not None and not names:
        raise ConfigError("expected at least one method name", where="--methods")
    report = compare_methods(
        base, donor, names, fraction=hold_out, seed=seed, texts=texts, show_progress=not quiet
    )
    click.echo(format_report(report))
    write_json(json_out, report)
    if plot:
        plot_report(report, plot)


@main.command("learn-tool-tokens")
@click.argument("model", type=click.Path())
@click.argument("data", type=click.Path())
@click.argument("out", type=click.Path())
@click.option(
    "--tool-token",
    "tool_tokens",
    multiple=True,
    help="Tool token to train (default: those in the model's tokenplug/tool_token_priors.safetensors).",
)
@click.option("--steps", default=100)
@click.option("--lr", default=1e-2, help="Peak learning rate (cosine decay to lr/10).")
@click.option("--lam", default=1e-2, help="Weight of ||W - W0||_F (0 disables it).")
@click.option("--eval-fraction", default=0.2, help="Held-out share of DATA's rows.")
@click.option("--batch-size", default=8)
@click.option("--device", default="cpu")
@click.option("--seed", default=0)
@click.option("--overwrite", is_flag=True)
@click.option(
    "--allow-pickle", is_flag=True, help="Allow loading .bin/.pt pickle checkpoints (can run code)."
)
@json_option("Write the summary as JSON.")
@click.option("--quiet", "-q", is_flag=True)
@click.option("--verbose", "-v", count=True, show_default=False)
def learn_tool_tokens_command(model: str, data: str, out: str, **options: Any) -> None:
    """Train only the tool-token rows of MODEL on DATA.jsonl ({"prompt", "completion"} rows,
    loss on the completion); write OUT. The same as `heal MODEL OUT --corpus DATA.jsonl --rows
    tool` with these defaults."""
    heal.callback(model, out, (data,), rows="tool", matrices=None, **options)


def heal_objective(options: dict[str, Any]) -> dict[str, Any]:
    """Fold the CLI's flat distillation and adapter options into run_heal's settings."""
    opts = dict(options)
    distill = DistillWeights(
        lm=opts.pop("lm_weight", DEFAULT_DISTILL.lm),
        chunk=opts.pop("chunk_weight", DEFAULT_DISTILL.chunk),
        hidden=opts.pop("hidden_weight", DEFAULT_DISTILL.hidden),
        tau=opts.pop("tau", DEFAULT_DISTILL.tau),
        layer=opts.pop("distill_layer", DEFAULT_DISTILL.layer),
        piece=opts.pop("piece_weight", DEFAULT_DISTILL.piece),
    )
    for name, value in (
        ("--lm-weight", distill.lm),
        ("--chunk-weight", distill.chunk),
        ("--hidden-weight", distill.hidden),
        ("--piece-weight", distill.piece),
    ):
        if value < 0:
            raise ConfigError(f"must be >= 0, got {value}", where=name)
    if distill.tau <= 0:
        raise ConfigError(f"must be > 0, got {distill.tau}", where="--tau")
    lora = LoraSettings(
        rank=opts.pop("lora_rank", DEFAULT_LORA.rank),
        alpha=opts.pop("lora_alpha", DEFAULT_LORA.alpha),
        targets=tuple(
            t.strip()
            for t in str(opts.pop("lora_targets", ",".join(DEFAULT_LORA.targets))).split(",")
            if t.strip()
        ),
        lr=opts.pop("lora_lr", DEFAULT_LORA.lr),
        decay=opts.pop("lora_decay", DEFAULT_LORA.decay),
    )
    return {**opts, "distill": distill, "lora": lora}


@main.command()
@click.argument("model", type=click.Path())
@click.argument("out", type=click.Path())
@click.option(
    "--corpus",
    multiple=True,
    required=True,
    help="Text file or glob (UTF-8), or prompt/completion .jsonl files; repeatable.",
)
@click.option("--steps", default=60)
@click.option(
    "--rows",
    type=click.Choice(get_args(RowChoice)),
    default="all",
    help="all: every row of the input matrix (works without a manifest); estimated: rows the "
    "transplant estimated; new: plus rows copied from <0xNN> byte pieces; tool: the tool tokens "
    "(recorded by a tool-token recipe, or --tool-token).",
)
@click.option(
    "--matrices",
    type=click.Choice(get_args(Matrices)),
    help="input: only input rows move (a tied model is untied); both: output rows too.  "
    f"[default: {defaults_help()}]",
)
@click.option(
    "--tool-token",
    "tool_tokens",
    multiple=True,
    help="With --rows tool: a tool token to train; repeatable.",
)
@click.option(
    "--lr",
    type=float,
    default=None,
    help="Peak learning rate of the rows (cosine decay to lr/10).  [default: see --matrices]",
)
@click.option(
    "--output-lr",
    type=float,
    default=None,
    help="Peak learning rate of the output matrix (trains it; a tied model is untied, so "
    "the output rows move on their own).  [default: see --matrices; without one, --lr and "
    "tied rows stay tied]",
)
@click.option("--lam", default=1e-2, help="Weight of ||W - W0||_F (0 disables it).")
@click.option(
    "--seq-len",
    type=int,
    help="Tokens per window (JSONL rows are cut to it).  [default: 512, or the model's "
    "context when shorter]",
)
@click.option("--batch-size", default=2, help="Windows per step, over all processes.")
@click.option("--micro-batch", default=1, help="Windows per forward pass (memory).")
@click.option(
    "--eval-fraction",
    default=0.1,
    help="Held-out tail of each corpus file (JSONL: share of rows).",
)
@click.option(
    "--device", default="cpu", help="cpu or cuda (under accelerate launch: one per process)."
)
@click.option("--seed", default=0)
@click.option(
    "--teacher",
    help="Original model to distil from (cross-tokenizer chunk likelihoods + hidden states), "
    "or 'none' for the LM loss alone.  [default: the base model in MODEL's manifest, if present]",
)
@click.option(
    "--teacher-cache",
    type=click.Path(file_okay=False),
    help="Where the teacher pass is cached (reused by reruns).  "
    "[default: .tokenplug-teacher-cache beside OUT]",
)
@click.option(
    "--lm-weight", default=DEFAULT_DISTILL.lm, help="Weight of the LM loss (with a teacher)."
)
@click.option(
    "--chunk-weight", default=DEFAULT_DISTILL.chunk, help="Weight of the chunk-likelihood loss."
)
@click.option(
    "--hidden-weight", default=DEFAULT_DISTILL.hidden, help="Weight of the hidden-state loss."
)
@click.option(
    "--piece-weight",
    default=DEFAULT_DISTILL.piece,
    help="Weight of the next-piece loss (the teacher's next-token mass read as student pieces).",
)
@click.option(
    "--tau", default=DEFAULT_DISTILL.tau, help="Temperature of the chunk-likelihood loss."
)
@click.option(
    "--distill-layer", default=DEFAULT_DISTILL.layer, help="Hidden-state layer matched (-1: last)."
)
@click.option(
    "--adapter",
    type=click.Choice(get_args(Adapter)),
    help="lora: train a low-rank adapter with the rows, merged into OUT's weights at the end.  "
    "[default: lora with a teacher, none without one or for tool rows]",
)
@click.option("--lora-rank", default=DEFAULT_LORA.rank, show_default=True)
@click.option("--lora-alpha", default=DEFAULT_LORA.alpha, show_default=True)
@click.option(
    "--lora-targets",
    default=",".join(DEFAULT_LORA.targets),
    show_default=True,
    help="Comma-separated module names the adapter wraps.",
)
@click.option(
    "--lora-lr", default=DEFAULT_LORA.lr, show_default=True, help="Adapter learning rate."
)
@click.option(
    "--lora-decay", default=DEFAULT_LORA.decay, show_default=True, help="AdamW weight decay."
)
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists and is not empty.")
@click.option(
    "--allow-pickle", is_flag=True, help="Allow loading .bin/.pt pickle checkpoints (can run code)."
)
@json_option("Write the summary as JSON.")
@click.option("--quiet", "-q", is_flag=True)
@click.option("--verbose", "-v", count=True, show_default=False)
def heal(
    model: str,
    out: str,
    corpus: tuple[str, ...],
    *,
    json_out: str | None,
    quiet: bool,
    verbose: int = 0,
    **options: Any,
) -> None:
    """Train only vocabulary rows of MODEL (every input row by default; a transplant's
    estimated rows, or tool-token rows) on --corpus, regularized toward where they started;
    write OUT. Data parallel under `accelerate launch`."""
    setup_logging(quiet, verbose)
    check_writable_file(json_out, "--json", outside=[out])
    summary = run_heal(model, out, list(corpus), quiet=quiet, **heal_objective(options))
    if os.environ.get("RANK", "0") != "0":
        return
    write_json(json_out, {"out": out, **summary})
    r = summary["rows"]
    click.echo(
        f"wrote {out}: trained {r['count']} {r['which']} rows ({', '.join(r['matrices'])}), "
        f"{summary['steps']} steps, {summary['seconds']} s"
    )
    for phase in ("before", "after"):
        m = summary[f"heldout_{phase}"]
        if m:
            figures = ", ".join(f"{name} {m[k]:.4f}" for k, name in HEAL_FIGURES.items() if k in m)
            click.echo(f"held-out {phase}: {figures}")


for command in [*recipe_commands, assets_command, gguf_command]:
    main.add_command(command)

if __name__ == "__main__":
    main()
