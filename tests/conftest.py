"""Shared fixtures; and `pytest --benchmark`: the throughput comparisons (benchmarks/, with
pytest-benchmark) in place of the tests, then their comparison tables (benchmarks/report.py).
`pytest` alone runs the tests; BENCH_N=100000 shrinks the benchmarks for a smoke run."""
import os
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, settings

import simcore_ext

settings.register_profile(
    "default", max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "thorough", max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

ISAS = ["generic", "avx2", "avx512", "avx512bf16"]
AVAILABLE_ISAS = ISAS[: ISAS.index(simcore_ext.cpu_isa()) + 1]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not (torch.cuda.is_available() and simcore_ext.with_cuda()), reason="needs a CUDA GPU and a CUDA build"))]


ROOT = Path(__file__).resolve().parent.parent


def pytest_addoption(parser):
    parser.addoption("--benchmark", action="store_true",
                     help="run the throughput comparisons (benchmarks/) instead of the tests and print their "
                     "tables; BENCH_N=100000 for smoke sizes")


@pytest.hookimpl(tryfirst=True)  # before pytest-benchmark reads its options
def pytest_configure(config):
    if not config.getoption("benchmark"):
        return
    if config.args_source != pytest.Config.ArgsSource.TESTPATHS:
        raise pytest.UsageError("--benchmark runs the benchmarks/ suite: give it no paths "
                                "(or run `pytest benchmarks --benchmark-only`)")
    config.args[:] = [str(ROOT / "benchmarks")]
    config.option.benchmark_only = True
    if not torch.cuda.is_available():
        config.option.ignore = (config.option.ignore or []) + [str(ROOT / "benchmarks" / "test_gpu.py")]
    if config.option.benchmark_json is None:
        config.option.benchmark_json = ROOT / "benchmarks" / "results" / "pytest-benchmark.json"
        config.option.benchmark_json.parent.mkdir(parents=True, exist_ok=True)


def pytest_unconfigure(config):
    path = config.getoption("benchmark_json", None) if config.getoption("benchmark", False) else None
    if path is None or not Path(path).is_file():
        return
    import importlib.util
    import json
    spec = importlib.util.spec_from_file_location("simcore_bench_report", ROOT / "benchmarks" / "report.py")
    report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report)
    with open(path) as f:
        data = json.load(f)
    if data.get("benchmarks"):
        print("\n" + report.render(data).replace(report.BEGIN, "").replace(report.END, "").strip())
        print(f"\n(raw timings: {path}; `python benchmarks/report.py {path}` writes these tables into RESULTS.md)")


def pytest_report_header(config):
    return (f"simcore_ext: cpu isa {simcore_ext.cpu_isa()}, cuda built {simcore_ext.with_cuda()}, "
            f"cuda available {torch.cuda.is_available()}, threads {torch.get_num_threads()}")


@pytest.fixture(params=AVAILABLE_ISAS)
def isa(request, monkeypatch):
    """Runs a test once per CPU instruction set this machine supports."""
    monkeypatch.setenv("SIMCORE_CPU_ISA", request.param)
    return request.param


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param
