#!/usr/bin/env bash
# One prepared run on a lent GPU machine (see BENCHMARKS.md), about 7 minutes on an H100: build against that
# machine's torch; the engine tests and every CUDA test (the ClinicaDL fixture on CUDA included); the
# engine's compute floor in each configuration with a per-kernel profile; then the side-by-side benchmark.
# Prints the card's name with every figure; results go to $OUT. Missing pure-Python wheels travel in .whl/
# (nibabel, argparse-dataclass). Every step has its own time limit, so one slow step cannot eat the others.
#   BENCH_SESSIONS=192 BENCH_REPEATS=3 bash benchmarks/gpu_check.sh
set -uo pipefail
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
card=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | head -1)
echo "card: $card" | tee "$OUT/card.txt"
python3 -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$OUT/card.txt"
nproc | sed 's/^/cpu cores: /' | tee -a "$OUT/card.txt"
if ls .whl/*.whl >/dev/null 2>&1; then python3 -m pip install -q --no-index --no-deps .whl/*.whl; fi
start=$(date +%s)
timeout 240 python3 -m pip install -q --no-build-isolation --no-deps . > /tmp/build.log 2>&1 || { tail -30 /tmp/build.log; exit 1; }
echo "build: $(( $(date +%s) - start )) s"

export MAPS_INTERPRET_FIXTURES=${MAPS_INTERPRET_FIXTURES:-shared/fixtures/clinicadl-1.6.1}
export MAPS_INTERPRET_GPU_REPORT="$OUT/fixture_gpu.jsonl"
PYTEST=(python3 -m pytest -q -p no:cacheprovider -o minversion=1 -W default
        -o "addopts=-ra --strict-markers --import-mode=importlib" -n "${TEST_WORKERS:-8}")
start=$(date +%s)
{ timeout 150 "${PYTEST[@]}" tests/test_engine.py tests/test_fast.py
  timeout 150 "${PYTEST[@]}" -m cuda tests/test_clinicadl_fixture.py; } > "$OUT/tests.log" 2>&1
echo "tests ($card): $(grep -E '(passed|failed)' "$OUT/tests.log" | tr '\n' ';') in $(( $(date +%s) - start )) s"
grep -E "^(FAILED|ERROR)|Fatal Python error|Timeout" "$OUT/tests.log" | head -20

echo "== engine floor, batch ${BENCH_BATCH:-8}, random 169x208x179 inputs, $card"
timeout 150 python3 benchmarks/engine_floor.py --device cuda --batch-size "${BENCH_BATCH:-8}" --iters 6 --repeats 3 \
  --profile "$OUT/profile.txt" > "$OUT/floor.json" 2>&1
grep -vE "^\s*(\[|\]|[0-9]+,?)$" "$OUT/floor.json" | tr -d '\n' | sed 's/  */ /g'; echo

echo "== benchmark, $card"
timeout "${BENCH_TIMEOUT:-300}" python3 benchmarks/run.py --gpu --amp --sessions "${BENCH_SESSIONS:-192}" \
  --batch_size "${BENCH_BATCH:-8}" -np 8 --repeats "${BENCH_REPEATS:-3}" --skip a_individual \
  --out /tmp/bench > "$OUT/bench.log" 2>&1
cp /tmp/bench/results.md /tmp/bench/results.json "$OUT/" 2>/dev/null
tail -25 "$OUT/bench.log"
