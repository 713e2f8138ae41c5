"""The environment variables the plugin reads, read when asked (never at import time).

Flags share one parse: ``1/true/yes/on`` set them, ``0/false/no/off`` clear them, anything
else (or unset) leaves the default. Variables that can change output bytes are listed by
:func:`output_settings` and recorded in the manifest.
"""

from __future__ import annotations

import logging
import os

DISABLE = "MERGEKIT_TOKENPLUG_DISABLE"
ALLOW_PICKLE = "MERGEKIT_TOKENPLUG_ALLOW_PICKLE"
OVERWRITE = "MERGEKIT_TOKENPLUG_OVERWRITE"
ADAPT_THREADS = "MERGEKIT_TOKENPLUG_ADAPT_THREADS"
SHARD_CHUNK = "MERGEKIT_TOKENPLUG_SHARD_CHUNK"
CPU_BUDGET_MB = "MERGEKIT_TOKENPLUG_CPU_BUDGET_MB"
DIST_TIMEOUT_MIN = "MERGEKIT_TOKENPLUG_DIST_TIMEOUT_MIN"
HUB_IDS = "MERGEKIT_TOKENPLUG_HUB_IDS"


def flag(name: str, default: bool = False) -> bool:
    """A flag's value; anything but the known spellings keeps the default, with a warning
    (``=maybe`` must not leave a switch silently in the state the user did not ask for)."""
    value = os.environ.get(name, "").strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    if value and (name, value) not in _WARNED:
        _WARNED.add((name, value))
        logging.getLogger("mergekit_tokenplug").warning(
            "%s=%s is not a flag value (1/true/yes/on or 0/false/no/off); using %s",
            name,
            os.environ[name],
            "on" if default else "off",
        )
    return default


_WARNED: set[tuple[str, str]] = set()


def number(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, "").strip() or default)
    except ValueError:
        return default


def adapt_threads() -> bool:
    """On by default: OMP on CPU uses only the cores other processes leave free."""
    return flag(ADAPT_THREADS, default=True)


def shard_chunk() -> int:
    """Rows per chunk of a sharded fill: part of the numerical recipe (changes bytes)."""
    return number(SHARD_CHUNK, 2048)


def cpu_budget_mb() -> int:
    """Working memory a CPU kernel may use; sizes OMP's batches (can change the last bits)."""
    return number(CPU_BUDGET_MB, 1024)


def cpu_budget_bytes() -> int:
    return cpu_budget_mb() * 1024**2


def dist_timeout_min() -> int:
    return number(DIST_TIMEOUT_MIN, 30)


def hub_ids() -> dict[str, str]:
    """``PATH=ORG/NAME`` pairs (comma-separated): the Hub id the model card names for a local
    input, so a checkpoint built from local copies (CI, a workstation cache) can be published."""
    pairs = (item.split("=", 1) for item in os.environ.get(HUB_IDS, "").split(",") if "=" in item)
    return {path.strip(): hub.strip() for path, hub in pairs if path.strip() and hub.strip()}


def output_settings() -> dict[str, int]:
    """The settings that can change output bytes, for the manifest."""
    return {SHARD_CHUNK: shard_chunk(), CPU_BUDGET_MB: cpu_budget_mb()}
