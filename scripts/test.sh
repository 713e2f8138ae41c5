#!/usr/bin/env bash
# The test command (README "Run the tests"; .ci/run calls it): bootstrap, lint, test.
# Runs the default suite plus the `slow` checks; `real` (pretrained models) stays in bench/.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh test
.venv/bin/ruff check .
exec .venv/bin/python -m pytest -q -m "not real" "$@"
