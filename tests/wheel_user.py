"""A user with only the wheel installed, following the docs' shell lines.

What the docs tell a wheel user to run (each recipe's ``Run:`` line, the README's wheel-install
commands, ``recipes/README.md``) is run by bash in a scratch directory outside the checkout,
with ``HOME`` holding the asset cache in the layout ``mergekit-tokenplug assets`` leaves (its
markers, files standing in for the real models and texts). Commands that need no model run
for real from the unpacked wheel (``recipes show/list/validate``, ``assets``). The ones that
need real weights (``plan``, ``recipes validate --inputs``, ``heal``, ``evaluate``, ``verify``,
``mergekit-yaml``, ``mergekit-multi``) are stood in for: their arguments go through the
command's own click parser, every file or directory they would read must exist (recipe inputs
relative to the current directory, as mergekit resolves them), and the directories they would
write are created. So a doc line that names a file the wheel lacks, a path that only a
checkout has, an option that does not exist or a directory the user is not in fails here.
"""

from __future__ import annotations

import glob
import json
import re
import sys
from pathlib import Path

import click
import yaml

# -------------------------------------------------------------- what the docs tell users to run


def run_block(recipe_text: str) -> str:
    """A recipe's ``# Run:`` line and its indented continuation lines, as shell text."""
    lines = recipe_text.splitlines()
    (start,) = [i for i, ln in enumerate(lines) if ln.startswith("# Run:")]
    block = [lines[start][len("# Run:") :]]
    for line in lines[start + 1 :]:
        if not line.startswith("#   "):
            break
        block.append(line[1:])
    return "\n".join(block)


