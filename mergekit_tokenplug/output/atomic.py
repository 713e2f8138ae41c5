"""Atomic output directories: a failed or interrupted run leaves nothing that looks complete,
and the final move never destroys anything it was not asked to replace.

Without ``--overwrite`` the finished directory is renamed onto OUT; POSIX ``rename`` replaces
an empty directory atomically and fails on a non-empty one, so a file put into OUT during the
run (or a concurrent run that finished first) makes this run fail instead of deleting it.
With ``--overwrite`` the old OUT is moved aside, compared with what it held when the run
started, and deleted only when nothing changed in between; else it is put back. A stock
``mergekit-yaml`` run (``keep_others``) writes into a non-empty OUT as stock mergekit does:
its files replace those of the same name and every other file stays.

Every caller names what the run reads (``inputs``: model folders, corpus files); OUT may be
none of them, hold none of them and lie inside none of them, symlinks resolved, so even
``--overwrite`` never removes an input. The temporary directory is locked while its run
lives; one left by a killed run (kill -9, power loss) is removed by the next run on the
same OUT. Files and directories get the modes the umask asks for.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

from mergekit_tokenplug import settings
from mergekit_tokenplug.errors import InputError
from mergekit_tokenplug.output.modes import apply_umask, current_umask

Listing = dict[str, tuple[int, int]]


def _real(path: str | os.PathLike) -> Path:
    return Path(os.path.realpath(os.path.expanduser(path)))


def overlaps(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two paths are one, or one lies inside the other (symlinks resolved)."""
    ra, rb = _real(a), _real(b)
    return ra == rb or ra in rb.parents or rb in ra.parents


def check_output_dir(
    out_path: str | os.PathLike,
    *,
    inputs: Iterable[str | os.PathLike],
    overwrite: bool = False,
    keep_others: bool = False,
) -> Path:
    """Refuse an OUT that overlaps an input or a file the run reads, or a non-empty one unless
    overwriting (or keeping other files); return it resolved."""
    out = _real(out_path)
    where = f"output path {out}"
    for item in inputs:
        if os.path.lexists(os.path.expanduser(item)) and overlaps(out, item):
            raise InputError(
                f"is, contains or lies inside the input {item}; expected a directory apart from every input (refused even with --overwrite)",
                where=where,
            )
    if out.exists() and not out.is_dir():
        raise InputError(
            "exists and is not a directory; expected a new or empty directory", where=where
        )
    if out.is_dir() and any(out.iterdir()) and not keep_others:
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
    *,
    inputs: Iterable[str | os.PathLike],
    overwrite: bool = False,
    keep_others: bool = False,
) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success it takes the place of ``out_path``
    (or, with ``keep_others``, its files join OUT's), else it is removed."""
    overwrite = overwrite or settings.flag(settings.OVERWRITE)
    out = check_output_dir(out_path, inputs=inputs, overwrite=overwrite, keep_others=keep_others)
    non_empty = out.is_dir() and any(out.iterdir())
    before = listing(out) if non_empty and overwrite else None
    keep = non_empty and keep_others and not overwrite
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_partials(out)
        tmp, lock = _locked_partial(out)
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
        apply_umask(tmp)
        if keep:
            _merge_into(tmp, out)
        else:
            _move_into_place(tmp, out, before)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        os.close(lock)
    if not keep:
        os.chmod(out, 0o777 & ~current_umask())


PARTIAL = "partial"


def _locked_partial(out: Path) -> tuple[Path, int]:
    """A new temporary directory beside OUT, locked (flock) for as long as this process lives:
    created under another name and renamed once locked, so no run ever sees it unlocked."""
    start = Path(tempfile.mkdtemp(prefix=f".{out.name}.starting-", dir=out.parent))
    fd = os.open(start, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    tmp = start.with_name(start.name.replace(".starting-", f".{PARTIAL}-", 1))
    os.rename(start, tmp)
    return tmp, fd


def remove_stale_partials(out: Path) -> list[Path]:
    """Remove temporary directories of runs on OUT that died without cleaning up (their lock
    went with their process); a live run's directory is locked and left alone."""
    removed = []
    for path in sorted(out.parent.glob(f".{out.name}.{PARTIAL}-*")):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # a run in progress holds it
        else:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
        finally:
            os.close(fd)
    return removed


# What a loader may read from a folder: transformers by name and index, vLLM every *.safetensors.
WEIGHT_PATTERNS = (
    "*.safetensors",
    "*.safetensors.index.json",
    "pytorch_model*.bin",
    "*.bin.index.json",
)


def _merge_into(tmp: Path, out: Path) -> None:
    """Stock mergekit's promise for a non-empty OUT: the run's files replace those of the
    same name, every other file stays. Weights of an earlier model that this run would leave
    beside its own (a loader could take them) are refused instead, as is a file where the
    run writes a directory (or the reverse)."""
    where = f"output path {out}"
    ours = {p.relative_to(tmp).as_posix() for p in tmp.rglob("*")}
    stale = sorted(p.name for pat in WEIGHT_PATTERNS for p in out.glob(pat) if p.name not in ours)
    if stale:
        raise InputError(
            f"holds weight files this run would not replace ({', '.join(stale[:3])}), which a loader could take for the new model's; nothing was written; expected a new or empty directory (or {settings.OVERWRITE}=1 to replace it)",
            where=where,
        )
    clash = sorted(
        r for r in ours if (out / r).exists() and (out / r).is_dir() != (tmp / r).is_dir()
    )
    if clash:
        raise InputError(
            f"holds {clash[0]} where this run writes a {'directory' if (tmp / clash[0]).is_dir() else 'file'}; nothing was written; expected a new or empty directory",
            where=where,
        )
    files = sorted(
        (p for p in tmp.rglob("*") if not p.is_dir()),
        key=lambda p: p.name == "tokenplug_manifest.json",
    )
    for src in files:  # the manifest last: it describes a complete output
        dst = out / src.relative_to(tmp)
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.replace(src, dst)
    shutil.rmtree(tmp, ignore_errors=True)


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
