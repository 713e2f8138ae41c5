#!/usr/bin/env bash
# GPU check of issue 5, in one run of under 8 minutes on one H200 (see bench/README.md):
#   (a) our batch_omp vs mergekit's batch_omp on the same GPU, 30,000 targets x 100,000
#       atoms x 4096 dims, k = 64 (targets shrink to the time budget after a probe;
#       mergekit's is timed on a subset and extrapolated linearly, said so in the output);
#   (b) our correlation phase's achieved TFLOP/s vs a dense bf16 matmul measured in the run;
#   (c) transplant of Gemma-3-270M (base) <- SmolLM2-135M (donor) with --device cuda.
#
# Usage:  bench/gpu_check.sh [--dry-small] MODELS_DIR [OUT_DIR]
#   MODELS_DIR holds gemma3-270m/ and smollm2-135m/: full HF checkpoints, or what
#   `bench/gpu_check.py pack DIR` writes (configs + tokenizers, no weights: stand-in models
#   with the real shapes and seeded random weights are then built on the device).
#   OUT_DIR defaults to $OUT (the device tool's result folder), else bench/out/gpu_check.
#   --dry-small: tiny sizes on whatever device is there (CPU here) to check every step.
#
# Through the device tool (the machine has no network; its image has torch, transformers,
# accelerate, safetensors, tokenizers but not mergekit or pydantic):
#   here, once:
#     .venv/bin/python bench/gpu_check.py pack bench/out/gpu_carry     # ~9 MiB, git-ignored
#     python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
#       --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl \
#       mergekit==0.1.5 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 \
#       typing-inspection==0.4.5 immutables==0.21                       # ~3 MiB, git-ignored
#   run: carry [".whl", "bench/out/gpu_carry"], timeout_s 540,
#        command "bash bench/gpu_check.sh bench/out/gpu_carry"     (results come back in $OUT:
#        summary.md, env/omp/models/e2e.json, gpu_check.log)
#   The real fp32 checkpoints (1.1 GB + 0.5 GB) exceed what the tool carries (64 MiB), so (c)
#   then runs on stand-ins: the real configs and tokenizers (the real vocabularies, alignment
#   and OMP problem sizes) with seeded random weights; where MODELS_DIR holds the weights
#   (`pack --with-weights`, or dirs already on the machine) the real models are used and bits
#   per byte of base and output are measured on the packed texts.
# Environment: PYTHON (default python3), GPU_CHECK_WHEELS (default REPO/.whl: wheels
#   installed with pip --no-index into a private folder first), GPU_CHECK_TOTAL_S (450),
#   GPU_CHECK_WORK (scratch, default /tmp/gpu_check_work).
set -euo pipefail

DRY=0
if [[ "${1:-}" == "--dry-small" ]]; then
    DRY=1
    shift