def md_section(text: str, heading: str) -> str:
    """The body of a ``## heading`` section of a Markdown file."""
    start = text.index(f"\n## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end > 0 else len(text)]


def bash_blocks(text: str) -> list[str]:
    """Fenced ``bash`` blocks, except those that install packages (``pip``)."""
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    return [b for b in blocks if not re.search(r"\bpip\b", b)]


def validate_spans(text: str) -> list[str]:
    """Inline ``mergekit-tokenplug recipes validate ...`` commands without placeholders."""
    spans = (" ".join(s.split()) for s in re.findall(r"`([^`]+)`", text))
    return [
        s
        for s in spans
        if s.startswith("mergekit-tokenplug recipes validate")
        and not re.search(r"\b[A-Z_]{4,}\b", s)
    ]


# ------------------------------------------------------------------------- the scratch user

YOUR_MODELS = (
    "models/base-model",
    "models/partner-a",
    "models/partner-b",
    "models/model-x",
    "models/model-y",
)


def prepared_cache() -> Path:
    """The asset cache (``$MERGEKIT_TOKENPLUG_CACHE``, else under ``HOME``) laid out as
    ``mergekit-tokenplug assets`` leaves it for every asset it knows (models, texts,
    multilingual and prose regions, GPT-2's tokenizer, the MiniLM embedder)."""
    from mergekit_tokenplug import assets

    marker = json.dumps({"stand_in": "tests/wheel_user.py"})
    dirs = [assets.model_dir(k) for k in assets.MODELS]
    dirs += [assets.tokenizer_dir("gpt2"), assets.embedder_dir()]
    files = [assets.text_path(n) for n in assets.TEXT_NAMES]
    files += [
        assets.multilingual_path(s, lang) for s in assets.ML_REGIONS for lang in assets.ML_SOURCES
    ]
    files += [assets.prose_path(s, n) for s in assets.PROSE_REGIONS for n in assets.PROSE_SOURCES]
    for d in dirs:
        d.mkdir(parents=True, exist_ok=True)
        (d / "config.json").write_text("{}\n")
    (assets.tokenizer_dir("gpt2") / "tokenizer.json").write_text("{}\n")
    for f in files:
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text("text\n", encoding="utf-8")
    marked = [*dirs, assets.cache_root() / "texts"]
    marked += [
        assets.multilingual_path("heldout", "en").parent,
        assets.prose_path("prose-heldout", "x").parent,
    ]
    for d in marked:
        (d / assets.MARKER).write_text(marker)
    return assets.cache_root()


STAND_IN = """#!{python}
import sys
sys.path.insert(0, {tests!r})
import wheel_user
sys.exit(wheel_user.stand_in({tool!r}, sys.argv[1:]))
"""


def make_user(root: Path, site: Path) -> tuple[dict[str, str], Path]:
    """A scratch wheel user under ``root``: (environment, working directory outside the checkout)."""
    home, work, bin_dir = root / "home", root / "work", root / "bin"
    for d in (home, work, bin_dir):
        d.mkdir(parents=True)
    for tool in ("mergekit-tokenplug", "mergekit-yaml", "mergekit-multi"):
        script = bin_dir / tool
        script.write_text(
            STAND_IN.format(python=sys.executable, tests=str(Path(__file__).parent), tool=tool)
        )
        script.chmod(0o755)
    for ref in YOUR_MODELS:  # recipes 02 and 03: the user's own models, where they name them
        (work / ref).mkdir(parents=True)
    env = {
        "HOME": str(home),
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "PYTHONPATH": str(site),
        "HF_HUB_OFFLINE": "1",
        "LANG": "C.UTF-8",
    }
    return env, work


# ----------------------------------------------------------------- the stand-in commands

NEEDS_MODELS = {
    "plan",
    "verify",
    "heal",
    "evaluate",
    "transplant",
    "compare",
    "learn-tool-tokens",
    "gguf",
}


class Refused(Exception):
    """A doc line asked for something a wheel user does not have."""


def _exists(path: str, what: str) -> None:
    if not Path(path).expanduser().exists():
        raise Refused(f"{what} {path!r} does not exist (cwd {Path.cwd()})")


def recipe_inputs(recipe: str) -> None:
    """Every model, tokenizer source, embedder and corpus the recipe names resolves from here."""
    docs = [d for d in yaml.safe_load_all(Path(recipe).read_text(encoding="utf-8")) if d]
    stages = {d["name"] for d in docs if d.get("name")}

    def model(ref: object, what: str) -> None:
        name = ref.get("model") if isinstance(ref, dict) else ref
        if isinstance(name, str) and name not in stages:
            _exists(name, what)

    for doc in docs:
        for entry in doc.get("models") or []:
            model(entry, "models[].model")
        if doc.get("base_model"):
            model(doc["base_model"], "base_model")
        tok = doc.get("tokenizer") or {}
        if tok.get("source") not in (None, "base", "union"):
            model(tok["source"], "tokenizer.source")
        approx = tok.get("approximation") or {}
        if approx.get("embedder") not in (None, "self"):
            _exists(approx["embedder"], "tokenizer.approximation.embedder")
        corpus = approx.get("corpus") or []
        for pattern in [corpus] if isinstance(corpus, str) else corpus:
            if not glob.glob(pattern):
                raise Refused(f"corpus {pattern!r} matches nothing (cwd {Path.cwd()})")


def _parse(command: click.Command, name: str, args: list[str]) -> click.Context:
    """``args`` through ``command``'s own parser: unknown options and missing paths are errors."""
    try:
        return command.make_context(name, list(args))
    except click.ClickException as exc:
        raise Refused(f"{name} {' '.join(args)}: {exc.format_message()}") from None


def _plugin(args: list[str]) -> int:
    from mergekit_tokenplug.cli import main

    heavy = bool(args) and (
        args[0] in NEEDS_MODELS or (args[:2] == ["recipes", "validate"] and "--inputs" in args)
    )
    if not heavy:
        return main.main(args=args, prog_name="mergekit-tokenplug")  # runs it; exits
    cmd, rest = main.commands[args[0]], args[1:]
    if args[0] == "recipes":
        cmd, rest = cmd.commands[args[1]], args[2:]
    params = _parse(cmd, args[0], rest).params
    if args[0] == "recipes" or args[0] == "plan":
        for recipe in params.get("paths") or [params.get("recipe")]:
            recipe_inputs(recipe)
    elif args[0] == "verify":
        _exists(params["out"], "OUT")
    elif args[0] == "heal":
        _exists(params["model"], "MODEL")
        for pattern in params["corpus"]:
            if not glob.glob(str(Path(pattern).expanduser())):
                raise Refused(f"--corpus {pattern!r} matches nothing (cwd {Path.cwd()})")
        Path(params["out"]).expanduser().mkdir(parents=True)
    elif args[0] == "evaluate":
        for path in [*params["models"], *params["texts"]]:
            _exists(path, "evaluate input")
    print(f"[stand-in] mergekit-tokenplug {' '.join(args)}")
    return 0


def _mergekit(tool: str, args: list[str]) -> int:
    if tool == "mergekit-yaml":
        from mergekit.scripts.run_yaml import main
    else:
        from mergekit.scripts.multimerge import main
    params = _parse(main, tool, args).params
    _exists(params["config_file"], "recipe")
    recipe_inputs(params["config_file"])
    Path(params["out_path"]).expanduser().mkdir(parents=True, exist_ok=True)
    print(f"[stand-in] {tool} {' '.join(args)}")
    return 0


def stand_in(tool: str, args: list[str]) -> int:
    """Entry point of the scripts on the scratch user's PATH."""
    try:
        return _plugin(args) if tool == "mergekit-tokenplug" else _mergekit(tool, args)
    except Refused as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 3
