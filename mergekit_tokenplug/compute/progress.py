"""One policy for every progress bar, the plugin's and mergekit's own.

- ``--quiet``: no bar at all. mergekit 0.1.5 draws several tqdm bars (building tokenizer
  permutations, writing shards, mergekit-multi's stages) whatever its ``--quiet`` says.
- stderr is a terminal: tqdm as usual, one line a bar (inner bars clear themselves).
- stderr is a file or a pipe (CI logs, ``run.sh > log``): tqdm's carriage-return redraws and
  cursor moves would pile up as hundreds of lines, so a bar prints one plain line at most every
  ``MERGEKIT_TOKENPLUG_PROGRESS_SECONDS`` (default 30) and nothing at all if it finishes sooner.

For the duration of a run every tqdm bar is created with these settings (tqdm's own
``TQDM_*`` variables are read once at import, too early to help). mergekit's graph bar
(``Executing graph``) shows elapsed time and no ETA: one of its tasks, the vocabulary
estimate, takes most of the run, so a rate-based ETA says hours while the plugin's own bar
moves (``ETA 4:19:56`` on a 2-minute transplant).
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import re
import sys
from collections.abc import Callable, Iterator
from typing import Any, ParamSpec, TypeVar

import tqdm.std

PERIOD_ENV = "MERGEKIT_TOKENPLUG_PROGRESS_SECONDS"
GRAPH_BARS = ("Executing graph",)  # mergekit's task bars (graph.py, multigpu_executor.py)
NO_ETA = "{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}]"
_CURSOR_MOVES = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
P = ParamSpec("P")
R = TypeVar("R")


class LineStream(io.TextIOBase):
    """What a bar writes to a log: each redraw becomes one plain line, cleared bars nothing."""

    def __init__(self, stream: Any):
        self.stream = stream

    def write(self, text: str) -> int:
        for line in _CURSOR_MOVES.sub("", text).replace("\r", "\n").split("\n"):
            if line.strip():
                self.stream.write(line.rstrip() + "\n")
        return len(text)

    def flush(self) -> None:
        self.stream.flush()


def log_period() -> float:
    """Seconds between two lines of a bar drawn into a log (``PERIOD_ENV``, default 30)."""
    raw = os.environ.get(PERIOD_ENV, "30")
    try:
        period = float(raw)
    except ValueError:
        period = -1.0
    if not period >= 0:
        raise ValueError(f"{PERIOD_ENV}={raw!r}: expected a number of seconds >= 0")
    return period


def bar_settings(quiet: bool, stream: Any = None) -> dict[str, Any]:
    """The tqdm keyword arguments the policy imposes on a bar writing to ``stream``."""
    if quiet:
        return {"disable": True}
    stream = stream if stream is not None else sys.stderr
    if getattr(stream, "isatty", lambda: False)():
        return {}
    period = log_period()
    return {
        "file": LineStream(stream),
        "mininterval": period,
        "maxinterval": max(period, 10.0),  # tqdm's monitor would redraw every 10 s
        "delay": period,
        "ascii": True,
    }


@contextlib.contextmanager
def bar_policy(quiet: bool) -> Iterator[None]:
    """Apply :func:`bar_settings` to every tqdm bar created inside the block."""
    cls = tqdm.std.tqdm
    original = cls.__init__

    @functools.wraps(original)
    def styled(self: Any, *args: Any, **kwargs: Any) -> None:
        target = kwargs.get("file")
        if isinstance(target, LineStream):  # already styled by an enclosing policy
            target = target.stream
        kwargs.update(bar_settings(quiet, target))
        if kwargs.get("desc") in GRAPH_BARS:
            kwargs.setdefault("bar_format", NO_ETA)
        original(self, *args, **kwargs)

    cls.__init__ = styled
    try:
        yield
    finally:
        cls.__init__ = original


def quiet_bars(fn: Callable[P, R]) -> Callable[P, R]:
    """Run ``fn`` under :func:`bar_policy` of its ``quiet`` keyword, so that ``quiet`` also
    silences the bars of the libraries it calls (transformers' ``Loading weights``)."""

    @functools.wraps(fn)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        with bar_policy(bool(kwargs.get("quiet", False))):
            return fn(*args, **kwargs)

    return run
