"""`pytest --benchmark` (from the repository root) collects the benchmark suite, not the
tests; `pytest` alone collects the tests."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _collect(*args):
    # the pytest script, not `python -m pytest`: that would put the source folder simcore_ext/
    # ahead of the installed package
    script = os.path.join(os.path.dirname(sys.executable), "pytest")
    return subprocess.run([script, "--collect-only", "-q", "-p", "no:cacheprovider", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, env=dict(os.environ, BENCH_N="1000"))


def test_benchmark_option_collects_the_benchmarks():
    pytest.importorskip("pytest_benchmark")
    r = _collect("--benchmark")
    assert r.returncode == 0, r.stdout + r.stderr
    items = [line for line in r.stdout.splitlines() if "::" in line]
    assert items and all(line.startswith("benchmarks/") for line in items)
    assert any("test_select" in line for line in items) and not any("test_gpu" in line for line in items) \
        or __import__("torch").cuda.is_available()


def test_benchmark_option_refuses_paths():
    r = _collect("--benchmark", "tests/test_samplers.py")
    assert r.returncode != 0 and "give it no paths" in r.stderr
