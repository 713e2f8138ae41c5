"""The curated recipes shipped with the package (``recipes list`` / ``recipes show``).

A wheel carries the repository's ``recipes/`` folder as ``mergekit_tokenplug/recipes/shipped``
(hatch ``force-include``); a checkout or an editable install reads ``recipes/`` itself.
"""

from __future__ import annotations

from pathlib import Path

from mergekit_tokenplug.errors import ConfigError

_HERE = Path(__file__).resolve().parent


def collection_dir() -> Path:
    """Where the shipped recipes are: inside the installed package, else the checkout."""
    for candidate in (_HERE / "shipped", _HERE.parents[1] / "recipes"):
        if any(candidate.glob("*.yaml")):
            return candidate
    raise ConfigError("no shipped recipes found (expected them inside the package)")


def recipe_files() -> list[Path]:
    return sorted(collection_dir().glob("*.yaml"))


def summary(path: Path) -> str:
    """The recipe's first header line (its title), without the comment marker."""
    first = path.read_text(encoding="utf-8").splitlines()[0]
    return first.lstrip("#").strip()


def find(name: str) -> Path:
    """A recipe by file name, with or without ``.yaml``, or by its number prefix (``01``)."""
    files = recipe_files()
    matches = [p for p in files if name in (p.name, p.stem) or p.stem.split("-", 1)[0] == name]
    if len(matches) != 1:
        names = ", ".join(p.stem for p in files)
        raise ConfigError(f"no shipped recipe {name!r}; expected one of: {names}", where="NAME")
    return matches[0]
