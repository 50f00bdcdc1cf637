#!/usr/bin/env bash
# GPU check, run once on a machine with a CUDA GPU and no internet, from the repository
# root: builds the extension with the CUDA kernels and runs the test suite, whose device
# x dtype grids then include "cuda" (every CUDA result is checked against the float64
# oracle / reference). Output (log + junit) goes to ${OUT:-./gpu_check_out}.
# Needs: python3 with torch (CUDA build), numpy, tqdm, scikit-build-core, cmake>=3.26,
# ninja, pytest, hypothesis; nvcc on PATH.
set -uo pipefail
out="${OUT:-$PWD/gpu_check_out}"
mkdir -p "$out"
log="$out/gpu_check.log"
{
  echo "== $(date -u) $(git rev-parse --short HEAD 2>/dev/null)"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
  export SIMCORE_CUDA=ON TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-8.0;9.0a}"
  t0=$(date +%s)
  python3 -m pip install --no-build-isolation --no-deps . || { echo "BUILD FAILED"; exit 1; }
  echo "build: $(( $(date +%s) - t0 )) s"
  python3 -c "import simcore_ext; assert simcore_ext.with_cuda(), 'CUDA kernels not built'; print('with_cuda ok')"
  cd /tmp && python3 -m pytest "$OLDPWD/tests" -q -x -k "cuda or device" --junitxml="$out/junit.xml" -p no:cacheprovider
} 2>&1 | tee "$log"
exit "${PIPESTATUS[0]}"
