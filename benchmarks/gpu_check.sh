#!/usr/bin/env bash
# One prepared run on a lent GPU machine (see BENCHMARKS.md): build against that machine's torch, run the
# whole test suite (CUDA tests and the ClinicaDL fixture on CUDA included), explore the engine's compute
# floor, then the side-by-side benchmark. Prints the card's name with every figure; results go to $OUT.
# Missing pure-Python wheels travel in .whl/ (nibabel, argparse-dataclass).
set -uo pipefail
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
card=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | head -1)
echo "card: $card" | tee "$OUT/card.txt"
python3 -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$OUT/card.txt"
if ls .whl/*.whl >/dev/null 2>&1; then python3 -m pip install -q --no-index --no-deps .whl/*.whl; fi
start=$(date +%s)
python3 -m pip install -q --no-build-isolation --no-deps . > "$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; exit 1; }
echo "build: $(( $(date +%s) - start )) s"

export MAPS_INTERPRET_FIXTURES=${MAPS_INTERPRET_FIXTURES:-shared/fixtures/clinicadl-1.6.1}
export MAPS_INTERPRET_GPU_REPORT="$OUT/fixture_gpu.jsonl"
start=$(date +%s)
python3 -m pytest -q -p no:cacheprovider -o minversion=1 -o addopts="-ra --strict-markers --import-mode=importlib" \
  -W default -n ${TEST_WORKERS:-8} tests > "$OUT/tests.log" 2>&1
echo "tests ($card): $(tail -1 "$OUT/tests.log") in $(( $(date +%s) - start )) s"
grep -E "^(FAILED|ERROR)|Fatal Python error" "$OUT/tests.log" | head -20

echo "== engine floor, batch 8, random inputs, $card"
python3 benchmarks/engine_floor.py --device cuda --batch-size 8 --iters 6 --repeats 3 > "$OUT/floor.json" 2>&1
cat "$OUT/floor.json"

echo "== benchmark, $card"
python3 benchmarks/run.py --gpu --amp --sessions ${BENCH_SESSIONS:-24} --batch_size 8 -np 8 --repeats 3 \
  --out /tmp/bench > "$OUT/bench.log" 2>&1
cp /tmp/bench/results.md /tmp/bench/results.json "$OUT/" 2>/dev/null
tail -25 "$OUT/bench.log"
