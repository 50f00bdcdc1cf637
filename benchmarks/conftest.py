"""Shared set-up for the benchmarks: sizes, data, isolated workers, peak-memory probes.

Sizes can be shrunk for a smoke run: BENCH_N=100000 pytest benchmarks --benchmark-only."""
import gc
import os
import platform
import subprocess
import sys
import threading
import time

import pytest
import torch

import simcore_ext

N = int(os.environ.get("BENCH_N", 1_000_000))
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["simcore"] = {
        "cpu_isa": simcore_ext.cpu_isa(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "cpu_model": _cpu_model(),
        "bench_n": N,
    }


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


class Cache:
    """Holds one dataset at a time (the large ones do not fit together in RAM)."""

    def __init__(self):
        self.key, self.value = None, None

    def get(self, key, make):
        if key != self.key:
            self.clear()
            self.value, self.key = make(), key
        return self.value

    def clear(self):
        self.key = self.value = None
        gc.collect()


@pytest.fixture(scope="session")
def cache():
    return Cache()


class Worker:
    """A competitor in its own process (benchmarks/worker.py)."""

    def __init__(self, *args):
        self.p = subprocess.Popen([sys.executable, "-m", "benchmarks.worker", *map(str, args)],
                                  cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = self.p.stdout.readline().strip()
        if line != "ready":
            self.close()
            raise RuntimeError(f"worker {args} failed to start")

    def run(self):
        self.p.stdin.write("run\n")
        self.p.stdin.flush()
        assert self.p.stdout.readline().strip() == "done"

    def close(self):
        if self.p.poll() is None:
            self.p.stdin.close()
            self.p.wait(timeout=60)


class PeakRSS:
    """Peak resident memory above the start, sampled every 2 ms from /proc/self/statm."""

    def __init__(self):
        self.page = os.sysconf("SC_PAGE_SIZE")

    def _rss(self):
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self.page

    def __enter__(self):
        self.start = self.peak = self._rss()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._poll, daemon=True)
        self._t.start()
        return self

    def _poll(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            time.sleep(0.002)

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self._rss())

    @property
    def above_start(self):
        return self.peak - self.start
