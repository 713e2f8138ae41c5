"""Startup hook loaded from ``mergekit_tokenplug.pth``: activates the plugin inside mergekit.

mergekit has no plugin discovery, so the plugin patches it right after the relevant mergekit
modules finish importing. This module runs at interpreter start for every Python process in
the environment, so it imports neither torch nor mergekit: it only installs a
``sys.meta_path`` finder that wraps the loaders of the watched modules and calls
``mergekit_tokenplug.seam.activation.on_module_loaded(name, module)`` after each body runs.
``MERGEKIT_TOKENPLUG_DISABLE=1`` turns the patches off; what stays is a guard that refuses
recipes using the plugin's keys (stock mergekit would silently ignore them).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys

WATCHED = frozenset(
    {
        "mergekit.config",
        "mergekit.plan",
        "mergekit.merge",
        "mergekit.scripts.run_yaml",
        "mergekit.scripts.multimerge",
    }
)


class _PostImportLoader(importlib.abc.Loader):
    """Delegates to the real loader, then hands the finished module to the plugin."""

    def __init__(self, wrapped: importlib.abc.Loader):
        self._wrapped = wrapped

    def create_module(self, spec):
        return self._wrapped.create_module(spec)

    def exec_module(self, module) -> None:
        self._wrapped.exec_module(module)
        from mergekit_tokenplug.seam.activation import on_module_loaded

        on_module_loaded(module.__name__, module)

    def __getattr__(self, name):  # get_code, get_source, is_package, ... for tooling
        return getattr(self._wrapped, name)


class _PostImportFinder(importlib.abc.MetaPathFinder):
    """Finds watched mergekit modules through the normal path and wraps their loader."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in WATCHED:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None or isinstance(spec.loader, _PostImportLoader):
            return spec
        spec.loader = _PostImportLoader(spec.loader)
        return spec


_FINDER = _PostImportFinder()


def install() -> None:
    """Register the finder once. Safe to call repeatedly."""
    if _FINDER in sys.meta_path:
        return
    sys.meta_path.insert(0, _FINDER)
    # mergekit modules imported before the hook (unusual) are patched right away.
    already = [name for name in WATCHED if name in sys.modules]
    if already:
        from mergekit_tokenplug.seam.activation import on_module_loaded

        for name in sorted(already):
            on_module_loaded(name, sys.modules[name])
