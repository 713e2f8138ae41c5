"""``recipes validate``: every problem of a recipe file, without loading a single weight.

A merge that fails after an hour on a typo, or silently ignores a misspelt key (mergekit drops
unknown keys), is what this prevents. Checks, each reported as ``FILE:LINE key: message``:
YAML syntax; unknown top-level keys; mergekit's schema with the plugin's keys; the method and
its parameters; local model directories (exist, tokenizer, weights where needed); the
method's resources (corpus files, auxiliary embedder); OMP's ``k`` against the shared tokens
of every model and its source spaces (tokenizers only); tool tokens; ``mergekit-multi`` stage
names and references.
"""

from __future__ import annotations

import copy
import difflib
import glob
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydantic
import yaml
from mergekit.common import ModelReference

from mergekit_tokenplug import registry
from mergekit_tokenplug.errors import TokenplugError
from mergekit_tokenplug.inputs import check_model_dir, check_same_width, model_path
from mergekit_tokenplug.method_choice import choose_method
from mergekit_tokenplug.methods.base import Need, param_error_message, short_repr
from mergekit_tokenplug.recipes.requires import missing_marker_message, needs_marker
from mergekit_tokenplug.recipes.yaml_limits import MAX_BYTES, yaml_size_problem
from mergekit_tokenplug.recipes.yaml_lines import (
    LineMap,
    document_line_maps,
    key_string,
    yaml_error,
)
from mergekit_tokenplug.resources.corpus import corpus_matches, no_match_message
from mergekit_tokenplug.resources.embedder import check_embedder_dir
from mergekit_tokenplug.seam import refusal_reason
from mergekit_tokenplug.seam.config_patch import merge_configuration
from mergekit_tokenplug.seam.schema import (
    PLUGIN_TOKENIZER_KEYS,
    TokenplugTokenizerConfig,
    chosen_branch_errors,
    enable_hint,
    error_message,
    near_misses,
    tool_tokens,
    unknown_key_message,
    uses_plugin,
)

APPROX = ("tokenizer", "approximation")
_WHERE_PREFIX = re.compile(r"^([A-Za-z_][\w.<>\[\]-]*): (.+)$", re.S)
_BRANCH = re.compile(r"function-\w+\[.*\]|[A-Z]\w*")  # pydantic's union-branch labels
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


