#!/usr/bin/env bash
# The CPU figures of BENCHMARKS.md's "data path (issue 11)" section: the current build against an earlier
# commit, side by side in one session (data path alone, the probe, then run.py against ClinicaDL's loop).
#   bash benchmarks/before_after.sh [BASELINE_COMMIT]     (default 9e70de7; ~25 min on 2 cores, 8 GB of data)
# The baseline is checked out in /tmp/before and installed with `pip install --target /tmp/before-install`.
set -euo pipefail
cd "$(dirname "$0")/.."
BASE=${1:-9e70de7}
PY=$PWD/.venv/bin/python
OUT=bench-out
if [ ! -d /tmp/before-install ]; then
  git worktree add -f /tmp/before "$BASE" >/dev/null
  (cd /tmp/before && "$PY" -m pip install -q --no-build-isolation --no-deps --target /tmp/before-install .)
fi
"$PY" - <<'PYEOF'
import shutil, sys, torch
from pathlib import Path
sys.path.insert(0, "benchmarks")
import run
run.make_data(Path("bench-out/dp-fortran"), 32)  # the strides `clinicadl prepare-data` writes
src, dst = Path("bench-out/dp-fortran"), Path("bench-out/dp-contig")
if not (dst / "done").exists():
    shutil.rmtree(dst, ignore_errors=True); shutil.copytree(src, dst)
    for p in (dst / "caps").rglob("*.pt"):
        torch.save(torch.load(p).contiguous(), p)
    (dst / "done").write_text("1")
PYEOF
for data in dp-fortran dp-contig; do
  D=$PWD/$OUT/$data
  for round in 1 2 3; do
    echo "== $data round $round"
    (cd /tmp/before && PYTHONPATH=/tmp/before-install "$PY" benchmarks/data_path.py "$D/maps" "$D/caps" \
      "$D/sessions.tsv" --batch_size 8 -np 2 --repeats 1 | sed 's/^/before /')
    for reader in threads processes; do
      "$PY" benchmarks/data_path.py "$D/maps" "$D/caps" "$D/sessions.tsv" --batch_size 8 -np 2 --repeats 1 \
        --reader $reader | sed "s/^/$reader /"
    done
  done
done
echo "== probe"
"$PY" benchmarks/probe.py --baseline /tmp/before-install --variants threads:loader processes:loader --repeats 3 --out $OUT
echo "== run.py"
"$PY" benchmarks/run.py --out $OUT/run
