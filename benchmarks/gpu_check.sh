#!/usr/bin/env bash
# Every GPU check of minunet in one command, for the few minutes a GPU is lent (docs/cuda.md).
#
#   bash benchmarks/gpu_check.sh                     # from anywhere; files go to $OUT (else ./gpu_check_out)
#   GPU_CHECK_SECONDS=540 PYTHON=python3 bash benchmarks/gpu_check.sh
#
# Made for a machine with a GPU and no package registry: it uses that machine's python3 as it is
# (cupy, numba-cuda, torch, h5py, click, scipy, pytest) and installs nothing from outside. Stages,
# each under its own `timeout` and skipped when less time is left than it needs:
#   install    import minunet from this working tree: an editable install without build isolation
#              or index (pip install --no-deps --no-build-isolation --no-index -e .), else, when
#              the machine's setuptools cannot build it (it needs >= 77), symbolic links that lay the
#              tree out as installed (minunet/kernels -> ../kernels, cli, benchmarks; removed at exit)
#              and PYTHONPATH set to the tree
#   preflight  nvidia-smi, versions, one trivial Numba kernel on CuPy memory, one minunet kernel;
#              stops everything with the reason if it fails
#   tests      the CUDA kernel tests of `pytest --gradcheck` on the device (NaN-filled memory)
#   bench      ONE Python process (every kernel compiles once): training step and inference against
#              PyTorch CUDA (TF32 off, cuDNN benchmark on) with GPU peak memory, a 512 x 512
#              prediction, every kernel against cuDNN with each output's relative error, and the
#              resource report (registers, shared and local memory, host microseconds per launch)
#   sanitizer  compute-sanitizer racecheck and memcheck on a tiny run of every op
# At most 7 files go to $OUT; the summary table comes last. Without a GPU it says so in one line
# and exits with status 2 at once. Exit status 0 when every stage that ran passed, else 1.
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT" || exit 1
LIMIT=${GPU_CHECK_SECONDS:-540}
PY=${PYTHON:-python3}
OUT=${OUT:-$ROOT/gpu_check_out}
START=$(date +%s)

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
    echo "gpu_check: no GPU here (nvidia-smi is missing or sees no device); nothing was checked"
    exit 2
fi
mkdir -p "$OUT"
ROWS=()
FAILED=0
left() { echo $((LIMIT - ($(date +%s) - START))); }
row() { ROWS+=("$(printf '%-10s %-8s %5s s  %s' "$1" "$2" "$3" "$4")"); }

# run NAME NEED MAX CMD...: CMD under `timeout` (at most MAX s, and never past the limit) into $OUT/NAME.log,
# skipped when less than NEED s are left. Sets RC (the command's status, or "skip").
run() {
    local name=$1 need=$2 max=$3 t0 budget
    shift 3
    budget=$(( $(left) - 5 ))
    if [ "$budget" -lt "$need" ]; then
        row "$name" skipped 0 "$(left) s left, needs $need"
        RC=skip
        return
    fi
    [ "$budget" -gt "$max" ] && budget=$max
    t0=$(date +%s)
    timeout -k 5 "$budget" "$@" >>"$OUT/$name.log" 2>&1
    RC=$?
    ELAPSED=$(( $(date +%s) - t0 ))
    [ "$RC" = 124 ] && echo "gpu_check: $name stopped by its ${budget} s timeout" >>"$OUT/$name.log"
}

finish() {
    {
        echo "gpu_check summary ($(nvidia-smi --query-gpu=name --format=csv,noheader | head -1); limit ${LIMIT} s, used $(( $(date +%s) - START )) s)"
        printf '%s\n' "${ROWS[@]}"
        [ -f "$OUT/bench.log" ] && sed -n 's/^SUMMARY /  /p' "$OUT/bench.log"
    } | tee "$OUT/summary.txt"
    exit "$FAILED"
}

# --------------------------------------------------------------------------- install
imports_here() {
    "$PY" -c "import pathlib, sys, minunet, minunet.kernels.cuda, minunet.benchmarks.gpu_check
sys.exit(0 if pathlib.Path(minunet.__file__).resolve().is_relative_to(pathlib.Path('$ROOT')) else 1)" 2>>"$OUT/install.log"
}
LINKS=()
link_tree() {      # package-dir maps minunet.kernels to kernels/ (and cli/, benchmarks/): links in minunet/ do too
    for sub in kernels cli benchmarks; do
        if [ ! -e "$ROOT/minunet/$sub" ]; then
            ln -s "../$sub" "$ROOT/minunet/$sub" && LINKS+=("$ROOT/minunet/$sub")
        fi
    done
    trap 'rm -f "${LINKS[@]}"' EXIT          # the working tree is left as it was
    export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
    echo "linked minunet/{kernels,cli,benchmarks} to the top-level folders, PYTHONPATH=$ROOT" >>"$OUT/install.log"
}
t0=$(date +%s)
how="already importable"
if ! imports_here; then
    how="pip install -e (no index, no build isolation)"
    timeout 120 "$PY" -m pip install --no-deps --no-build-isolation --no-index -q -e "$ROOT" >>"$OUT/install.log" 2>&1
    if ! imports_here; then
        how="links minunet/kernels -> kernels/ ... (removed at exit), PYTHONPATH"
        link_tree
    fi
