"""Atomic output directories: a failed or interrupted run leaves nothing that looks complete,
and the final move never destroys anything it was not asked to replace.

Without ``--overwrite`` the finished directory is renamed onto OUT; POSIX ``rename`` replaces
an empty directory atomically and fails on a non-empty one, so a file put into OUT during the
run (or a concurrent run that finished first) makes this run fail instead of deleting it.
With ``--overwrite`` the old OUT is moved aside, compared with what it held when the run
started, and deleted only when nothing changed in between; else it is put back.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

from mergekit_tokenplug import settings
from mergekit_tokenplug.errors import InputError
from mergekit_tokenplug.output.modes import current_umask

Listing = dict[str, tuple[int, int]]


def _real(path: str | os.PathLike) -> Path:
    return Path(os.path.realpath(os.path.expanduser(path)))


def _overlaps(a: Path, b: Path) -> bool:
    return a == b or a in b.parents or b in a.parents


def check_output_dir(
    out_path: str | os.PathLike,
    overwrite: bool = False,
    inputs: Iterable[str | os.PathLike] = (),
) -> Path:
    """Refuse an OUT that overlaps an input, or a non-empty one unless overwriting; return it resolved."""
    out = _real(out_path)
    where = f"output path {out}"
    for item in inputs:
        if os.path.exists(os.path.expanduser(item)) and _overlaps(out, _real(item)):
            raise InputError(
                f"is, contains or lies inside the input {item}; expected a directory apart from every input (refused even with --overwrite)",
                where=where,
            )
    if out.exists() and not out.is_dir():
        raise InputError(
            "exists and is not a directory; expected a new or empty directory", where=where
        )
    if out.is_dir() and any(out.iterdir()):
        if not (overwrite or settings.flag(settings.OVERWRITE)):
            raise InputError(
                f"exists and is not empty; expected a new or empty directory (pass --overwrite or set {settings.OVERWRITE}=1 to replace it)",
                where=where,
            )
        cwd = _real(os.getcwd())
        if out == cwd or out in cwd.parents or out == _real(Path.home()):
            raise InputError(
                "is the current directory, one of its parents or the home directory; --overwrite replaces only a separate output directory",
                where=where,
            )
    return out


def listing(root: Path) -> Listing:
    """What a directory holds (relative path -> size, mtime), to notice changes during a run."""
    found: Listing = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            found[p.relative_to(root).as_posix()] = (st.st_size, st.st_mtime_ns)
    return found


@contextlib.contextmanager
def atomic_directory(
    out_path: str | os.PathLike,
    overwrite: bool = False,
    inputs: Iterable[str | os.PathLike] = (),
) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success it takes the place of ``out_path``,
    else it is removed."""
    out = check_output_dir(out_path, overwrite, inputs)
    before = listing(out) if out.is_dir() and any(out.iterdir()) else None
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    except OSError as exc:
        raise InputError(
            f"cannot create a directory in {out.parent} ({exc.strerror or exc}); expected a writable parent directory",
            where=f"output path {out}",
        ) from None
    try:
        with _terminate_as_exception():
            try:
                yield tmp
            except OSError as exc:
                if not _is_write_failure(exc, tmp):
                    raise
                raise InputError(
                    f"cannot write the output ({exc.strerror}); expected a writable location with enough free space",
                    where=f"output path {out}",
                ) from None
        _move_into_place(tmp, out, before)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    os.chmod(out, 0o777 & ~current_umask())


def _is_write_failure(exc: OSError, tmp: Path) -> bool:
    """A full disk, a quota or a read-only file system, or any failure on a file of the output."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
        return True
    return bool(exc.filename) and str(exc.filename).startswith(str(tmp))


def _move_into_place(tmp: Path, out: Path, before: Listing | None) -> None:
    where = f"output path {out}"
    if before is None:
        try:
            os.rename(tmp, out)  # onto nothing or an empty directory; fails on a non-empty one
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
                raise
            raise InputError(
                "was written to during the run (it is no longer empty); nothing was replaced and this run's output was discarded; expected it to stay new or empty",
                where=where,
            ) from None
        return
    aside = Path(tempfile.mkdtemp(prefix=f".{out.name}.replaced-", dir=out.parent))
    try:
        os.rename(out, aside)
    except OSError:
        aside.rmdir()
        raise InputError(
            "changed during the run; nothing was replaced and this run's output was discarded",
            where=where,
        ) from None
    if listing(aside) == before:
        with contextlib.suppress(OSError):
            os.rename(tmp, out)
            shutil.rmtree(aside, ignore_errors=True)
            return
    with contextlib.suppress(OSError):
        os.rename(aside, out)
    kept = f" (its previous content is kept at {aside})" if aside.exists() else ""
    raise InputError(
        f"changed during the run (another run or process wrote there); nothing was replaced and this run's output was discarded{kept}",
        where=where,
    )


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
