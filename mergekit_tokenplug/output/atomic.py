"""Atomic output directories: a failed or interrupted run leaves nothing that looks complete."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

from mergekit_tokenplug import settings
from mergekit_tokenplug.errors import InputError


def check_output_dir(out_path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Refuse a non-empty OUT unless overwriting was asked for; return it resolved."""
    out = Path(out_path).expanduser().resolve()
    if out.exists() and not out.is_dir():
        raise InputError(
            "exists and is not a directory; expected a new or empty directory",
            where=f"output path {out}",
        )
    if out.is_dir() and any(out.iterdir()) and not (overwrite or settings.flag(settings.OVERWRITE)):
        raise InputError(
            f"exists and is not empty; expected a new or empty directory (pass --overwrite or set {settings.OVERWRITE}=1 to replace it)",
            where=f"output path {out}",
        )
    return out


@contextlib.contextmanager
def atomic_directory(out_path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success it replaces ``out_path``, else it is removed."""
    out = check_output_dir(out_path, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        with _terminate_as_exception():
            yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    os.chmod(out, 0o777 & ~_umask())


@contextlib.contextmanager
def _terminate_as_exception() -> Iterator[None]:
    """Turn SIGTERM (a launcher stopping the group, a CI cancel) into SystemExit so the
    temporary directory is removed instead of left behind."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
