"""The candidate reservoir (csrc/cpu/topk_lists.h, ATen-free) checked in isolation by a
small C++ program: every thread schedule, including ones the OpenMP build never takes."""
import os
import shutil
import subprocess

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join(os.path.dirname(HERE), "csrc", "cpu")


@pytest.mark.skipif(shutil.which("c++") is None, reason="needs a C++ compiler")
def test_reservoir_matches_full_sort(tmp_path):
    exe = tmp_path / "topk_lists_test"
    subprocess.run(["c++", "-std=c++17", "-O2", "-I", CSRC, os.path.join(HERE, "cpp", "topk_lists_test.cpp"),
                    "-o", str(exe)], check=True)
    out = subprocess.run([str(exe)], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stdout