@dataclass
class Problem:
    """One finding, located by file, line and key path."""

    file: str
    line: int | None
    key: str
    message: str
    severity: str = "error"  # "error" | "warning" | "note"

    def format(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        text = (f"{self.severity}: " if self.severity != "error" else "") + self.message
        return f"{where} {self.key}: {text}" if self.key else f"{where} {text}"


@dataclass
class Options:
    check_models: bool = True  # False: syntax, schema and parameters only
    note_inputs: bool = False  # with check_models False: note references not found here
    allow_hub: bool = False  # names that look like hub ids are skipped instead of errors
    trust_remote_code: bool = False
    require_marker: bool = False  # a plugin recipe without parameters.requires is an error


@dataclass
class DocResult:
    """One YAML document: its stage name (None = final/only), config when it validated."""

    index: int
    name: str | None
    config: Any = None
    stage_refs: set[str] = field(default_factory=set)


@dataclass
class FileResult:
    file: str
    problems: list[Problem] = field(default_factory=list)
    documents: list[DocResult] = field(default_factory=list)
    multi: bool = False

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    def add(self, line: int | None, key: str, message: str, severity: str = "error") -> None:
        self.problems.append(Problem(self.file, line, key, message, severity))


def validate_path(path: str | os.PathLike, options: Options | None = None) -> FileResult:
    """Validate one recipe file (single- or multi-document)."""
    name = str(path)
    try:
        if os.path.getsize(path) > MAX_BYTES:
            return FileResult(
                name, [Problem(name, None, "", f"expected a recipe under {MAX_BYTES} bytes")]
            )
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return FileResult(name, [Problem(name, None, "", f"cannot read the file ({exc})")])
    return validate_text(text, name, options)


def validate_text(text: str, file: str = "recipe", options: Options | None = None) -> FileResult:
    """Validate recipe text; ``file`` is the name used in the messages."""
    options = options or Options()
    result = FileResult(file)
    too_big = yaml_size_problem(text)
    if too_big is not None:
        result.add(None, "", too_big)
        return result
    try:
        maps = document_line_maps(text)
        docs = list(yaml.safe_load_all(text))
    except yaml.YAMLError as exc:
        line, message = yaml_error(exc)
        result.add(line, "", message)
        return result
    if not docs:
        result.add(1, "", "the file holds no recipe")
        return result
    result.multi = len(docs) > 1 or any(isinstance(d, dict) and "name" in d for d in docs)
    stages = _stage_names(docs, maps, result)
    for index, (doc, lines) in enumerate(zip(docs, maps, strict=True)):
        checker = _DocChecker(index, doc, lines, options, result, stages)
        result.documents.append(checker.run())
    if result.multi:
        _check_cycles(result, stages, maps)
    result.problems.sort(key=lambda p: p.line or 0)
    return result


# ---------------------------------------------------------------- multi-document structure


def _stage_names(docs: list[Any], maps: list[LineMap], result: FileResult) -> dict[str, int]:
    """Stage name -> document index; duplicate/invalid names and extra final docs are errors."""
    stages: dict[str, int] = {}
    unnamed: list[int] = []
    for index, (doc, lines) in enumerate(zip(docs, maps, strict=True)):
        if not isinstance(doc, dict):
            continue
        if "name" not in doc:
            unnamed.append(index)
            if result.multi and len(unnamed) > 1:
                result.add(
                    lines.start_line,
                    "",
                    f"a second unnamed (final) document (the first starts on line {maps[unnamed[0]].start_line}); mergekit-multi allows one, give the others a name",
                )
            continue
        name = doc["name"]
        line = lines.line_of(("name",))
        if not isinstance(name, str) or not name.strip():
            result.add(line, "name", f"expected a non-empty stage name, got {name!r}")
        elif name in stages:
            first = maps[stages[name]].line_of(("name",))
            result.add(
                line,
                "name",
                f"duplicate stage name {name!r} (first defined on line {first}); stage names must be unique",
            )
        else:
            stages[name] = index
    return stages


def _check_cycles(result: FileResult, stages: dict[str, int], maps: list[LineMap]) -> None:
    deps = {d.name: d.stage_refs for d in result.documents if d.name is not None}
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done

    def visit(name: str, trail: list[str]) -> None:
        state[name] = 1
        for dep in sorted(deps.get(name, ())):
            if state.get(dep) == 1:
                cycle = " -> ".join([*trail[trail.index(dep) :], dep]) if dep in trail else dep
                line = maps[stages[name]].line_of(("name",))
                result.add(line, "name", f"stages depend on each other in a cycle: {cycle}")
            elif state.get(dep) is None and dep in deps:
                visit(dep, [*trail, dep])
        state[name] = 2

    for name in sorted(deps):
        if state.get(name) is None:
            visit(name, [name])


# ---------------------------------------------------------------- one document


@dataclass
class _DocChecker:
    """Checks one YAML document; problems go to ``result``, the document's outcome to ``out``."""

    index: int
    doc: Any
    lines: LineMap
    options: Options
    result: FileResult
    stages: dict[str, int]
    errors: int = 0

    def __post_init__(self) -> None:
        name = self.doc.get("name") if isinstance(self.doc, dict) else None
        self.out = DocResult(self.index, name if isinstance(name, str) else None)

    # -- reporting
    def add(self, loc: tuple | list, message: str, severity: str = "error") -> None:
        path, line = self.lines.resolve(loc)
        self.result.add(line, key_string(path), " ".join(str(message).split()), severity)
        if severity == "error":
            self.errors += 1

    def add_tokenplug_error(self, exc: TokenplugError, default: tuple = ()) -> None:
        match = _WHERE_PREFIX.match(exc.message)
        if match and "/" not in match.group(1):
            key = [p for p in re.split(r"\.(?![^<]*>)", match.group(1)) if p]
            self.add(tuple(key), match.group(2))
        else:
            self.add(default, exc.message)

    # -- checks
    def run(self) -> DocResult:
        doc = self.doc
        if doc is None:
            self.add(
                (), "empty YAML document; expected a recipe mapping (mergekit-multi fails on it)"
            )
            return self.out
        if not isinstance(doc, dict):
            self.add((), f"expected a mapping of recipe keys, got {type(doc).__name__}")
            return self.out
        merge_cfg = merge_configuration()
        self.check_top_level_keys(merge_cfg)
        self.check_requires_marker()
        data = {k: v for k, v in doc.items() if k != "name"}
        if isinstance(data.get("tokenizer"), dict):  # unknown keys: see check_top_level_keys
            known = TokenplugTokenizerConfig.model_fields
            data["tokenizer"] = {k: v for k, v in data["tokenizer"].items() if k in known}
        spec = params = None  # set only when the plugin is active and the method is valid
        if uses_plugin(data) and isinstance(data.get("tokenizer"), dict):
            # (a recipe with only the requires marker is checked by the parameters validator)
            reason = refusal_reason()
            if reason is not None:
                self.report_inactive(reason, data)
                data = self.strip_plugin_keys(data)
            else:
                spec, params = self.check_approximation(data)
                data = self.check_tool_tokens(data)
                if spec is None and "approximation" in data["tokenizer"]:
                    data = copy.deepcopy(data)  # keep validating the rest with a stand-in
                    data["tokenizer"]["approximation"] = {"method": "mean"}
        config = self.check_schema(merge_cfg, data)
        if config is not None:
            self.check_base_order(config)
        if self.options.check_models:
            self.check_inputs(config, spec, params)
        elif self.options.note_inputs:
            self.note_absent_inputs()
        self.out.config = config if self.errors == 0 else None
        return self.out

    def check_top_level_keys(self, merge_cfg: Any) -> None:
        valid = set(merge_cfg.model_fields) | ({"name"} if self.result.multi else set())
        # near_misses words a misplaced plugin key the way the stock commands refuse it
        found = dict(near_misses(self.doc))
        for key in self.doc:
            if key not in valid:
                default = unknown_key_message("top-level", key, tuple(valid))
                self.add((str(key),), found.pop((key,), None) or default)
        for path, message in found.items():
            self.add(path, message)

    def check_requires_marker(self) -> None:
        """A plugin recipe must carry ``parameters.requires`` (see recipes/requires.py)."""
        # (with the plugin inactive the recipe is refused anyway: report_inactive says why)
        if self.options.require_marker and needs_marker(self.doc) and refusal_reason() is None:
            self.add(("parameters",) if "parameters" in self.doc else (), missing_marker_message())

    def report_inactive(self, reason: str, data: dict) -> None:
        tok = data["tokenizer"]
        tools = tool_tokens(tok.get("tokens"))
        loc = (
            APPROX
            if "approximation" in tok
            else ("tokenizer", "tokens", tools[0])
            if tools
            else ("tokenizer", next((k for k in tok if k not in ("source", "tokens")), "tokens"))
        )
        label = "plugin disabled" if "disabled" in reason else "plugin inactive"
        self.add(
            loc,
            f"{label}: this recipe uses mergekit-tokenplug's keys but {reason}; mergekit-yaml would refuse to run it; {enable_hint(reason)}",
        )

    @staticmethod
    def strip_plugin_keys(data: dict) -> dict:
        data = copy.deepcopy(data)
        tok = data["tokenizer"]
        for key in PLUGIN_TOKENIZER_KEYS:
            tok.pop(key, None)
        for token in tool_tokens(tok.get("tokens")):
            del tok["tokens"][token]
        for cfg in (tok.get("tokens") or {}).values():
            if isinstance(cfg, dict):
                cfg.pop("special", None)
        return data

    def check_approximation(self, data: dict) -> tuple[Any, Any]:
        """The method and its parameters, error by error (pydantic would stop at the first)."""
        approx = data["tokenizer"].get("approximation", {})
        if not isinstance(approx, dict):
            self.add(APPROX, f"expected a mapping (method and its parameters), got {approx!r}")
            return None, None
        method = approx.get("method")
        methods = registry.all_methods()
        ok = True
        seed = approx.get("seed")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            self.add((*APPROX, "seed"), f"expected an integer seed, got {seed!r}")
            ok = False
        if method is not None and (not isinstance(method, str) or method not in methods):
            spec = self.report_unknown_method(method, methods)
            if spec is None:
                return None, None
            ok = False  # the parameters are still checked, against the closest method
        else:
            try:  # the run's choice: the default follows what the tokenizer source offers
                choice = choose_method(method, data["tokenizer"].get("source"))
            except TokenplugError as exc:
                self.add_tokenplug_error(exc, APPROX)
                return None, None
            if choice.note:
                self.add(APPROX, choice.note, "note")
            spec = methods[choice.method]
        raw = {k: v for k, v in approx.items() if k not in ("method", "seed")}
        try:
            params = spec.params.model_validate(raw)
        except pydantic.ValidationError as exc:
            for err in exc.errors():
                self.add((*APPROX, *err["loc"]), param_error_message(spec, err))
            return None, None
        return (spec, params) if ok else (None, None)

    def report_unknown_method(self, method: Any, methods: dict[str, Any]) -> Any:
        """An unknown method name, with the closest one; its spec (to check the parameters
        too, so a second error of the block is not hidden behind this one) or None."""
        close = difflib.get_close_matches(str(method), list(methods), n=1, cutoff=0.6)
        hint = f"did you mean {close[0]!r}? " if close else ""
        self.add(
            (*APPROX, "method"),
            f"unknown method {method!r}; {hint}expected one of: {', '.join(sorted(methods))}",
        )
        return methods[close[0]] if close else None

    def check_tool_tokens(self, data: dict) -> dict:
        tok = data["tokenizer"]
        bad = []
        for token in tool_tokens(tok.get("tokens")):
            source = tok["tokens"][token]["source"]
            texts = [source.get("name"), source.get("description")]
            if not any(isinstance(t, str) and t.strip() for t in texts):
                self.add(
                    ("tokenizer", "tokens", token, "source"),
                    "a tool token needs a non-empty name or description (its prior is built from that text)",
                )
                bad.append(token)
        if not bad:
            return data
        tokens = {t: cfg for t, cfg in tok["tokens"].items() if t not in bad}
        return {**data, "tokenizer": {**tok, "tokens": tokens}}

    def meant_branches(self, errors: list[Any]) -> list[Any]:
        """Errors of the union branches the recipe meant: a branch that rejects the value's
        ``kind`` is not it, nor one that only misses keys while another has a real error."""
        branches: dict[tuple, dict[str, list[Any]]] = {}
        for err in errors:
            loc = tuple(err["loc"])
            for i, part in enumerate(loc):
                if _BRANCH.fullmatch(str(part)) and loc[:i] + (part,) not in self.lines.lines:
                    branches.setdefault(loc[:i], {}).setdefault(str(part), []).append(err)
                    break
        drop: set[int] = set()
        for options in branches.values():
            if len(options) < 2:
                continue
            rest = {
                b: errs
                for b, errs in options.items()
                if not any(e["loc"][-1] == "kind" and e["type"] == "literal_error" for e in errs)
            }
            real = {b for b, errs in rest.items() if any(e["type"] != "missing" for e in errs)}
            keep = real or set(rest) or set(options)
            drop |= {id(e) for b, errs in options.items() if b not in keep for e in errs}
        return [e for e in errors if id(e) not in drop]

    def check_schema(self, merge_cfg: Any, data: dict) -> Any:
        """mergekit's own validation (with the plugin's keys), one problem per key."""
        try:
            return merge_cfg.model_validate(data)
        except pydantic.ValidationError as exc:
            by_key: dict[tuple, dict[str, None]] = {}
            for err in self.meant_branches(chosen_branch_errors(exc.errors())):
                path, _line = self.lines.resolve(err["loc"])
                msg = error_message(err)
                if err["type"] != "missing" and not isinstance(err.get("input"), dict | list):
                    msg += f" (got {short_repr(err.get('input'))})"
                by_key.setdefault(path, {})[msg] = None  # an ordered set
            for path, msgs in by_key.items():
                self.add(path, "; or ".join(msgs))
        except TokenplugError as exc:
            self.add_tokenplug_error(exc)
        except (RuntimeError, ValueError, TypeError) as exc:  # mergekit's own validators
            self.add((), f"{type(exc).__name__}: {exc}")
        return None

    def check_base_order(self, config: Any) -> None:
        """Without ``base_model``, mergekit takes the base tokenizer from an unordered set."""
        tok = config.tokenizer
        source = tok.source if tok is not None else config.tokenizer_source
        if config.base_model is None and source in ("union", "base"):
            if len(config.referenced_models()) > 1:
                key = ("tokenizer", "source") if tok is not None else ("tokenizer_source",)
                self.add(
                    key,
                    f"source {source!r} without base_model: mergekit picks the base tokenizer from an unordered set, so token ids (and which model is the base) can change from run to run; set base_model",
                    "warning",
                )

    # -- model directories
    def model_refs(self) -> list[tuple[tuple, str, str]]:
        """(key path, model path, role) of every model reference in the document; references
        to a stage of the same file go to ``stage_refs`` instead."""
        refs: list[tuple[tuple, str, str]] = []

        def add(path: tuple, model: str) -> None:
            if self.result.multi and model in self.stages:
                self.out.stage_refs.add(model)
            elif path[:2] == ("tokenizer", "source"):
                refs.append((path, model, "donor"))
            else:
                role = "tokenizer" if path[0] == "tokenizer_source" else "weights"
                refs.append((path, model, role))

        def add_ref(path: tuple, value: str) -> None:
            try:
                ref = ModelReference.model_validate(value)
            except Exception:  # reported by the schema check
                return
            add(path, ref.model.path)

        def walk(node: Any, path: tuple) -> None:
            if isinstance(node, list):
                node = dict(enumerate(node))
            if not isinstance(node, dict):
                return
            for key, value in node.items():
                child = (*path, key)
                if not isinstance(value, str):
                    walk(value, child)
                elif key == "path" and path[-1:] == ("model",):
                    add(child, value.split("@")[0])
                elif child in (("tokenizer_source",), ("tokenizer", "source")):
                    if value not in ("union", "base"):
                        add_ref(child, value)
                elif key in ("model", "base_model", "tokenizer_source") or (
                    key == "source" and path[-2:-1] == ("tokens",)
                ):
                    add_ref(child, value)

        walk({k: v for k, v in self.doc.items() if k != "name"}, ())
        return refs

    def note_absent_inputs(self) -> None:
        """Structure-only mode: say which inputs are not here (checked with ``--inputs``)."""
        for path, model, _role in self.model_refs():
            if not os.path.exists(os.path.expanduser(model)):
                hint = self.stage_hint(model)
                if hint:  # a misspelt stage name is a mistake, not an input elsewhere
                    self.add(path, f"{model!r} is not a stage name{hint}", "warning")
                    continue
                kind = "a hub id or a path" if _HUB_ID.fullmatch(model) else "a local path"
                self.add(
                    path,
                    f"{model!r} ({kind}) is not here; not checked (use --inputs where the inputs are)",
                    "note",
                )

    def stage_hint(self, model: str) -> str:
        """``; did you mean 'stage1'?`` for a reference close to a stage name of this file."""
        if not self.result.multi:
            return ""
        close = difflib.get_close_matches(model, list(self.stages), n=1, cutoff=0.75)
        return f"; did you mean stage {close[0]!r}?" if close else ""

    def check_inputs(self, config: Any, spec: Any, params: Any) -> None:
        """Every reference must be an existing local model directory; what needs them all here
        (widths, the vocabulary alignment behind OMP's ``k``) is checked only then."""
        refs = self.model_refs()
        all_local = not self.out.stage_refs
        seen: set[tuple[str, bool]] = set()
        donor_weights = spec is not None and Need.DONOR_EMBEDDINGS in spec.needs
        for path, model, role in refs:
            if not os.path.exists(model_path(model)):
                all_local = False
                if self.options.allow_hub and _HUB_ID.fullmatch(model):
                    self.add(
                        path,
                        f"{model!r} is not a local path; treated as a hub id and not checked",
                        "warning",
                    )
                elif self.result.multi:
                    stages = ", ".join(sorted(self.stages)) or "(none)"
                    self.add(
                        path,
                        f"{model!r} is neither an existing path nor a stage name{self.stage_hint(model)} (stages: {stages})",
                    )
                else:
                    self.add(
                        path,
                        f"{model!r} does not exist; expected a local model directory (relative paths are resolved against the current directory, as mergekit-yaml does)",
                    )
                continue
            need_weights = role == "weights" or (role == "donor" and donor_weights)
            if (model, need_weights) in seen:
                continue
            seen.add((model, need_weights))
            try:
                check_model_dir(
                    model,
                    where="",
                    need_weights=need_weights,
                    need_tokenizer=True,
                    trust_remote_code=self.options.trust_remote_code,
                )
            except TokenplugError as exc:
                all_local = False
                self.add(path, exc.message)
        if all_local and config is not None:
            try:  # merged models share a hidden size (a transplant across widths is a source)
                check_same_width([m.model.path for m in config.referenced_models()])
            except TokenplugError as exc:
                self.add(("models",), exc.message.removeprefix("models: "))
            self.note_untied(config)
        if spec is None:
            return
        self.check_resources(spec, params)
        if Need.CORPUS in spec.needs and config is not None and all_local and self.errors == 0:
            self.check_corpus_coverage(config)
        k = getattr(params, "k", None)
        if k is None:
            return
        if config is not None and all_local and self.errors == 0:
            self.check_shared_tokens(config, spec, k)
        elif self.out.stage_refs:
            self.add(
                (*APPROX, "k"),
                f"not checked against the shared tokens: the recipe reads stage output(s) {', '.join(sorted(self.out.stage_refs))} that are built first",
                "warning",
            )

    def note_untied(self, config: Any) -> None:
        """Tied and untied models in one merge: the run writes an untied output (seam.tied)."""
        from mergekit_tokenplug.seam.tied import untie_message, untied_inputs  # lazy: mergekit

        untied = untied_inputs(config, self.options.trust_remote_code)
        if untied:
            self.add(("models",), untie_message(config, untied), "warning")

    # -- method resources
    def check_resources(self, spec: Any, params: Any) -> None:
        corpus = getattr(params, "corpus", None)
        if Need.CORPUS in spec.needs and corpus:
            files: list[str] = []
            for i, pattern in enumerate(corpus):
                matches = corpus_matches(pattern)
                if not matches:
                    self.add((*APPROX, "corpus", i), no_match_message(pattern))
                files.extend(matches)
            if files and not any(_has_text(f) for f in files):
                self.add(
                    (*APPROX, "corpus"),
                    f"every corpus file is empty ({', '.join(files[:3])}); expected text",
                )
        embedder = getattr(params, "embedder", None)
        if isinstance(embedder, str) and embedder != "self":
            try:
                check_embedder_dir(embedder)
            except TokenplugError as exc:
                self.add_tokenplug_error(exc, (*APPROX, "embedder"))

    def check_corpus_coverage(self, config: Any) -> None:
        """Tokens a corpus method must estimate that the corpus never or rarely shows."""
        from mergekit_tokenplug.recipes.plan import corpus_coverage, recipe_vocab  # lazy

        try:
            lines = corpus_coverage(recipe_vocab(config, self.options.trust_remote_code))
        except TokenplugError as exc:
            self.add_tokenplug_error(exc, (*APPROX, "corpus"))
            return
        for line in lines:
            self.add((*APPROX, "corpus"), line, "warning")

    # -- OMP's k against the shared tokens
    def check_shared_tokens(self, config: Any, spec: Any, k: int) -> None:
        from mergekit_tokenplug.recipes.shared_k import k_problems  # lazy: reads tokenizers

        try:
            problems = k_problems(config, spec.name, k, self.options.trust_remote_code)
        except TokenplugError as exc:
            self.add_tokenplug_error(exc, APPROX)
            return
        except Exception as exc:  # a tokenizer transformers cannot read, etc.
            self.add(APPROX, f"could not align the vocabularies ({type(exc).__name__}: {exc})")
            return
        for message in problems:
            if message.startswith("k must be "):
                self.add((*APPROX, "k"), message.removeprefix("k "))
            else:
                self.add(APPROX, message)


def _has_text(path: str, chunk: int = 1 << 16) -> bool:
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            if block.strip():
                return True
    return False


def expand_paths(paths: list[str]) -> list[str]:
    """Files as given; directories become their ``*.yaml``/``*.yml`` files (sorted)."""
    files: list[str] = []
    for p in paths:
        if os.path.isdir(p):
            found = glob.glob(os.path.join(p, "*.yaml")) + glob.glob(os.path.join(p, "*.yml"))
            files.extend(sorted(found))
        else:
            files.append(p)
    return files
