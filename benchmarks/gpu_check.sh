#!/usr/bin/env bash
# Build, test and benchmark sdu_ext on a CUDA machine (written for an H200, sm_90).
# Run from the repository root:   bash benchmarks/gpu_check.sh
#
#   OUT        where logs and results go (default benchmarks/results/gpu)
#   PYTHON     interpreter that has CUDA torch (default: python3, else python)
#   BUDGET_S   wall-clock budget for the whole script (default 540 s)
#   KEEP_GOING 1: still run the benchmark after a failing test run
#   TEST_WORKERS  pytest-xdist workers when xdist is installed (default 8)
#   REPS       timed reps per benchmark job (default 30)
#   BENCH_RESERVE_S  seconds of the budget kept for the benchmarks (default 300)
#   TRAIN_REPS timed reps per training-step benchmark job (default 10)
#
# Writes at most 15 files into $OUT: gpu.txt, build.log, tests.log, bench.log, ops_cuda.csv, ops_cuda.md,
# train_step.log, train_step_cuda.{csv,md}, paper_epoch.log, paper_epoch_cuda.{csv,md}, precision.log,
# precision_cuda.{csv,md}. Nothing is written outside the repository except
# what pip installs (caches go to benchmarks/.cache).
set -euo pipefail

OUT=${OUT:-benchmarks/results/gpu}
PYTHON=${PYTHON:-$(command -v python3 || command -v python)}
BUDGET_S=${BUDGET_S:-540}
KEEP_GOING=${KEEP_GOING:-0}
REPS=${REPS:-30}
reserve=${BENCH_RESERVE_S:-300} # lowered to 0 once the benchmark starts

if [[ ! -f setup.py || ! -d benchmarks ]]; then
    echo "gpu_check.sh: run from the repository root" >&2
    exit 1
fi
mkdir -p "$OUT"
cache="$PWD/benchmarks/.cache"
export TORCHINDUCTOR_CACHE_DIR="$cache/inductor" TRITON_CACHE_DIR="$cache/triton"
export PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1

start=$SECONDS

# Run "$@" under timeout, capped at $1 seconds and at what is left of BUDGET_S
# beyond the benchmark's reserve. timeout's --kill-after adds at most 10 s,
# which BUDGET_S leaves room for.
step() {
    local cap=$1 left
    shift
    left=$((BUDGET_S - reserve - (SECONDS - start)))
    if ((left < cap)); then cap=$left; fi
    if ((cap <= 5)); then
        echo "gpu_check.sh: out of time before: $*" >&2
        return 124
    fi
    echo "== [$((SECONDS - start))s, limit ${cap}s] $*"
    timeout --kill-after=10 "$cap" "$@"
}

# A failing test run stops the script unless KEEP_GOING=1 (then it exits 1 at the end).
failed=0
check_tests() {
    if [[ $1 != 0 ]]; then
        echo "gpu_check.sh: $2 failed (status $1)" >&2
        failed=1
        [[ $KEEP_GOING == 1 ]] || exit 1
    fi
}

{
    date -Is
    step 30 nvidia-smi
    step 30 nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,clocks.mem,power.limit \
        --format=csv
} >"$OUT/gpu.txt" 2>&1 || true

if ! "$PYTHON" - >>"$OUT/gpu.txt" 2>&1 <<'EOF'; then
import sys
try:
    import torch
except Exception as exc:  # noqa: BLE001
    sys.exit(f"torch does not import: {exc!r}")
print("torch", torch.__version__, "cuda", torch.version.cuda)
if torch.version.cuda is None:
    sys.exit("this torch build has no CUDA support")
if not torch.cuda.is_available():
    sys.exit("torch.cuda.is_available() is False (no visible GPU or driver mismatch)")
print("device", torch.cuda.get_device_name(), "capability", torch.cuda.get_device_capability())
EOF
    echo "gpu_check.sh: no usable CUDA torch for $PYTHON:" >&2
    tail -n 1 "$OUT/gpu.txt" >&2
    exit 1
fi
tail -n 2 "$OUT/gpu.txt"

# --no-deps: the machine may be offline and torch is already installed.
TORCH_CUDA_ARCH_LIST=9.0 FORCE_CUDA=1 MAX_JOBS=${MAX_JOBS:-$(nproc)} \
    step 300 "$PYTHON" -m pip install --no-build-isolation --no-deps -e . 2>&1 | tee "$OUT/build.log"
"$PYTHON" -c 'import sdu_ext, json; print(json.dumps(sdu_ext.build_info()))' | tee -a "$OUT/build.log"

# One run of the whole suite: the CUDA variants, plus the CPU tests against this
# machine's torch. pytest-xdist (when installed) spreads it over the cores; each
# worker keeps few CPU threads so the workers do not oversubscribe the machine.
: >"$OUT/tests.log"
workers=()
if "$PYTHON" -c 'import xdist' 2>/dev/null; then
    workers=(-n "${TEST_WORKERS:-8}")
fi
set +o pipefail # the test status comes from PIPESTATUS, not from tee
OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} step 300 "$PYTHON" -m pytest python_tests -q -rfE -p no:cacheprovider \
    "${workers[@]}" --durations=10 2>&1 | tee -a "$OUT/tests.log"
check_tests "${PIPESTATUS[0]}" "test suite"
set -o pipefail

# What is left goes to the benchmarks, most wanted first: the training step (paper size, every step
# kind and provider, sdu_compiled = CUDA graphs), the paper preset's seconds per epoch, the
# precision costs (TF32, bf16), then the op benchmark (measured on an H200 before).
reserve=0
step 240 "$PYTHON" benchmarks/train_step.py --device cuda --threads 1 --sizes paper --reps "${TRAIN_REPS:-10}" \
    --out "$OUT" 2>&1 | tee "$OUT/train_step.log"
step 150 "$PYTHON" benchmarks/paper_epoch.py --device cuda --epochs 3 --out "$OUT" 2>&1 | tee "$OUT/paper_epoch.log"
step 120 "$PYTHON" benchmarks/precision.py --device cuda --epochs 30 --seeds 3 --out "$OUT" 2>&1 |
    tee "$OUT/precision.log"
step 600 "$PYTHON" benchmarks/ops.py --device cuda --reps "$REPS" --out "$OUT" 2>&1 | tee "$OUT/bench.log"
echo "gpu_check.sh: done in $((SECONDS - start))s; results in $OUT"
exit "$failed"
