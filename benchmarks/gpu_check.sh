#!/usr/bin/env bash
# One prepared run on a lent GPU machine (see BENCHMARKS.md): build against that machine's torch, run the
# whole test suite (CUDA tests and the ClinicaDL fixture on CUDA included), then the compute-floor benchmark.
# Prints the card's name with every figure. Missing pure-Python wheels travel in .whl/ (see README).
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
python3 -m pytest -q -p no:cacheprovider -o minversion=1 -o addopts="-ra --strict-markers --import-mode=importlib" -W default tests 2>&1 \
  | tee "$OUT/tests.log" | tail -8
grep -E "^(FAILED|ERROR)|max error|Fatal Python error" "$OUT/tests.log" | head -20
for bs in ${BENCH_BATCHES:-8}; do
  echo "== engine floor, batch $bs, $card"
  python3 benchmarks/engine_floor.py --device cuda --batch-size "$bs" --iters ${BENCH_ITERS:-6} --repeats 3 \
    | tee "$OUT/floor-bs$bs.json"
done
