"""The plugin's recipe keys, grafted onto mergekit's pydantic config models.

``tokenizer.approximation`` selects the method that estimates rows a model lacks. mergekit's
models ignore unknown keys, so a recipe with plugin keys must never fall through to the plain
``TokenizerConfig`` (that would silently run stock copies/zeros): the ``tokenizer`` field gets
a callable discriminator that routes any value carrying a plugin key to the extended model.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

import pydantic
from mergekit.tokenizer.config import TokenizerConfig
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag

from mergekit_tokenplug.errors import ConfigError
from mergekit_tokenplug.registry import DEFAULT_METHOD

PLUGIN_TOKENIZER_KEYS = ("approximation",)


class ApproximationConfig(BaseModel):
    """``tokenizer.approximation``: a method name plus that method's own parameters inline."""

    model_config = ConfigDict(extra="allow", frozen=True)

    method: str = DEFAULT_METHOD
    seed: int | None = Field(
        None, description="seed for stochastic methods (defaults to --random-seed, else 0)"
    )

    @pydantic.model_validator(mode="after")
    def _check_method(self) -> ApproximationConfig:
        from mergekit_tokenplug import registry

        spec = registry.get(self.method)
        if registry.Need.MODEL_FORWARD in spec.needs:
            raise ConfigError(
                f"method {self.method!r} initializes individual tokens; use tokenizer.tokens.<token>.source: {{kind: {self.method}, name: ..., description: ...}}",
                where="tokenizer.approximation.method",
            )
        spec.parse_params(self.method_params())
        return self

    def method_params(self) -> dict[str, Any]:
        """The raw method parameters (everything but ``method`` and ``seed``)."""
        return dict(self.__pydantic_extra__ or {})

    def parsed_params(self) -> Any:
        from mergekit_tokenplug import registry

        return registry.get(self.method).parse_params(self.method_params())

    def key(self) -> str:
        """A canonical, hashable form for mergekit's frozen task fields."""
        return json.dumps(
            {"method": self.method, "seed": self.seed, "params": self.method_params()},
            sort_keys=True,
        )

    @classmethod
    def from_key(cls, key: str) -> ApproximationConfig:
        data = json.loads(key)
        return cls(method=data["method"], seed=data["seed"], **data["params"])


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
    """mergekit's ``TokenizerConfig`` plus the plugin's keys."""

    approximation: ApproximationConfig = Field(
        default_factory=lambda: ApproximationConfig(method=DEFAULT_METHOD)
    )


def has_tool_tokens(tokens: Any) -> bool:
    """Whether a raw or validated ``tokenizer.tokens`` mapping holds a ``kind: tool`` source."""
    if not isinstance(tokens, dict):
        return False
    for cfg in tokens.values():
        source = cfg.get("source") if isinstance(cfg, dict) else getattr(cfg, "source", None)
        kind = source.get("kind") if isinstance(source, dict) else getattr(source, "kind", None)
        if kind == "tool":
            return True
    return False


def _tokenizer_kind(value: Any) -> str:
    if isinstance(value, TokenplugTokenizerConfig):
        return "plugin"
    if isinstance(value, dict) and (
        any(k in value for k in PLUGIN_TOKENIZER_KEYS) or has_tool_tokens(value.get("tokens"))
    ):
        return "plugin"
    return "stock"


PluginTokenizerField = Annotated[
    Annotated[TokenplugTokenizerConfig, Tag("plugin")] | Annotated[TokenizerConfig, Tag("stock")],
    Discriminator(_tokenizer_kind),
]


def uses_plugin(merge_config: Any) -> bool:
    """Whether a validated MergeConfiguration asks for the plugin's behaviour."""
    return isinstance(getattr(merge_config, "tokenizer", None), TokenplugTokenizerConfig)


def refuse_plugin_keys(reason: str):
    """A before-validator for the ``tokenizer`` field used when the plugin must not run."""

    def _refuse(value: Any) -> Any:
        if _tokenizer_kind(value) == "plugin":
            raise ConfigError(
                f"this recipe uses mergekit-tokenplug's keys but {reason}; refusing to run it with stock mergekit (which would copy raw rows or write zeros)",
                where="tokenizer.approximation",
            )
        return value

    return _refuse


def one_line_validation_error(exc: pydantic.ValidationError, source: str | None = None) -> str:
    """pydantic's report as one line: ``source: key.path: message``."""
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"] if p not in ("plugin", "stock"))
        msg = err["msg"]
        ctx_err = (err.get("ctx") or {}).get("error")
        if isinstance(ctx_err, Exception):
            msg = str(ctx_err)
        parts.append(f"{loc}: {msg}" if loc and not msg.startswith(loc) else msg)
    text = "; ".join(dict.fromkeys(parts))
    return f"{source}: {text}" if source else text