fi
if imports_here; then
    row install ok $(( $(date +%s) - t0 )) "$how"
else
    row install FAILED $(( $(date +%s) - t0 )) "minunet does not import from $ROOT (see install.log)"
    FAILED=1
    finish
fi

# --------------------------------------------------------------------------- preflight
run preflight 20 90 "$PY" - <<'EOF'
import platform, subprocess
import numpy as np
import cupy, numba, torch
from numba import cuda
print(subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
                      "--format=csv,noheader"], capture_output=True, text=True).stdout.strip())
dev = cuda.get_current_device()
print(f"python {platform.python_version()}, numpy {np.__version__}, numba {numba.__version__}, "
      f"cupy {cupy.__version__} (CUDA runtime {cupy.cuda.runtime.runtimeGetVersion()}, driver "
      f"{cupy.cuda.runtime.driverGetVersion()}), torch {torch.__version__} (CUDA {torch.version.cuda})")
print(f"device {dev.name} compute capability {dev.compute_capability}, {dev.MULTIPROCESSOR_COUNT} SMs")

@cuda.jit
def add_one(a):
    i = cuda.grid(1)
    if i < a.size:
        a[i] += 1

a = cupy.zeros(1000, cupy.float32)
add_one[4, 256](a)
assert float(a.sum()) == 1000.0, "a trivial Numba kernel on CuPy memory gave a wrong sum"
import minunet.kernels.cuda as kc
ok, why = kc.available()
assert ok and not kc.arrays.SIMULATOR, why
y = kc.to_numpy(kc.relu_forward(kc.asarray(np.array([-1.0, 2.0], np.float32))))
assert y.tolist() == [0.0, 2.0], y
print("preflight ok:", why)
EOF
if [ "$RC" != 0 ]; then
    row preflight FAILED "${ELAPSED:-0}" "$(tail -1 "$OUT/preflight.log" 2>/dev/null)"
    FAILED=1
    finish
fi
row preflight ok "$ELAPSED" "$(sed -n 1p "$OUT/preflight.log")"

# --------------------------------------------------------------------------- CUDA tests
run tests 60 200 "$PY" -m pytest tests/test_kernels.py tests/test_kernels_cuda_tiles.py --gradcheck -k cuda \
    -q -rfE -p no:cacheprovider
if [ "$RC" != skip ]; then
    verdict=$(grep -E "[0-9]+ (passed|failed)" "$OUT/tests.log" | tail -1)
    if [ "$RC" = 0 ]; then row tests ok "$ELAPSED" "$verdict"; else row tests FAILED "$ELAPSED" "${verdict:-status $RC}"; FAILED=1; fi
fi

# --------------------------------------------------------------------------- one process: step, kernels, resources
budget=$(( $(left) - 100 ))               # keep time for the sanitizer runs
[ "$budget" -gt 240 ] && budget=240
run bench 60 $((budget + 20)) "$PY" -m minunet.benchmarks.gpu_check --json "$OUT/bench.json" --seconds "$budget"
if [ "$RC" != skip ]; then
    if [ "$RC" = 0 ]; then row bench ok "$ELAPSED" "figures below; bench.json"
    else row bench FAILED "$ELAPSED" "$(grep -E 'failed|Error' "$OUT/bench.log" | tail -1)"; FAILED=1; fi
fi

# --------------------------------------------------------------------------- compute-sanitizer
if command -v compute-sanitizer >/dev/null 2>&1; then
    for tool in racecheck memcheck; do
        echo "== $tool" >>"$OUT/sanitizer.log"
        run sanitizer 45 120 compute-sanitizer --tool "$tool" --print-limit 20 "$PY" -m minunet.benchmarks.gpu_check --tiny
        [ "$RC" = skip ] && continue
        errors=$(grep -E "ERROR SUMMARY" "$OUT/sanitizer.log" | tail -1)
        if [ "$RC" = 0 ] && grep -q "ERROR SUMMARY: 0 errors" <<<"$errors"; then row "$tool" ok "$ELAPSED" "$errors"
        else row "$tool" FAILED "$ELAPSED" "${errors:-status $RC}"; FAILED=1; fi
    done
else
    row sanitizer skipped 0 "compute-sanitizer not found"
fi
finish
