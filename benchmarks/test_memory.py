"""Peak memory of select_coreset (k = 100, B = 1%, no stop rule) on a float16 .npy of N x 256 (5M rows by
default: a 2.56 GB file), measured in a fresh process: resident memory above the level
just before the call, and the chunk size it streamed with."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))

N_MEMMAP = int(os.environ.get("BENCH_MEMMAP_N", 5_000_000))
D = 256

PROBE = r"""
import json, sys, time, numpy as np, torch
sys.path.insert(0, sys.argv[3])
from conftest import PeakRSS
from simcore_ext import select_coreset
path, mode = sys.argv[1], sys.argv[2]
g = torch.Generator().manual_seed(0)
X = torch.randn(2000, 256, generator=g)
openset = path if mode == "path" else np.load(path, mmap_mode="r")
select_coreset(X[:50], torch.randn(1000, 256), k=10, budget=10)  # warm-up: libraries, pools
with PeakRSS() as mem:
    t = time.perf_counter()
    r = select_coreset(X, openset, k=100, budget=0.01, tau=None)
    seconds = time.perf_counter() - t
print(json.dumps(dict(peak_above_start=mem.above_start, seconds=seconds, items=len(r),
                      chunk_rows=r.params["chunk_size"], passes=r.stats["passes"])))
"""


@pytest.fixture(scope="module")
def memmap_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("memmap") / f"openset_{N_MEMMAP}x{D}_f16.npy"
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(N_MEMMAP, D))
    rng = np.random.default_rng(0)
    for a in range(0, N_MEMMAP, 1 << 18):
        out[a : a + (1 << 18)] = rng.standard_normal((min(1 << 18, N_MEMMAP - a), D), dtype=np.float32)
    out.flush()
    del out
    yield str(path)
    os.unlink(path)


@pytest.mark.parametrize("mode", ["path", "memmap"])
def test_peak_memory(benchmark, memmap_file, mode):
    def probe():
        # Not from the source tree: its simcore_ext would shadow the installed one.
        out = subprocess.run([sys.executable, "-c", PROBE, memmap_file, mode, BENCH_DIR],
                             cwd=os.path.dirname(memmap_file), capture_output=True, text=True)
        if out.returncode != 0:
            raise RuntimeError(f"memory probe failed:\n{out.stderr}")
        return json.loads(out.stdout.strip().splitlines()[-1])

    r = benchmark.pedantic(probe, rounds=1)
    chunk_bytes = r["chunk_rows"] * D * 2
    benchmark.group = "memory"
    benchmark.extra_info.update(kind="memory", n=N_MEMMAP, d=D, mode=mode, chunk_bytes=chunk_bytes, **r)
    assert r["items"] == N_MEMMAP // 100
