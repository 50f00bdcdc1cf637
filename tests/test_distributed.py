"""select_coreset(distributed=True) with 2-3 CPU processes (gloo): every rank returns what
one process returns, rescans included; a bad row on one rank fails every rank."""
import datetime
import os
import socket
import traceback

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from simcore_ext import select_coreset
from simcore_ext.planner import Plan

CASES = {
    "budget": dict(k=7, budget=300, tau=None, metric="dot"),
    "criterion": dict(k=9, budget=None, tau=0.95, patience=4, metric="cosine"),
    "rescans": dict(k=5, budget=1500, tau=None, metric="cosine", chunk_size=333),
}
CASES_EXTRA = {"tiny": dict(k=2, budget=2, tau=None, metric="dot")}


def data(bad_row=None):
    g = torch.Generator().manual_seed(0)
    X = torch.randn(40, 24, generator=g)
    U = torch.randn(2001, 24, generator=g)
    U[1500:] = U[:501].clone()  # duplicates across the ranks' slices: ties to the smaller row
    if bad_row is not None:
        U[bad_row] = float("nan")
    return X, U


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker(rank, world, port, case, bad_row, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=60))
    torch.set_num_threads(1)
    try:
        X, U = data(bad_row)
        kw = dict({**CASES, **CASES_EXTRA}.get(case, {}))
        if case == "rescans":  # tiny first lists: every rank rescans, lists re-merge
            import simcore_ext.select as select_mod
            select_mod.plan_first_pass = lambda *a: Plan(K=3)
            select_mod._horizon = lambda *a: 1  # refills for one more item: many rescans
        if case == "topk":
            from simcore_ext import openset_topk
            v, i = openset_topk(X[:5], U, 50, excluded=torch.arange(len(U)) % 3 == 0, distributed=True)
            out.put((rank, "ok", i.numpy(), v.numpy(), None, (world, None)))
            return
        if case == "tiny":  # more ranks than rows: empty slices
            X, U = X[:2], U[:2]
        if case == "missing file":  # fails on one rank before any collective
            U = U.numpy() if rank == 0 else "/nonexistent/u.npy"
            kw = dict(k=3)
        r = select_coreset(X, U, distributed=True, **kw)
        # numpy, not tensors: a tensor crosses the queue as a shared fd that dies with this process
        out.put((rank, "ok", r.indices.numpy(), r.round_scores.numpy(), r.stop_reason,
                 (r.params["world_size"], r.stats["passes"])))
    except Exception as e:  # noqa: BLE001 - reported to the test
        out.put((rank, "error", f"{type(e).__name__}: {e}", traceback.format_exc(), None, (None, None)))
    finally:
        dist.destroy_process_group()


def run(world, case, bad_row=None):
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=worker, args=(r, world, port, case, bad_row, out), daemon=True)
             for r in range(world)]
    for p in procs:
        p.start()
    try:
        results = sorted(out.get(timeout=120) for _ in range(world))
        for p in procs:
            p.join(timeout=60)
    finally:  # a hung rank must not hang the test session
        for p in procs:
            if p.is_alive():
                p.kill()
    return results



@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("case", list(CASES))  # (plus the cases of their own tests below)
def test_distributed_equals_single_process(world, case, monkeypatch):
    kw = dict(CASES[case])
    if case == "rescans":
        import simcore_ext.select as select_mod
        monkeypatch.setattr(select_mod, "plan_first_pass", lambda *a: Plan(K=3))
        monkeypatch.setattr(select_mod, "_horizon", lambda *a: 1)
    X, U = data()
    want = select_coreset(X, U, **kw)
    for rank, status, idx, scores, reason, (ws, passes) in run(world, case):
        assert status == "ok", f"rank {rank}: {idx}\n{scores}"
        assert ws == world and passes == want.stats["passes"]
        assert torch.equal(torch.from_numpy(idx), want.indices), f"rank {rank}"
        assert torch.equal(torch.from_numpy(scores), want.round_scores) and reason == want.stop_reason
    if case == "rescans":
        assert want.stats["passes"] > 2


def test_openset_topk_distributed():
    from simcore_ext import openset_topk
    X, U = data()
    ex = torch.arange(len(U)) % 3 == 0
    v, i = openset_topk(X[:5], U, 50, excluded=ex)
    for rank, status, idx, vals, _, _ in run(2, "topk"):
        assert status == "ok", idx
        assert torch.equal(torch.from_numpy(idx), i) and torch.equal(torch.from_numpy(vals), v)


def test_more_ranks_than_rows():
    X, U = data()
    want = select_coreset(X[:2], U[:2], **CASES_EXTRA["tiny"])
    for rank, status, idx, scores, reason, _ in run(3, "tiny"):
        assert status == "ok", idx
        assert torch.equal(torch.from_numpy(idx), want.indices)


def test_setup_failure_on_one_rank_fails_every_rank():
    results = run(2, "missing file")
    assert results[1][1] == "error" and "no such file" in results[1][2]
    assert results[0][1] == "error" and "rank 1 failed" in results[0][2]


def test_bad_row_fails_every_rank():
    results = run(2, "budget", bad_row=1700)  # in rank 1's slice
    assert results[1][1] == "error" and "row 1700" in results[1][2]
    assert results[0][1] == "error" and "rank 1 failed" in results[0][2] and "row 1700" in results[0][2]


def test_distributed_needs_a_process_group():
    X, U = data()
    with pytest.raises(ValueError, match="init_process_group"):
        select_coreset(X, U, k=3, distributed=True)
    with pytest.raises(TypeError, match="distributed must be a bool"):
        select_coreset(X, U, k=3, distributed=1)
