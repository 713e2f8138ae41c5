"""Thin wrapper kept for the benchmarks and old instructions: the asset code ships in the
wheel as :mod:`mergekit_tokenplug.assets` (command: ``mergekit-tokenplug assets``).

Usage::

    python bench/assets.py [--only smollm2,gemma3,texts] [--dtype float32|bfloat16] [--install]
"""

from __future__ import annotations

import sys

from mergekit_tokenplug import assets as _assets

if __name__ == "__main__":
    _assets.main()
else:  # ``import assets`` from bench/ scripts: the packaged module itself
    sys.modules[__name__] = _assets
