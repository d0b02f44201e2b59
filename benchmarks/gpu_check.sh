#!/usr/bin/env bash
# One prepared run on a lent GPU machine (see BENCHMARKS.md, "GPU: the prepared check"). Prints the card, driver
# and torch with every figure; results go to $OUT. Missing wheels travel in .whl/ (nibabel, pandas for the
# device's Python: pip download --python-version 3.X --only-binary=:all: pandas,
# argparse-dataclass). Every step has its own time limit; the device caps one command at 10 minutes, so the
# steps go in two calls (expected on an H100/H200, 16 cores):
#   STEPS="build tests floor" bash benchmarks/gpu_check.sh              # ~5 min: build 1.5, tests 2, floor 1
#   STEPS="bench data nccl" BENCH_SESSIONS=512 bash benchmarks/gpu_check.sh   # ~5 min: data 2, bench 2, rest 1
# bench: issue 11's end-to-end target (>= 512 full-size sessions, batch 8, float32, ClinicaDL's loop alongside,
# GPU busy sampled); data: the data path alone, preprocessing on the device and in the loader; nccl: torchrun
# with NCCL (one rank) against one process on the same data. STEPS may also name `probe`: a native backtrace
# (cuda-gdb) of the core turning a C++ error into a value.
set -uo pipefail
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
card=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | head -1)
echo "card: $card" | tee "$OUT/card.txt"
python3 -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$OUT/card.txt"
nproc | sed 's/^/cpu cores: /' | tee -a "$OUT/card.txt"
if ls .whl/*.whl >/dev/null 2>&1; then python3 -m pip install -q --no-index --no-deps .whl/*.whl; fi
STEPS=" ${STEPS:-build tests floor} "
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
options = _core.EngineOptions()
options.device = "cuda"
core = _core.Engine(to_torchscript(conv5_fc3((1, 8, 8, 8), output_size=2, dropout=0.0).eval())._c, options)
try:  # a C++ error formatting a number, raised across pybind11 (csrc/bindings.cpp)
    core.accumulate(torch.randn(2, 1, 8, 8, 8), [0], False)
except _core.EngineError as error:
    print("raised:", repr(error), flush=True)
PY
  timeout 20 python3 /tmp/probe.py 2>&1 | tail -3
  if command -v cuda-gdb >/dev/null; then
    timeout 45 cuda-gdb -q -batch -ex run -ex bt -ex "info sharedlibrary" --args python3 /tmp/probe.py \
      > "$OUT/probe.log" 2>&1
    grep -E "^#|signal|raised" "$OUT/probe.log" | head -30
  fi
fi

export MAPS_INTERPRET_FIXTURES=${MAPS_INTERPRET_FIXTURES:-shared/fixtures/clinicadl-1.6.1}
export MAPS_INTERPRET_PARITY_REPORT="$OUT/fixture_parity.jsonl"  # rule and errors of every map (tests/parity.py)
PYTEST=(python3 -m pytest -q -p no:cacheprovider -o minversion=1 -W default
        -o "addopts=-ra --strict-markers --import-mode=importlib" -n "${TEST_WORKERS:-8}")
if step tests; then
  start=$(date +%s)
  { timeout 150 "${PYTEST[@]}" tests/test_core.py tests/test_engine.py tests/test_fast.py tests/test_interpreter.py
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
echo "== benchmark, float32, batch ${BENCH_BATCH:-8}, ${BENCH_SESSIONS:-512} sessions, $card"
timeout "${BENCH_TIMEOUT:-330}" python3 benchmarks/run.py --gpu --sessions "${BENCH_SESSIONS:-512}" \
  --batch_size "${BENCH_BATCH:-8}" -np 8 --repeats "${BENCH_REPEATS:-2}" --skip a_individual b_individual \
  --out /tmp/bench > "$OUT/bench.log" 2>&1
cp /tmp/bench/results.md /tmp/bench/results.json "$OUT/" 2>/dev/null
tail -25 "$OUT/bench.log"
fi

D=/tmp/bench/data
if step data; then
  [ -d $D ] || { echo "data: no $D (the bench step makes it)"; exit 0; }
  echo "== data path alone (no engine), batch ${BENCH_BATCH:-8}, $card"
  for variant in "--preprocess_on device --device cuda -np 4" "--preprocess_on device --device cuda -np 8" \
                 "--preprocess_on loader --device cuda -np 8" "--preprocess_on loader --device cuda -np 8 --reader processes"; do
    echo "data_path $variant: $(timeout 120 python3 benchmarks/data_path.py $D/maps $D/caps $D/sessions.tsv \
      --batch_size "${BENCH_BATCH:-8}" $variant --repeats 2 2>&1 | tail -1)"
  done
fi

if step nccl; then
  [ -d $D ] || { echo "nccl: no $D (the bench step makes it)"; exit 0; }
  echo "== torchrun, NCCL, 1 rank, against one process, $card"
  args=(--gpu --batch_size "${BENCH_BATCH:-8}" -np 8 -on)
  t0=$(date +%s%N)
  timeout 120 python3 -m maps_interpret $D/maps bench single "${args[@]}" > "$OUT/single.log" 2>&1
  t1=$(date +%s%N)
  timeout 120 python3 -m torch.distributed.run --standalone --nproc_per_node=1 -m maps_interpret $D/maps bench nccl \
    "${args[@]}" > "$OUT/nccl.log" 2>&1
  t2=$(date +%s%N)
  echo "one process $(( (t1 - t0) / 1000000 )) ms, torchrun with 1 rank $(( (t2 - t1) / 1000000 )) ms; $(grep -o 'rank 0 of 1 (nccl[^)]*)' "$OUT/nccl.log")"
  python3 - <<PY
import torch
base = "$D/maps/split-0/best-loss/bench"
a = torch.load(f"{base}/interpret-single/mean_image-0_map.pt"); b = torch.load(f"{base}/interpret-nccl/mean_image-0_map.pt")
print(f"mean map, torchrun vs one process: max |diff| / max |map| = {((a - b).abs().max() / a.abs().max()).item():.3g}")
PY
fi
