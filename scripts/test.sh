#!/usr/bin/env bash
# The test command (README "Run the tests"; .ci/run calls it): bootstrap, lint, test.
# Runs the default suite plus the `slow` checks; `real` (pretrained models) stays in bench/.
# Then the recorded-reference tests once more on other CPU kernel paths (torch's generic
# kernels, MKL's compatible code path): an expectation that holds on one processor only fails
# here, not on a user's machine. Arguments go to the first pytest run and skip the second.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh test
.venv/bin/ruff check .
.venv/bin/python -m pytest -q -m "not real" "$@"
if [ "$#" -eq 0 ]; then
  echo "== recorded references on other CPU kernel paths (ATEN_CPU_CAPABILITY=default MKL_CBWR=COMPATIBLE)"
  ATEN_CPU_CAPABILITY=default MKL_CBWR=COMPATIBLE \
    .venv/bin/python -m pytest -q tests/test_goldens.py tests/test_recipes.py \
    -k "matches_reference or runs_on_tiny_models"
fi
