#!/usr/bin/env bash
# Issue 11's table (benchmarks/openssl_table.py) where a 2-core CPU cannot go: on a GPU
# machine, from the repository alone. The data does not travel with the checkout; copy it
# into the (gitignored) gpu_data/ folder and carry that folder (51 MB):
#     mkdir -p gpu_data && cp -r ../shared/data/tinyopenssl gpu_data/
#     device run, carry ["gpu_data"], command: OUT=$OUT bash benchmarks/openssl_gpu.sh
# Stages (OPENSSL_GPU_STAGES, default "build regime"):
#   build   the package without CUDA kernels (selection is seconds on the CPU; SSL trains on the GPU)
#   regime  one seed, rows X and X+OS_oracle (5%) at each of REGIME_STEPS, timed: the regime
#           where the oracle clearly beats X (the demo found it at ~150 X-epochs, RESULTS.md)
#   table   TABLE_SEEDS seeds, X and the SimCore / random / oracle rows at 1%, 5% and stop,
#           at TABLE_STEPS (set it from the regime stage's "Held out of dogs/train" lines, not
#           from dogs/test); TABLE_ARGS adds options, e.g.
#           "--retrieval-encoder efficientnet-lite2 --retrieval-size 224 --whiten 1024"
# Every (row, seed) is resumable in $WORK; results and logs land in $OUT.
set -uo pipefail
repo="$PWD"
out="${OUT:-$repo/openssl_gpu_out}"
data="${DATA:-$repo/gpu_data/tinyopenssl}"
work="${WORK:-$out/work}"
arch="${ARCH:-resnet18}"
stages="${OPENSSL_GPU_STAGES:-build regime}"
py="${PYTHON:-python3}"
mkdir -p "$out" "$work"
export PYTHONUNBUFFERED=1 SIMCORE_CUDA=OFF
stamp() { echo "== $(date -u +%T) $*"; }
status=0
{
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
  [[ -d "$data/dogs/train" ]] || { echo "no data at $data (see the header of this script)"; exit 2; }
  if [[ " $stages " == *" build "* ]]; then
    stamp "build (CPU kernels only)"
    "$py" -m pip install --no-build-isolation --no-deps . > "$out/build.log" 2>&1 \
      || { tail -30 "$out/build.log"; echo "BUILD FAILED"; exit 1; }
  fi
  common=(--data-dir "$data" --arch "$arch" --work-dir "$work" --analysis-seeds --analysis-k)
  if [[ " $stages " == *" regime "* ]]; then
    for steps in ${REGIME_STEPS:-2000 5000}; do
      stamp "regime: $arch, $steps steps, seed 0"
      t0=$SECONDS
      "$py" -P benchmarks/openssl_table.py "${common[@]}" --steps "$steps" --seeds 0 \
        --rows "X" "X+OS_oracle (5%)" --out "$out/regime_$steps" || status=1
      echo "regime $steps steps: $((SECONDS - t0)) s"
    done
  fi
  if [[ " $stages " == *" table "* ]]; then
    stamp "table: $arch, ${TABLE_STEPS:?set TABLE_STEPS from the regime stage} steps"
    "$py" -P benchmarks/openssl_table.py "${common[@]}" --steps "$TABLE_STEPS" --seeds ${TABLE_SEEDS:-0 1 2} \
      --rows "X" "X+OS_SimCore (1%)" "X+OS_rand (1%)" "X+OS_oracle (1%)" "X+OS_SimCore (5%)" \
      "X+OS_rand (5%)" "X+OS_oracle (5%)" "X+OS_SimCore (stop)" "X+OS_rand (stop size)" \
      "X+OS_oracle (stop size)" ${TABLE_ARGS:-} --out "$out/table_$TABLE_STEPS" || status=1
  fi
  stamp "done, status $status"
  exit "$status"
} 2>&1 | tee "$out/openssl_gpu.log"
exit "${PIPESTATUS[0]}"
