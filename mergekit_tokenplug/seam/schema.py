"""The plugin's recipe keys, grafted onto mergekit's pydantic config models.

``tokenizer.approximation`` selects the method that estimates rows a model lacks. mergekit's
models ignore unknown keys, so a recipe with plugin keys must never fall through to the plain
``TokenizerConfig`` (that would silently run stock copies/zeros): the ``tokenizer`` field gets
a callable discriminator that routes any value carrying a plugin key to the extended model.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Callable
from typing import Annotated, Any, Literal

import pydantic
from mergekit.tokenizer.config import TokenizerConfig
from pydantic import BaseModel, ConfigDict, Discriminator, Field, PrivateAttr, Tag

from mergekit_tokenplug import __version__, registry
from mergekit_tokenplug.errors import ConfigError
from mergekit_tokenplug.registry import DEFAULT_METHOD

PLUGIN_TOKENIZER_KEYS = ("approximation", "add_bos", "chat_template")
STOCK_TOKENIZER_KEYS = tuple(TokenizerConfig.model_fields)
# ``parameters: {requires: {mergekit-tokenplug: SPEC}}`` says a recipe needs the plugin. Stock
# mergekit reads every ``parameters`` value as a merge parameter and rejects a mapping without
# ``value``, so without the plugin such a recipe is refused instead of run with copies/zeros.
REQUIRES_KEY = "requires"
PLUGIN_NAME = "mergekit-tokenplug"


class ApproximationConfig(BaseModel):
    """``tokenizer.approximation``: a method name plus that method's own parameters inline."""

    model_config = ConfigDict(extra="allow", frozen=True)

    method: str = DEFAULT_METHOD
    seed: int | None = Field(
        None, description="seed for stochastic methods (defaults to --random-seed, else 0)"
    )
    byte_tokens: Literal["copy", "estimate"] = Field(
        "copy",
        description="tokens whose only counterpart is a <0xNN> byte-fallback piece: copy that "
        "piece's row, or estimate them with the method (bench/RESULTS.md)",
    )
    # Why the method is not the one the recipe named (the default adapted to a tokenizer-only
    # source, see method_choice); said in the log, plan and card.
    _choice_note: str | None = PrivateAttr(None)

    @property
    def choice_note(self) -> str | None:
        return self._choice_note

    @pydantic.model_validator(mode="after")
    def _check_method(self) -> ApproximationConfig:
        self.parsed_params()
        return self

    def method_params(self) -> dict[str, Any]:
        """The raw method parameters (the keys that are not fields of this model)."""
        return dict(self.__pydantic_extra__ or {})

    def parsed_params(self) -> Any:
        return registry.get(self.method).parse_params(self.method_params())

    def key(self) -> str:
        """A canonical, hashable form for mergekit's frozen task fields."""
        fields = {"method": self.method, "seed": self.seed, "byte_tokens": self.byte_tokens}
        return json.dumps({**fields, "params": self.method_params()}, sort_keys=True)

    @classmethod
    def from_key(cls, key: str) -> ApproximationConfig:
        data = json.loads(key)
        return cls(**data.pop("params"), **data)