fi
if [[ $# -lt 1 ]]; then
    awk 'NR > 1 && /^#/ { print; next } NR > 1 { exit }' "$0" >&2
    exit 2
fi
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MODELS_DIR="$(cd "$1" && pwd)"
OUT_DIR="${2:-${OUT:-$REPO/bench/out/gpu_check}}"
mkdir -p "$OUT_DIR"
OUT_DIR="$(cd "$OUT_DIR" && pwd)"
WORK="${GPU_CHECK_WORK:-/tmp/gpu_check_work}"
PY="${PYTHON:-python3}"
TOTAL_S="${GPU_CHECK_TOTAL_S:-450}"
WHEELS="${GPU_CHECK_WHEELS:-$REPO/.whl}"
LOG="$OUT_DIR/gpu_check.log"
rm -rf "$WORK"
mkdir -p "$WORK"
: >"$LOG"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
cd "$REPO"

log() { echo "[gpu_check $(date +%H:%M:%S) +${SECONDS}s] $*" | tee -a "$LOG"; }
remaining() { echo $((TOTAL_S - SECONDS)); }
# step NAME MAX_SECONDS CMD...: run under a timeout of min(MAX, time left); never aborts
# the script (a failed step is recorded and the next one runs).
FAILED=()
step() {
    local name="$1" max="$2"
    shift 2
    local left
    left="$(remaining)"
    local limit=$((max < left ? max : left))
    if ((limit < 5)); then
        log "$name: SKIPPED (no time left)"
        FAILED+=("$name(skipped)")
        return 0
    fi
    log "$name: start (timeout ${limit}s)"
    local rc=0
    timeout --signal=TERM --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$LOG" || rc=$?
    if ((rc == 0)); then
        log "$name: ok"
    else
        log "$name: FAILED (exit $rc$([[ $rc == 124 ]] && echo ', timed out'))"
        FAILED+=("$name(exit $rc)")
    fi
}

log "repo $REPO, models $MODELS_DIR, out $OUT_DIR, dry-small=$DRY, python $PY, budget ${TOTAL_S}s"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
if compgen -G "$WHEELS/*.whl" >/dev/null; then
    step wheels 90 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
        --upgrade --target "$WORK/site" "$WHEELS"/*.whl
    export PYTHONPATH="$REPO:$WORK/site${PYTHONPATH#"$REPO"}"
fi
command -v nvidia-smi >/dev/null && nvidia-smi 2>&1 | tee -a "$LOG" || true

if ((DRY)); then
    DEVICE=cpu
    OMP_ARGS=(--targets 600 --atoms 3000 --dim 64 --k 8 --select bf16 --peak-n 256
        --probe-targets 100 --ours-budget-s 4 --mk-probe-targets 32 --mk-budget-s 4
        --variant-targets 200)
    MODEL_ARGS=(--shrink)
    K=8
else
    DEVICE=cuda
    OMP_ARGS=()
    MODEL_ARGS=()
    K=64
fi

ENV_ARGS=()
((DRY)) || ENV_ARGS=(--require-cuda)
step env 60 "$PY" bench/gpu_check.py env "${ENV_ARGS[@]}" --json "$OUT_DIR/env.json"
if [[ " ${FAILED[*]} " == *" env("* ]]; then
    log "environment check failed: stopping (see $LOG)"
    exit 1
fi

# (a) + (b): leave at least 150 s for the models and the transplant.
OMP_MAX=$(($(remaining) - 150))
((OMP_MAX > 240)) && OMP_MAX=240
step omp "$OMP_MAX" "$PY" bench/gpu_check.py omp "${OMP_ARGS[@]}" \
    --budget-s $((OMP_MAX > 30 ? OMP_MAX - 20 : 10)) --json "$OUT_DIR/omp.json"

# (c)
step models 120 "$PY" bench/gpu_check.py models "$MODELS_DIR" "$WORK/models" "${MODEL_ARGS[@]}" \
    --json "$OUT_DIR/models.json"
if [[ -f "$OUT_DIR/models.json" ]]; then
    E2E_MAX=$(($(remaining) - 15))
    TEXTS=()
    [[ -d "$MODELS_DIR/texts" ]] && TEXTS=(--texts "$MODELS_DIR/texts")
    step e2e "$E2E_MAX" "$PY" bench/gpu_check.py e2e --models-json "$OUT_DIR/models.json" \
        --work "$WORK/e2e" --device "$DEVICE" --k "$K" "${TEXTS[@]}" \
        --budget-s $((E2E_MAX > 20 ? E2E_MAX - 10 : 10)) --log "$LOG" --json "$OUT_DIR/e2e.json"
fi

TOTAL_S=$((SECONDS + 30)) step summarize 30 "$PY" bench/gpu_check.py summarize "$OUT_DIR" \
    --mode "$([[ $DRY == 1 ]] && echo 'dry-small (CPU, tiny sizes)' || echo 'full')"
log "done in ${SECONDS}s; failed steps: ${FAILED[*]:-none}"
((${#FAILED[@]} == 0))
