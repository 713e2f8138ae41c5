"""Whether the plugin may change mergekit's behaviour in this process (version and switch)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from mergekit_tokenplug import settings
from mergekit_tokenplug.seam import SUPPORTED_MERGEKIT_VERSIONS


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
