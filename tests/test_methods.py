"""SimCLR, BYOL, SimSiam and MoCo v2: losses against hand-computed cases, the EMA updates,
MoCo's queue, and a few optimizer steps lowering the loss on a fixed batch."""
import math

import pytest
import torch

from simcore.methods import BYOL, METHODS, MoCo, SimCLR, SimSiam, build_method
from simcore.methods.byol import byol_loss
from simcore.methods.moco import info_nce
from simcore.methods.simclr import nt_xent
from simcore.methods.simsiam import simsiam_loss
from simcore.models import build_backbone


def test_nt_xent_by_hand():
    z1 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    z2 = torch.tensor([[1.0, 1.0], [0.0, -2.0]])
    t = 0.5
    views = [z / z.norm() for z in torch.cat([z1, z2])]  # anchors 0,1 (view 1), 2,3 (view 2)
    pos = {0: 2, 1: 3, 2: 0, 3: 1}
    total = 0.0
    for a in range(4):
        sims = {j: float(views[a] @ views[j]) / t for j in range(4) if j != a}
        total += -sims[pos[a]] + math.log(sum(math.exp(s) for s in sims.values()))
    assert nt_xent(z1, z2, t).item() == pytest.approx(total / 4, rel=1e-6)


def test_nt_xent_is_small_when_views_agree():
    z = torch.eye(8) * 5
    assert nt_xent(z, z, 0.1) < nt_xent(z, z.roll(1, 0), 0.1)


def test_byol_loss_by_hand():
    p = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    z = torch.tensor([[0.0, 3.0], [2.0, 2.0]])
    # cos = 0 and 1: (2 - 0 + 2 - 2) / 2
    assert byol_loss(p, z).item() == pytest.approx(1.0, abs=1e-6)


def test_byol_momentum_schedule_and_ema():
    torch.manual_seed(0)
    m = BYOL(build_backbone("resnet18-w0.25", True), base_momentum=0.9)
    assert m.momentum(0.0) == pytest.approx(0.9) and m.momentum(1.0) == pytest.approx(1.0)
    assert 0.9 < m.momentum(0.5) < 1.0
    with torch.no_grad():
        for p in m.backbone.parameters():
            p.add_(1.0)
    before = [t.clone() for t in m.target_backbone.parameters()]
    m.after_step(0.0)  # momentum 0.9: target moves 10% of the way to the online network
    for t, b, o in zip(m.target_backbone.parameters(), before, m.backbone.parameters()):
        torch.testing.assert_close(t, 0.9 * b + 0.1 * o)
    assert not any(p.requires_grad for p in m.target_backbone.parameters())


def test_simsiam_loss_by_hand_and_stop_gradient():
    p1 = torch.tensor([[1.0, 0.0], [1.0, 1.0]], requires_grad=True)
    z2 = torch.tensor([[0.0, 3.0], [2.0, 2.0]], requires_grad=True)  # cos(p1, z2) = 0, 1
    p2 = torch.tensor([[1.0, 0.0], [0.0, 2.0]], requires_grad=True)
    z1 = torch.tensor([[-1.0, 0.0], [1.0, 1.0]], requires_grad=True)  # cos(p2, z1) = -1, 1/sqrt(2)
    want = -((0 + 1) / 2 + (-1 + 1 / math.sqrt(2)) / 2) / 2
    loss = simsiam_loss(p1, p2, z1, z2)
    assert loss.item() == pytest.approx(want, abs=1e-6)
    loss.backward()
    assert p1.grad is not None and p2.grad is not None
    assert z1.grad is None and z2.grad is None  # stop-gradient on the projections