class ToolTokenSource(BaseModel, frozen=True):
    """``tokenizer.tokens.<token>.source: {kind: tool, name, description}``: a tool token whose
    rows come from the re-initialization prior (the frozen model reading the description)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["tool"]
    name: str | None = None
    description: str | None = None
    scale: Literal["sqrt_d", "median_norm"] = "sqrt_d"

    @pydantic.model_validator(mode="after")
    def _needs_text(self) -> ToolTokenSource:
        if not (self.name or "").strip() and not (self.description or "").strip():
            raise ConfigError(
                "a tool token needs a non-empty name or description (the prior is built from that text)",
                where="tokenizer.tokens.<token>.source",
            )
        return self

    def text(self) -> str:
        """What the frozen model reads: the description, prefixed by the name when both exist."""
        parts = [p.strip() for p in (self.name, self.description) if p and p.strip()]
        return ": ".join(parts)


class TokenplugTokenizerConfig(TokenizerConfig, frozen=True):
    """mergekit's ``TokenizerConfig`` plus the plugin's keys; unknown keys are refused (stock
    would drop them and fall back to its own copies/zeros)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    approximation: ApproximationConfig = Field(default_factory=ApproximationConfig)
    add_bos: Literal["base", "source"] = Field(
        "base",
        description="whether the output tokenizer adds BOS like the base model's tokenizer "
        "(base, the default: the model was trained that way) or like the tokenizer source "
        "(source: e.g. a draft model that must match its target's convention)",
    )
    chat_template: Literal["base", "source", "none"] = Field(
        "base",
        description="the output's chat template: base (the default: the base model's own "
        "template, its markers kept as tokens with the base's rows; none if it has none), "
        "source (the tokenizer source's, its default system prompt included) or none",
    )

    @pydantic.model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key in data:
                if key not in cls.model_fields:
                    raise ConfigError(
                        unknown_key_message("tokenizer", key, tuple(cls.model_fields)),
                        where=f"tokenizer.{key}",
                    )
        return data

    @pydantic.model_validator(mode="after")
    def _method_for_source(self) -> TokenplugTokenizerConfig:
        """Leave ``method`` out and a tokenizer-only source gets the best weightless method;
        name a method that reads donor weights there and the error lists the ones that work."""
        from mergekit_tokenplug.method_choice import choose_method  # lazy: reads the disk

        approx = self.approximation
        named = approx.method if "method" in approx.model_fields_set else None
        choice = choose_method(named, self.source)
        if choice.method != approx.method:
            fields = {"seed": approx.seed, "byte_tokens": approx.byte_tokens}
            chosen = ApproximationConfig(method=choice.method, **fields, **approx.method_params())
            chosen._choice_note = choice.note
            object.__setattr__(self, "approximation", chosen)  # frozen: set once, here
        return self

    @pydantic.field_validator("pad_to_multiple_of")
    @classmethod
    def _positive_multiple(cls, value: int | None) -> int | None:
        """Stock mergekit skips 0 and misreads a negative multiple: refuse both; a multiple
        past ``MAX_PAD_MULTIPLE`` would allocate that many rows (a typo, not a layout)."""
        if value is not None and not 1 <= value <= MAX_PAD_MULTIPLE:
            raise ConfigError(
                f"must be a positive number of rows up to {MAX_PAD_MULTIPLE} (got {value})",
                where="tokenizer.pad_to_multiple_of",
            )
        return value

    @pydantic.field_validator("tokens", mode="before")
    @classmethod
    def _token_names(cls, value: Any) -> Any:
        """A token is a non-empty string a tokenizer file can hold (UTF-8: no lone surrogate);
        stock mergekit would drop ``""`` silently."""
        for token in value if isinstance(value, dict) else ():
            check_token_text(token, f"tokenizer.tokens.{token!r}")
        return value


MAX_PAD_MULTIPLE = 1 << 16


def check_token_text(token: Any, where: str) -> None:
    if not isinstance(token, str) or not token:
        raise ConfigError("is empty; expected a token of at least one character", where=where)
    try:
        token.encode("utf-8")
    except UnicodeEncodeError:
        raise ConfigError(
            "holds a lone surrogate (not UTF-8 text); expected a token tokenizer.json can store",
            where=where,
        ) from None


def unknown_key_message(
    level: str, key: Any, valid: tuple[str, ...], suggest: str | None = None
) -> str:
    """The one message for a key mergekit would silently drop (schema, validate and runs)."""
    if suggest is None:
        close = difflib.get_close_matches(str(key), valid, n=1, cutoff=0.75)
        suggest = close[0] if close else None
    hint = f"did you mean {suggest!r}? " if suggest else ""
    consequence = " and run its stock vocabulary handling" if level == "tokenizer" else ""
    return (
        f"unknown {level} key (mergekit would silently ignore it{consequence}); "
        f"{hint}valid keys: {', '.join(sorted(valid))}"
    )


NEAR_MISS_TARGETS = (*PLUGIN_TOKENIZER_KEYS, *STOCK_TOKENIZER_KEYS, "tokenizer", REQUIRES_KEY)


