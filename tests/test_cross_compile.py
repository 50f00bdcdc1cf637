"""The ATen-free CPU kernels compile for other targets: aarch64 (the portable path only)
and x86-64 with Clang (every path), through the C/C++ compiler that the `ziglang`
package ships. Compile only: nothing here can run an aarch64 binary."""
import importlib.util
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CPU = os.path.join(ROOT, "csrc", "cpu")
SOURCES = [os.path.join(CPU, "scan_kernel.cpp"), os.path.join(CPU, "scan_avx2.cpp"),
           os.path.join(ROOT, "tests", "cpp", "topk_lists_test.cpp")]

pytestmark = pytest.mark.skipif(importlib.util.find_spec("ziglang") is None,
                                reason="needs the ziglang package (pip install ziglang)")


@pytest.fixture(scope="module")
def zig_cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("zig-cache"))


@pytest.mark.parametrize("target", ["aarch64-linux-gnu", "x86_64-linux-gnu"])
@pytest.mark.parametrize("source", SOURCES, ids=os.path.basename)
def test_kernels_compile(tmp_path, zig_cache, target, source):
    out = subprocess.run(
        [sys.executable, "-m", "ziglang", "c++", "-target", target, "-std=c++20", "-O2", "-Wall",
         "-Wextra", "-Werror", "-I", CPU, "-c", source, "-o", str(tmp_path / "out.o")],
        capture_output=True, text=True,
        env={**os.environ, "ZIG_GLOBAL_CACHE_DIR": zig_cache, "ZIG_LOCAL_CACHE_DIR": zig_cache})
    assert out.returncode == 0, out.stderr[-4000:]
    assert (tmp_path / "out.o").stat().st_size > 0
