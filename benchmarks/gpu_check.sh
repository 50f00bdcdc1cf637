#!/usr/bin/env bash
# The GPU check, one script, run from the repository root on a machine with a CUDA GPU
# and no internet (python3 with a CUDA torch, nvcc, cmake >= 3.26, ninja,
# scikit-build-core, pytest, hypothesis, pytest-benchmark):
#   1. builds the extension with the CUDA kernels (SIMCORE_CUDA=ON),
#   2. runs the CUDA tests against the float64 reference and the CPU kernels,
#   3. benchmarks masked_topk on the GPU (benchmarks/test_gpu.py; 41 GB of GPU memory and
#      41 GB of pinned host memory at the default GPU_BENCH_N=10000000),
#   4. prints the markdown table last and writes it, the log and the JSON to ${OUT},
#   5. runs `simcore demo` (the whole pipeline on generated images) on the GPU, timed,
#   6. runs compute-sanitizer on a few small cases.
# Stages to run: GPU_CHECK_STAGES (default "build test bench pipeline sanitize").
set -uo pipefail
repo="$PWD"
out="${OUT:-$repo/gpu_check_out}"
mkdir -p "$out"
stages="${GPU_CHECK_STAGES:-build test bench pipeline sanitize}"
py="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1 SIMCORE_CUDA=ON TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-8.0;9.0a}"
stamp() { echo "== $(date -u +%T) $*"; }
status=0
{
  stamp "commit $(git rev-parse --short HEAD 2>/dev/null) $(git status --porcelain 2>/dev/null | wc -l) changed files"
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader || true
  "$py" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
  if [[ " $stages " == *" build "* ]]; then
    stamp "build (TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST)"
    "$py" -m pip install --no-build-isolation --no-deps -v . > "$out/build.log" 2>&1 \
      || { tail -50 "$out/build.log"; echo "BUILD FAILED"; exit 1; }
    grep -E "warning|error" "$out/build.log" | grep -v "^ *$" | head -20
    "$py" -P -c "import simcore_ext as s; assert s.with_cuda(), 'CUDA kernels not built'; print('with_cuda ok, cpu isa', s.cpu_isa())" || exit 1
  fi
  if [[ " $stages " == *" test "* ]]; then
    stamp "tests"
    tflags=(-q -p no:cacheprovider --maxfail=10 --tb=short)
    "$py" -c "import pytest_timeout" 2>/dev/null && tflags+=(--timeout=180)
    "$py" -P -m pytest tests/test_cuda.py tests/test_openset_topk.py "${tflags[@]}" \
      --junitxml="$out/junit_cuda.xml" || status=1
    if "$py" -c "import torch; exit(0 if torch.cuda.get_device_capability() == (9, 0) else 1)"; then
      stamp "tests with SIMCORE_CUDA_KERNEL=mma (the default here is wgmma)"
      SIMCORE_CUDA_KERNEL=mma "$py" -P -m pytest tests/test_cuda.py tests/test_openset_topk.py \
        "${tflags[@]}" --junitxml="$out/junit_mma.xml" || status=1
    fi
    "$py" -P -m pytest tests "${tflags[@]}" -k "cuda and not test_cuda" || status=1
  fi
  if [[ " $stages " == *" bench "* ]]; then
    stamp "benchmarks"
    "$py" -P -m pytest benchmarks/test_gpu.py --benchmark-only -q -p no:cacheprovider \
      --benchmark-json="$out/gpu.json" --benchmark-columns=median,min,max,rounds || status=1
    stamp "table"
    "$py" benchmarks/gpu_report.py "$out/gpu.json" --out "$out/gpu_table.md" || status=1
  fi
  if [[ " $stages " == *" pipeline "* ]]; then
    stamp "simcore demo on the GPU (pretrain, extract, select, retrain x2, eval, report)"
    rm -rf "$out/demo"
    t0=$SECONDS
    "$py" -P -m simcore demo --out "$out/demo" --quiet || status=1
    echo "demo wall $((SECONDS - t0)) s"
  fi
  if [[ " $stages " == *" sanitize "* ]] && command -v compute-sanitizer > /dev/null; then
    stamp "compute-sanitizer (memcheck, racecheck) on small cases"
    for tool in memcheck racecheck; do
      timeout "${SANITIZE_TIMEOUT:-120}" compute-sanitizer --tool "$tool" --error-exitcode 9 "$py" -P -m pytest \
        tests/test_cuda.py -q -p no:cacheprovider \
        -k "(exact_shapes and 129 and bfloat16) or (exact_shapes and 7-20000) or (adversarial and float32 and 40)" \
        2>&1 | tail -5 || status=1
    done
  fi
  stamp "done, status $status"
  exit "$status"
} 2>&1 | tee "$out/gpu_check.log"
exit "${PIPESTATUS[0]}"