def near_misses(doc: Any) -> list[tuple[tuple, str]]:
    """``(key path, message)`` for each key that looks like a misspelt plugin/tokenizer key.

    Walks the whole recipe document: a misplaced or misspelt ``aproximation`` anywhere would
    otherwise be dropped by mergekit. Token strings (keys of ``tokenizer.tokens``), merge
    parameters and method parameters are free-form and not compared; a key any of mergekit's
    or the plugin's recipe models define, at any level, is not a miss.
    """
    from mergekit import common, config
    from mergekit.tokenizer import config as tok_config

    models = [
        config.MergeConfiguration,
        config.InputModelDefinition,
        config.InputSliceDefinition,
        config.OutputSliceDefinition,
        config.OutputModuleDefinition,
        config.ConditionalParameter,
        common.ModelReference,
        common.ModelPath,
        tok_config.TokenEmbeddingConfig,
        tok_config.ModelTokenEmbedding,
        tok_config.ZeroEmbedding,
        TokenplugTokenizerConfig,
        ToolTokenSource,
        ApproximationConfig,
    ]
    known = {"name", *(k for m in models for k in m.model_fields)}
    found: list[tuple[tuple, str]] = []

    def walk(node: Any, path: tuple) -> None:
        if isinstance(node, list):
            for i, item in enumerate(node):
                walk(item, (*path, i))
            return
        if not isinstance(node, dict):
            return
        free_keys = path[-1:] in (("tokens",), ("parameters",), ("approximation",))
        tokenizer_level = path == ("tokenizer",)
        for key, value in node.items():
            child = (*path, key)
            if tokenizer_level and key not in TokenplugTokenizerConfig.model_fields:
                valid = tuple(TokenplugTokenizerConfig.model_fields)
                found.append((child, unknown_key_message("tokenizer", key, valid)))
            elif not free_keys and str(key) not in known:
                close = difflib.get_close_matches(str(key), NEAR_MISS_TARGETS, n=1, cutoff=0.8)
                if close and not path:
                    valid = (*config.MergeConfiguration.model_fields, "name")
                    hint = close[0] if close[0] in valid else f"tokenizer.{close[0]}"
                    found.append((child, unknown_key_message("top-level", key, valid, hint)))
                elif close:
                    hint = f"did you mean {close[0]!r}?"
                    found.append(
                        (child, f"unknown key (mergekit would silently ignore it); {hint}")
                    )
            if path[-1:] != ("approximation",):
                walk(value, child)

    walk(doc, ())
    return found


def check_near_misses(doc: Any, source: str | None = None) -> None:
    """Raise the first near-miss as a one-line ConfigError (used inside the stock commands)."""
    for path, message in near_misses(doc):
        where = ".".join(map(str, path))
        raise ConfigError(message, where=f"{source}: {where}" if source else where)


def take_requirement(parameters: Any) -> Any:
    """Before-validator of ``parameters``: remove ``requires`` (see REQUIRES_KEY) once its
    ``{mergekit-tokenplug: SPEC}`` matches (SPEC: a PEP 440 specifier, may be empty)."""
    from packaging.specifiers import InvalidSpecifier, SpecifierSet

    if not isinstance(parameters, dict) or REQUIRES_KEY not in parameters:
        return parameters
    value = parameters[REQUIRES_KEY]
    where = f"parameters.{REQUIRES_KEY}"
    if not isinstance(value, dict) or set(value) != {PLUGIN_NAME}:
        raise ConfigError(
            f"expected a mapping {{{PLUGIN_NAME}: VERSION_SPEC}} (e.g. {{{PLUGIN_NAME}: '>=0.1'}}), got {value!r}",
            where=where,
        )
    spec = value[PLUGIN_NAME]
    try:
        specifier = SpecifierSet(str(spec or ""))
    except InvalidSpecifier:
        raise ConfigError(
            f"{spec!r} is not a version specifier; expected e.g. '>=0.1'", where=where
        ) from None
    if __version__ not in specifier:
        raise ConfigError(
            f"the recipe needs {PLUGIN_NAME} {spec} but {__version__} is installed", where=where
        )
    return {k: v for k, v in parameters.items() if k != REQUIRES_KEY} or None


def _refuser(applies: Callable[[Any], bool], message: str, where: str) -> Callable[[Any], Any]:
    def _refuse(value: Any) -> Any:
        if applies(value):
            raise ConfigError(message, where=where)
        return value

    return _refuse


def enable_hint(reason: str) -> str:
    """What to do about a refusal: enable the plugin, or install the mergekit it supports."""
    if "DISABLE" in reason:
        return f"unset MERGEKIT_TOKENPLUG_DISABLE to run it with {PLUGIN_NAME}"
    return f"install the mergekit version {PLUGIN_NAME} supports (pip install 'mergekit==0.1.5')"


