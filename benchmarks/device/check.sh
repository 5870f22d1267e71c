#!/usr/bin/env bash
# Run THERE, on a lent GPU, as the device tool's one call (prepared by benchmarks/device/prepare.sh):
#   run(command="bash benchmarks/device/check.sh", carry=[".whl", ".devdata"], timeout_s=480)
# 1. installs the carried wheels, 2. runs the tests that use the GPU (tests/test_cuda.py: each stage
# on CUDA against the CPU, exact resume, trainers; the UNIT, blending and benchmark-suite tests on
# CUDA), 3. runs benchmarks/train_step.py on CUDA: the settings of the recorded CPU row, then a
# GPU-sized one. Every step has its own time limit so one hang cannot eat the call; each log lands in
# $OUT (the device tool brings it back). The steps' limits add up to 420 s, so with the machine's
# start one rerun still fits a 15-minute device budget (a dry run on 2 CPU cores, QUICK=1, DEVICE=cpu,
# took 2.5 min). Options (environment): PY (default python3), DEVICE (cuda), WHL (.whl), DATA
# (.devdata/btxrd; phantom shards when absent), QUICK=1 (train_step --quick).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-device_out}
PY=${PY:-python3}
DEVICE=${DEVICE:-cuda}
WHL=${WHL:-.whl}
DATA=${DATA:-.devdata/btxrd}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
step() {  # step NAME SECONDS CMD...: run CMD with a time limit, log to $OUT/NAME.log, note its status
    local name=$1 limit=$2; shift 2
    echo "== $name ($(date -u +%T), limit ${limit}s): $*"
    timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
    local rc=${PIPESTATUS[0]}
    echo "== $name: exit $rc" | tee -a "$OUT/summary.txt"
}

if ls "$WHL"/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        "$WHL"/*.whl || exit 1
    export PYTHONPATH=/tmp/site:$PWD
else
    export PYTHONPATH=$PWD
fi
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
  "$PY" -c "import torch, numba, numpy; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
  torch.cuda.get_device_name() if torch.cuda.is_available() else '', '| numba', numba.__version__,
  '| numpy', numpy.__version__)"
  nproc; df -h /dev/shm 2>/dev/null | tail -1; git rev-parse HEAD 2>/dev/null; git status --short 2>/dev/null | head
} | tee "$OUT/env.txt"

step tests 180 "$PY" -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_unit.py tests/test_blend.py \
    tests/test_bench.py

shards=()
[ -d "$DATA" ] && shards=(--shards "$DATA" --split train)
quick=()
[ "${QUICK:-0}" = 1 ] && quick=(--quick)
# the recorded CPU row's settings (drn_tiny, 128 px, batch 32; 2 workers per LesionStream loader, 4 plain)
step train_step 120 "$PY" benchmarks/train_step.py --device "$DEVICE" "${shards[@]}" "${quick[@]}"
# a GPU-sized run: 256 px, batch 64; 6 workers per LesionStream loader, 12 plain (the machine has 16 cores)
step train_step_256 120 "$PY" benchmarks/train_step.py --device "$DEVICE" "${shards[@]}" "${quick[@]}" \
    --size 256 --batch 64 --workers 6
cat "$OUT/summary.txt"
grep -h "lesion / plain" "$OUT"/train_step*.log  # last: each run's ratio, the last number of its line
