"""File modes of an output directory: what the umask asks for, like any other tool's output.

safetensors' ``save_file`` creates its file 0600 whatever the umask (and mergekit writes
weights through it), so on a shared cluster or artifact store the weights would be unreadable
to everyone else while every other file is not.
"""

from __future__ import annotations

import os
from pathlib import Path


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def apply_umask(root: str | os.PathLike) -> None:
    """chmod every file to ``0666 & ~umask`` and every directory to ``0777 & ~umask``."""
    mask = current_umask()
    base = Path(root)
    for path in [base, *base.rglob("*")]:
        if path.is_symlink():
            continue
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~mask)
