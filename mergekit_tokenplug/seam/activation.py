"""Patches mergekit module by module, right after each finishes importing.

Called by the startup hook (``mergekit_tokenplug_hook``) for ``mergekit.config``,
``mergekit.plan`` and ``mergekit.merge``. On a mergekit version the plugin was not tested
with, or when ``MERGEKIT_TOKENPLUG_DISABLE=1`` is set after start-up, only a guard is
installed: recipes that use the plugin's keys are refused instead of silently running stock.
"""

from __future__ import annotations

import importlib
import logging
import threading
from types import ModuleType

from mergekit_tokenplug.seam import refusal_reason

LOG = logging.getLogger("mergekit_tokenplug")
_LOCK = threading.RLock()
_DONE: set[str] = set()
PATCHED = ("mergekit.config", "mergekit.plan", "mergekit.merge")  # what activate() patches
# mergekit's recipe commands and the name of their recipe-file argument.
CLI_MODULES = {
    "mergekit.scripts.run_yaml": "config_file",
    "mergekit.scripts.multimerge": "config_file",
}


def on_module_loaded(name: str, module: ModuleType) -> None:
    """Apply the patch belonging to ``name`` once per process."""
    with _LOCK:
        if name in _DONE:
            return
        _DONE.add(name)
        reason = refusal_reason()
        if reason and "disabled" not in reason and name == "mergekit.config":
            LOG.warning("mergekit-tokenplug inactive: %s", reason)
        # lazy imports: each patch loads with its mergekit module
        if name == "mergekit.config":
            from mergekit_tokenplug.seam import config_patch  # lazy

            config_patch.apply(module, refuse_reason=reason)
        elif name in CLI_MODULES:  # also when refusing: plugin recipes get validate's message
            from mergekit_tokenplug.seam import cli_patch  # lazy

            cli_patch.apply(module, CLI_MODULES[name])
        elif reason:
            return
        elif name == "mergekit.plan":
            from mergekit_tokenplug.seam import planner  # lazy

            planner.apply(module)
        elif name == "mergekit.merge":
            from mergekit_tokenplug.seam import log_notes, run, tied  # lazy

            run.apply(module)
            tied.apply(module)
            log_notes.apply()


def activate() -> None:
    """Import-time activation for processes that started without the ``.pth`` (e.g. ``python -S``)."""
    for name in PATCHED:
        on_module_loaded(name, importlib.import_module(name))


def is_active() -> bool:
    return set(PATCHED) <= _DONE and refusal_reason() is None