def test_simsiam_heads():
    m = SimSiam(build_backbone("resnet18-w0.25", True))
    d = m.backbone.feature_dim
    assert [x.out_features for x in m.projector if isinstance(x, torch.nn.Linear)] == [d, d, d]
    assert not m.projector[-1].affine  # the output BatchNorm has no affine parameters
    assert [x.out_features for x in m.predictor if isinstance(x, torch.nn.Linear)] == [d // 4, d]


def test_info_nce_by_hand():
    q = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    k = torch.tensor([[2.0, 1.0], [0.0, 1.0]])
    queue = torch.tensor([[0.0, 1.0], [-1.0, 0.0], [0.6, 0.8]])
    t = 0.2
    total = 0.0
    for a in range(2):
        qa, ka = q[a] / q[a].norm(), k[a] / k[a].norm()
        pos = float(qa @ ka) / t
        negs = [float(qa @ row) / t for row in queue]
        total += -pos + math.log(math.exp(pos) + sum(math.exp(v) for v in negs))
    assert info_nce(q, k, queue, t).item() == pytest.approx(total / 2, rel=1e-6)


def test_moco_queue_is_first_in_first_out():
    m = MoCo(build_backbone("resnet18-w0.25", True), proj_dim=2, queue_size=5)
    assert m.queue.shape == (5, 2) and torch.allclose(m.queue.norm(dim=1), torch.ones(5))
    start = m.queue.clone()
    k1 = torch.tensor([[3.0, 4.0], [0.0, 2.0], [1.0, 0.0]])
    m._enqueue(k1)  # rows 0-2, normalised
    torch.testing.assert_close(m.queue[:3], torch.tensor([[0.6, 0.8], [0.0, 1.0], [1.0, 0.0]]))
    torch.testing.assert_close(m.queue[3:], start[3:])
    assert int(m.queue_ptr) == 3
    k2 = torch.tensor([[-1.0, 0.0], [0.0, -1.0], [0.0, 5.0]])
    m._enqueue(k2)  # rows 3, 4, then 0: the oldest first
    torch.testing.assert_close(m.queue, torch.tensor([[0.0, 1.0], [0.0, 1.0], [1.0, 0.0], [-1.0, 0.0],
                                                      [0.0, -1.0]]))
    assert int(m.queue_ptr) == 1
    big = torch.arange(1.0, 15.0).view(7, 2)  # a batch larger than the queue: its last 5 keys
    m._enqueue(big)
    want = torch.nn.functional.normalize(big[2:], dim=1)  # rows 3, 4, 0, 1, 2 (from 1 + 2)
    torch.testing.assert_close(m.queue[[3, 4, 0, 1, 2]], want)
    assert int(m.queue_ptr) == (1 + 7) % 5


def test_moco_momentum_update_and_queue_in_state():
    torch.manual_seed(0)
    m = MoCo(build_backbone("resnet18-w0.25", True), momentum=0.9)
    assert m.queue.shape == (4096, 128)
    with torch.no_grad():
        for p in m.backbone.parameters():
            p.add_(1.0)
    before = [t.clone() for t in m.key_backbone.parameters()]
    m.after_step(0.5)  # constant momentum: 10% of the way at any progress
    for t, b, o in zip(m.key_backbone.parameters(), before, m.backbone.parameters()):
        torch.testing.assert_close(t, 0.9 * b + 0.1 * o)
    assert not any(p.requires_grad for p in m.key_backbone.parameters())
    assert not any(p.requires_grad for p in m.key_projector.parameters())
    assert {"queue", "queue_ptr"} <= set(m.state_dict())  # checkpointed with the weights
    assert not any(k.startswith("backbone.") for k in m.state_dict() if "key_" in k)  # extract's prefix
    # a forward enqueues the batch's keys: the next batch sees them as negatives
    x = torch.randn(4, 3, 32, 32)
    m(x, x)
    assert int(m.queue_ptr) == 4


@pytest.mark.parametrize("name", ["simclr", "byol", "simsiam", "moco"])
def test_a_few_steps_lower_the_loss(name):
    torch.manual_seed(0)
    method = build_method(name, build_backbone("resnet18-w0.25", True))
    opt = torch.optim.SGD(method.parameters(), lr=0.05, momentum=0.9)
    x1, x2 = torch.randn(16, 3, 32, 32), torch.randn(16, 3, 32, 32)
    x2 = x1 + 0.1 * x2  # two "views" of the same images
    # MoCo: on a fixed batch the images' own keys would enter the queue as negatives of
    # themselves (the loss then rises); held fixed, the negatives are the initial queue
    queue = method.queue.clone() if name == "moco" else None
    losses = []
    for step in range(8):
        loss = method(x1, x2)
        opt.zero_grad()
        loss.backward()
        opt.step()
        method.after_step(step / 8)
        losses.append(loss.item())
        if queue is not None:
            method.queue.copy_(queue)
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0]


def test_registry_errors():
    assert sorted(METHODS) == ["byol", "moco", "simclr", "simsiam"]
    with pytest.raises(ValueError, match="unknown method 'swav'.*byol, moco, simclr, simsiam"):
        build_method("swav", build_backbone("resnet18-w0.25", True))
    with pytest.raises(ValueError, match="temperature"):
        SimCLR(build_backbone("resnet18-w0.25", True), temperature=0)
    with pytest.raises(ValueError, match="temperature"):
        MoCo(build_backbone("resnet18-w0.25", True), temperature=0)
    with pytest.raises(ValueError, match="queue_size"):
        MoCo(build_backbone("resnet18-w0.25", True), queue_size=0)
    with pytest.raises(ValueError, match="momentum"):
        MoCo(build_backbone("resnet18-w0.25", True), momentum=1.5)


def _ranks_worker(rank, world, port, z1, z2, out):
    import os

    import torch.distributed as dist
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        b = z1.shape[0] // world
        a = z1[rank * b:(rank + 1) * b].clone().requires_grad_()
        c = z2[rank * b:(rank + 1) * b].clone().requires_grad_()
        loss = nt_xent(a, c, 0.3)
        loss.backward()
        out.put((rank, loss.item(), a.grad.numpy(), c.grad.numpy()))
    finally:
        dist.destroy_process_group()


def test_nt_xent_across_ranks_is_the_global_batch_loss():
    import socket

    import torch.multiprocessing as mp
    g = torch.Generator().manual_seed(3)
    z1, z2 = torch.randn(8, 5, generator=g), torch.randn(8, 5, generator=g)
    a, c = z1.clone().requires_grad_(), z2.clone().requires_grad_()
    want = nt_xent(a, c, 0.3)
    want.backward()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_ranks_worker, args=(r, 2, port, z1, z2, out)) for r in range(2)]
    for p in procs:
        p.start()
    got = sorted(out.get(timeout=120) for _ in range(2))
    for p in procs:
        p.join(timeout=60)
    # DDP averages the ranks' gradients: the mean of the rank losses is the global loss
    assert sum(r[1] for r in got) / 2 == pytest.approx(want.item(), rel=1e-5)
    grad_a = torch.cat([torch.from_numpy(r[2]) for r in got]) / 2
    grad_c = torch.cat([torch.from_numpy(r[3]) for r in got]) / 2
    torch.testing.assert_close(grad_a, a.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(grad_c, c.grad, rtol=1e-4, atol=1e-6)
