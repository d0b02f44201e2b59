#!/usr/bin/env bash
# One prepared run on a lent GPU machine (see BENCHMARKS.md), about 8 minutes on an H100: build against that
# machine's torch; the engine tests and every CUDA test (the ClinicaDL fixture on CUDA included); the
# engine's compute floor in each configuration with a per-kernel profile; then the side-by-side benchmark.
# Prints the card's name with every figure; results go to $OUT. Missing pure-Python wheels travel in .whl/
# (nibabel, argparse-dataclass). Every step has its own time limit; together they exceed the device's 10-minute
# cap on one command, so name in STEPS what fits (build + tests + floor + bench with 128 sessions: ~8 min).
#   STEPS="build tests floor bench data" BENCH_SESSIONS=128 BENCH_REPEATS=3 bash benchmarks/gpu_check.sh
# STEPS may also name `probe`: a native backtrace (cuda-gdb) of the core turning a C++ error into a value;
# `data` times the data path alone (loader workers + pinned batches) on the benchmark's data, -np 8 and 16.
set -uo pipefail
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
card=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | head -1)
echo "card: $card" | tee "$OUT/card.txt"
python3 -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$OUT/card.txt"
nproc | sed 's/^/cpu cores: /' | tee -a "$OUT/card.txt"
if ls .whl/*.whl >/dev/null 2>&1; then python3 -m pip install -q --no-index --no-deps .whl/*.whl; fi
STEPS=" ${STEPS:-build tests floor bench data} "
step() { [[ "$STEPS" == *" $1 "* ]]; }
start=$(date +%s)
if step build; then
  timeout 240 python3 -m pip install -q --no-build-isolation --no-deps . > /tmp/build.log 2>&1 || { tail -30 /tmp/build.log; exit 1; }
  echo "build: $(( $(date +%s) - start )) s"
fi

if step probe; then
  cat > /tmp/probe.py <<'PY'
import torch
from maps_interpret import _core
from maps_interpret.models.conv import conv5_fc3
from maps_interpret.models.export import to_torchscript
core = _core.Engine.create(to_torchscript(conv5_fc3((1, 8, 8, 8), output_size=2, dropout=0.0).eval())._c,
                           _core.EngineOptions())
print("returned:", repr(core.accumulate(torch.randn(2, 1, 8, 8, 8), [0], False)), flush=True)
PY
  timeout 20 python3 /tmp/probe.py 2>&1 | tail -3
  if command -v cuda-gdb >/dev/null; then
    timeout 45 cuda-gdb -q -batch -ex run -ex bt -ex "info sharedlibrary" --args python3 /tmp/probe.py \
      > "$OUT/probe.log" 2>&1
    grep -E "^#|signal|returned" "$OUT/probe.log" | head -30
  fi
fi

export MAPS_INTERPRET_FIXTURES=${MAPS_INTERPRET_FIXTURES:-shared/fixtures/clinicadl-1.6.1}
export MAPS_INTERPRET_PARITY_REPORT="$OUT/fixture_parity.jsonl"  # rule and errors of every map (tests/parity.py)
PYTEST=(python3 -m pytest -q -p no:cacheprovider -o minversion=1 -W default
        -o "addopts=-ra --strict-markers --import-mode=importlib" -n "${TEST_WORKERS:-8}")
if step tests; then
  start=$(date +%s)
  { timeout 150 "${PYTEST[@]}" tests/test_engine.py tests/test_fast.py
    timeout 150 "${PYTEST[@]}" -m cuda tests/test_clinicadl_fixture.py; } > "$OUT/tests.log" 2>&1
  echo "tests ($card): $(grep -E '(passed|failed)' "$OUT/tests.log" | tr '\n' ';') in $(( $(date +%s) - start )) s"
  grep -E "^(FAILED|ERROR)|Fatal Python error|Timeout" "$OUT/tests.log" | head -20
fi

if step floor; then
echo "== engine floor, batch ${BENCH_BATCH:-8}, random 169x208x179 inputs, $card"
timeout 150 python3 benchmarks/engine_floor.py --device cuda --batch-size "${BENCH_BATCH:-8}" --iters 6 --repeats 3 \
  --profile "$OUT/profile.txt" > "$OUT/floor.json" 2>&1
grep -vE "^\s*(\[|\]|[0-9]+,?)$" "$OUT/floor.json" | tr -d '\n' | sed 's/  */ /g'; echo
fi

if step bench; then
echo "== benchmark, $card"
timeout "${BENCH_TIMEOUT:-300}" python3 benchmarks/run.py --gpu --amp --sessions "${BENCH_SESSIONS:-128}" \
  --batch_size "${BENCH_BATCH:-8}" -np 8 --repeats "${BENCH_REPEATS:-3}" --skip ${BENCH_SKIP-a_individual} \
  --out /tmp/bench > "$OUT/bench.log" 2>&1
cp /tmp/bench/results.md /tmp/bench/results.json "$OUT/" 2>/dev/null
tail -25 "$OUT/bench.log"
fi

step data || exit 0
[ -d /tmp/bench/data ] || { echo "data: no /tmp/bench/data (the bench step makes it)"; exit 0; }
echo "== data path alone (no engine), batch ${BENCH_BATCH:-8}, pinned, $card"
for np in 8 16; do
  timeout 120 python3 benchmarks/data_path.py /tmp/bench/data/maps /tmp/bench/data/caps /tmp/bench/data/sessions.tsv \
    --batch_size "${BENCH_BATCH:-8}" -np $np --pin --repeats 2 2>&1 | tail -1
done
