"""``--quiet`` means no progress bar at all, mergekit's own included.

mergekit 0.1.5 draws several tqdm bars (building tokenizer permutations, writing shards,
mergekit-multi's stages) whatever its ``--quiet`` says. For the duration of a quiet run every
tqdm bar is created disabled (tqdm's ``TQDM_DISABLE`` is read once at import, too early to
help).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from typing import Any

import tqdm.std


@contextlib.contextmanager
def bars_disabled(quiet: bool) -> Iterator[None]:
    if not quiet:
        yield
        return
    cls = tqdm.std.tqdm
    original = cls.__init__

    @functools.wraps(original)
    def disabled(self: Any, *args: Any, **kwargs: Any) -> None:
        kwargs["disable"] = True
        original(self, *args, **kwargs)

    cls.__init__ = disabled
    try:
        yield
    finally:
        cls.__init__ = original
