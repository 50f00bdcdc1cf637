import os

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
