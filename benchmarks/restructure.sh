#!/usr/bin/env bash
# BENCHMARKS.md's "restructure (issue 21)" figures: the whole command of the current build against an earlier
# commit (default 1690c4f, before the method table, the settings records and the C++ method registry), side by
# side in one session, rounds alternating, on the same synthetic MAPS (40 sessions of 96x112x96, random weights).
#   bash benchmarks/restructure.sh [BASELINE_COMMIT] [ROUNDS]      (~10 min on 2 cores)
# The baseline is checked out in /tmp/before-$BASE and installed with `pip install --target`.
set -euo pipefail
cd "$(dirname "$0")/.."
BASE=${1:-1690c4f}
ROUNDS=${2:-3}
PY=$PWD/.venv/bin/python
INSTALL=/tmp/before-$BASE-install
if [ ! -d "$INSTALL" ]; then
  git worktree add -f "/tmp/before-$BASE" "$BASE" >/dev/null
  (cd "/tmp/before-$BASE" && "$PY" -m pip install -q --no-build-isolation --no-deps --target "$INSTALL" .)
fi
DATA=$PWD/bench-out/restructure
if [ ! -f "$DATA/done" ]; then
  rm -rf "$DATA"
  "$PY" -c "from pathlib import Path; from maps_interpret.synthetic import build_demo; \
build_demo(Path('$DATA'), shape=(96, 112, 96), n_train=4, n_test=40, trained=False, nifti=False)"
  touch "$DATA/done"
fi
cd "$DATA"
for round in $(seq "$ROUNDS"); do
  for build in before after; do
    path=""; [ "$build" = before ] && path=$INSTALL
    for method in gradients "smoothgrad --n_samples 4"; do
      rm -rf maps/split-*/best-loss/test maps/groups/test maps/.maps-interpret-staging
      start=$(date +%s.%N)
      PYTHONPATH=$path "$PY" -m maps_interpret maps test bench $method --participants_tsv data/test.tsv \
        --caps_directory data/caps --no-gpu --batch_size 4 > /dev/null 2>&1
      echo "$build ${method%% *} $(echo "$(date +%s.%N) - $start" | bc)"
    done
  done
done | tee times.txt
"$PY" - <<'PYEOF'
import statistics
rows = [line.split() for line in open("times.txt")]
for method in dict.fromkeys(r[1] for r in rows):
    median = {b: statistics.median(float(r[2]) for r in rows if r[0] == b and r[1] == method) for b in ("before", "after")}
    print(f"{method}: before {median['before']:.2f} s, after {median['after']:.2f} s, after/before {median['after'] / median['before']:.3f}")
PYEOF