def refuse_requirement(reason: str) -> Callable[[Any], Any]:
    """A before-validator for ``parameters`` used when the plugin must not run."""
    return _refuser(
        lambda value: isinstance(value, dict) and REQUIRES_KEY in value,
        f"this recipe requires {PLUGIN_NAME} but {reason}; refusing to run it with stock mergekit; {enable_hint(reason)}",
        f"parameters.{REQUIRES_KEY}",
    )


def _field(node: Any, name: str) -> Any:
    """``name`` of a raw YAML mapping or of a validated model (None when absent)."""
    return node.get(name) if isinstance(node, dict) else getattr(node, name, None)


def tool_tokens(tokens: Any) -> list[str]:
    """The tokens of a raw or validated ``tokenizer.tokens`` mapping with a ``kind: tool`` source."""
    if not isinstance(tokens, dict):
        return []
    return [t for t, cfg in tokens.items() if _field(_field(cfg, "source"), "kind") == "tool"]


def _tokenizer_kind(value: Any) -> str:
    """``plugin`` for plugin keys, unknown keys the plugin model refuses by name, tool tokens and
    ``special: true`` tokens (stock mergekit would drop the key and add a regular token)."""
    if isinstance(value, TokenplugTokenizerConfig):
        return "plugin"
    if not isinstance(value, dict):
        return "stock"
    tokens = value.get("tokens")
    special = isinstance(tokens, dict) and any(
        isinstance(c, dict) and c.get("special") for c in tokens.values()
    )
    unknown = any(k not in STOCK_TOKENIZER_KEYS for k in value)
    return "plugin" if unknown or tool_tokens(tokens) or special else "stock"


PluginTokenizerField = Annotated[
    Annotated[TokenplugTokenizerConfig, Tag("plugin")] | Annotated[TokenizerConfig, Tag("stock")],
    Discriminator(_tokenizer_kind),
]


def uses_plugin(recipe: Any) -> bool:
    """Whether a recipe asks for the plugin's behaviour (its tokenizer keys, a ``kind: tool``
    or ``special`` token, unknown tokenizer keys it refuses by name, or the
    ``parameters.requires`` marker): a validated MergeConfiguration or a raw YAML document."""
    if isinstance(recipe, dict) and isinstance(recipe.get("parameters"), dict):
        if REQUIRES_KEY in recipe["parameters"]:  # the marker a recipe needing the plugin carries
            return True
    return _tokenizer_kind(_field(recipe, "tokenizer")) == "plugin"


def refuse_plugin_keys(reason: str) -> Callable[[Any], Any]:
    """A before-validator for the ``tokenizer`` field used when the plugin must not run."""
    return _refuser(
        lambda value: _tokenizer_kind(value) == "plugin",
        f"this recipe uses mergekit-tokenplug's keys but {reason}; refusing to run it with stock mergekit (which would copy raw rows or write zeros); {enable_hint(reason)}",
        "tokenizer.approximation",
    )


def chosen_branch_errors(errors: list[Any]) -> list[Any]:
    """A ``kind: tool`` token source failed as a tool source: report only that branch, not
    why it is not also a ``model_token``, ``zero`` or model reference."""
    tool_at = {
        tuple(e["loc"][:i])
        for e in errors
        for i, part in enumerate(e["loc"])
        if "ToolTokenSource" in str(part)
    }
    return [
        e
        for e in errors
        if not any(
            tuple(e["loc"][: len(p)]) == p
            and len(e["loc"]) > len(p)
            and "ToolTokenSource" not in str(e["loc"][len(p)])
            for p in tool_at
        )
    ]


def _branch_label(part: Any) -> bool:
    return str(part) in ("plugin", "stock", "ToolTokenSource") or str(part).startswith("function-")


def error_message(err: Any) -> str:
    """One pydantic error's text: the exception a validator raised, else pydantic's message."""
    ctx_err = (err.get("ctx") or {}).get("error")
    return str(ctx_err) if isinstance(ctx_err, Exception) else err["msg"]


def one_line_validation_error(exc: pydantic.ValidationError, source: str | None = None) -> str:
    """pydantic's report as one line: ``source: key.path: message``."""
    parts = []
    for err in chosen_branch_errors(exc.errors()):
        loc = ".".join(str(p) for p in err["loc"] if not _branch_label(p))
        msg = error_message(err)
        parts.append(f"{loc}: {msg}" if loc and not msg.startswith(loc) else msg)
    text = "; ".join(dict.fromkeys(parts))
    return f"{source}: {text}" if source else text
