"""Everything that touches mergekit internals lives in this package, and nothing else does.

- here: the version guard and switch (may the plugin patch mergekit in this process?).
- ``activation``: per-module patch dispatch (called by the startup hook).
- ``schema``: the ``tokenizer.approximation`` key on mergekit's config models.
- ``vocab_task``: the vocabulary seam (replacement for ``PermutedVocabulary``).
- ``planner``: swaps the seam into ``MergePlanner.plan_tensor``.
- ``run``: atomic output, config fix-ups, model card and manifest around ``run_merge``.
"""

from importlib.metadata import PackageNotFoundError, version

from mergekit_tokenplug import settings

SUPPORTED_MERGEKIT_VERSIONS = ("0.1.5",)


def mergekit_version() -> str:
    try:
        return version("mergekit")
    except PackageNotFoundError:  # pragma: no cover - mergekit is a hard dependency
        return "unknown"


def refusal_reason() -> str | None:
    """Why the plugin must not patch behaviour (None when it may)."""
    if settings.flag(settings.DISABLE):
        return "the plugin is disabled (MERGEKIT_TOKENPLUG_DISABLE is set)"
    found = mergekit_version()
    if found not in SUPPORTED_MERGEKIT_VERSIONS:
        return f"mergekit {found} is installed and mergekit-tokenplug supports only {', '.join(SUPPORTED_MERGEKIT_VERSIONS)}"
    return None
