"""SimCLR, BYOL, SimSiam, MoCo v2, SwAV, DINO and MAE: losses against hand-computed cases,
the EMA updates, MoCo's and SwAV's queues, DINO's center, MAE's masking, and a few
optimizer steps lowering the loss on a fixed batch."""
import math

import pytest
import torch

import torch.nn.functional as F

from simcore.methods import BYOL, DINO, MAE, METHODS, MoCo, SimCLR, SimSiam, SwAV, build_method, method_views
from simcore.methods.dino import dino_loss
from simcore.methods.mae import mae_loss, patchify, random_masking
from simcore.methods.multicrop import local_size
from simcore.methods.swav import sinkhorn
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


def _views(method, x, image_size=32):
    """Fixed "views" of the images x for `method`: each of its views' sizes, x resized plus a
    little noise, then its masking noise if it draws some."""
    g = torch.Generator().manual_seed(1)
    views = [F.interpolate(x, size=(a.size, a.size), mode="bilinear", align_corners=False)
             + 0.1 * torch.randn(x.shape[0], 3, a.size, a.size, generator=g)
             for a in method_views(method, image_size, 0.08)]
    if hasattr(method, "noise"):
        views.append(method.noise(x.shape[0], g, "cpu"))
    return views


@pytest.mark.parametrize("name", ["simclr", "byol", "simsiam", "moco", "swav", "dino", "mae"])
def test_a_few_steps_lower_the_loss(name):
    torch.manual_seed(0)
    arch = "vit_tiny" if name == "mae" else "resnet18-w0.25"
    method = build_method(name, build_backbone(arch, True, 32))
    opt = torch.optim.SGD(method.parameters(), lr=0.05, momentum=0.9)
    views = _views(method, torch.randn(16, 3, 32, 32))
    # MoCo: on a fixed batch the images' own keys would enter the queue as negatives of
    # themselves (the loss then rises); held fixed, the negatives are the initial queue
    queue = method.queue.clone() if name == "moco" else None
    # DINO: its target moves as the center learns the teacher's mean output (the loss rises
    # toward log K while the center removes the untrained network's common output); held at
    # its first value, the student's loss against the teacher falls
    center = method.center.clone() if name == "dino" else None
    losses = []
    for step in range(8):
        loss = method(*views)
        opt.zero_grad()
        loss.backward()
        opt.step()
        method.after_step(step / 8)
        losses.append(loss.item())
        if queue is not None:
            method.queue.copy_(queue)
        if center is not None:
            method.center.copy_(center)
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0]


def test_sinkhorn_by_hand():
    # scores [[1, 0], [0, 1]], epsilon 1, one iteration: Q = exp(scores) stays symmetric, so
    # every scaling is by a constant and each sample's codes are (e, 1) / (e + 1)
    e = math.e
    want = torch.tensor([[e, 1.0], [1.0, e]]) / (e + 1)
    torch.testing.assert_close(sinkhorn(torch.eye(2), 1.0, 1), want)
    # every sample prefers prototype 0: the iterations share the batch out equally
    scores = torch.tensor([[0.9, 0.1, 0.0], [0.8, 0.3, 0.1], [0.7, 0.0, 0.2], [0.95, 0.2, 0.4]],
                          dtype=torch.float64)
    q = sinkhorn(scores, 0.05, 200)
    torch.testing.assert_close(q.sum(1), torch.ones(4, dtype=torch.float64))  # codes: distributions
    torch.testing.assert_close(q.sum(0), torch.full((3,), 4 / 3, dtype=torch.float64), rtol=1e-6, atol=1e-6)
    assert q[:, 0].sum() < 2  # not every sample on prototype 0 any more


def _swav_loss_by_hand(scores, codes_of, temperature):
    """scores [crops, B, K]; codes_of(i) the codes of global crop i: mean over the two of the
    mean over the other crops of -sum q log softmax(scores_v / t), averaged over the batch."""
    crops, b, _ = scores.shape
    total = 0.0
    for i in range(2):
        q = codes_of(i)
        sub = 0.0
        for v in range(crops):
            if v == i:
                continue
            for n in range(b):
                logits = [float(x) / temperature for x in scores[v, n]]
                lse = math.log(sum(math.exp(x) for x in logits))
                sub += -sum(float(q[n, k]) * (logits[k] - lse) for k in range(len(logits))) / b
        total += sub / (crops - 1)
    return total / 2


def test_swav_loss_by_hand_and_queue():
    torch.manual_seed(0)
    m = SwAV(build_backbone("resnet18-w0.25", True), proj_dim=4, prototypes=3, queue_size=0).double()
    g = torch.Generator().manual_seed(0)
    scores = torch.rand(4, 2, 3, generator=g, dtype=torch.float64)  # 4 crops, batch 2, 3 prototypes
    z = F.normalize(torch.randn(4, 2, 4, generator=g, dtype=torch.float64), dim=2)
    want = _swav_loss_by_hand(scores, lambda i: sinkhorn(scores[i], 0.05, 3), 0.1)
    assert m._loss(scores, z).item() == pytest.approx(want, rel=1e-9)

    # a queue of 3 rows: the newest projections first; used by Sinkhorn only once full
    m = SwAV(build_backbone("resnet18-w0.25", True), proj_dim=4, prototypes=3, queue_size=3).double()
    assert m.queue.shape == (2, 3, 4) and int(m.queued) == 0
    m._loss(scores, z)  # not full yet: the same loss as without a queue
    torch.testing.assert_close(m.queue[:, :2], z[:2])
    assert int(m.queued) == 2
    z2 = F.normalize(torch.randn(4, 2, 4, generator=g, dtype=torch.float64), dim=2)
    first = m._loss(scores, z2)  # 2 queued < 3: still without the queue
    assert first.item() == pytest.approx(want, rel=1e-9)
    torch.testing.assert_close(m.queue, torch.cat([z2[:2], z[:2, :1]], 1))  # newest first, oldest dropped
    queued = m.queue.clone()
    protos = m.prototypes.weight.detach()

    def with_queue(i):  # Sinkhorn over the queue's scores and the batch's; the batch's rows
        s = torch.cat([queued[i] @ protos.T, scores[i]])
        return sinkhorn(s, 0.05, 3)[-2:]
    assert m._loss(scores, z).item() == pytest.approx(_swav_loss_by_hand(scores, with_queue, 0.1), rel=1e-9)
    assert _swav_loss_by_hand(scores, with_queue, 0.1) != pytest.approx(want, rel=1e-6)  # the queue mattered


def test_swav_prototypes_stay_normalised_and_views():
    m = SwAV(build_backbone("resnet18-w0.25", True))
    torch.testing.assert_close(m.prototypes.weight.norm(dim=1), torch.ones(512))
    with torch.no_grad():
        m.prototypes.weight.mul_(3)
    m.after_step(0.5)
    torch.testing.assert_close(m.prototypes.weight.norm(dim=1), torch.ones(512))
    views = m.views(32, 0.08)
    assert [(a.size, a.scale) for a in views] == [(32, (0.14, 1.0))] * 2 + [(12, (0.08, 0.14))] * 6
    assert [local_size(s) for s in (16, 32, 64, 224)] == [8, 12, 24, 96]  # multiples of the ViT patch
    with pytest.raises(ValueError, match="min-crop"):
        m.views(32, 0.2)


def test_dino_loss_by_hand():
    student = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]], [[0.5, 0.5]]])  # 3 crops, batch 1, K = 2
    teacher = torch.tensor([[[2.0, 0.0]], [[0.0, 1.0]]])
    center = torch.tensor([0.5, 0.0])
    ts, tt = 0.5, 0.25

    def softmax(v):
        e = [math.exp(x) for x in v]
        return [x / sum(e) for x in e]
    total, terms = 0.0, 0
    for i in range(2):
        q = softmax([(float(teacher[i, 0, k]) - float(center[k])) / tt for k in range(2)])
        for v in range(3):
            if v != i:
                p = softmax([float(student[v, 0, k]) / ts for k in range(2)])
                total += -sum(q[k] * math.log(p[k]) for k in range(2))
                terms += 1
    assert dino_loss(student, teacher, center, ts, tt).item() == pytest.approx(total / terms, rel=1e-6)


def test_dino_center_teacher_and_head():
    torch.manual_seed(0)
    m = DINO(build_backbone("resnet18-w0.25", True), out_dim=16, base_momentum=0.9, local_crops=2)
    assert m.momentum(0.0) == pytest.approx(0.9) and m.momentum(1.0) == pytest.approx(1.0)
    views = _views(m, torch.randn(4, 3, 32, 32))
    assert [v.shape[-1] for v in views] == [32, 32, 12, 12]
    with torch.no_grad():
        want = m.teacher_head(m.teacher_backbone(torch.cat(views[:2]))).mean(0)
    m(*views)
    torch.testing.assert_close(m.center, 0.1 * want)  # EMA 0.9 from zero
    assert "center" in m.state_dict()
    with torch.no_grad():  # the last layer's rows have norm 1: outputs are cosines
        out = m.head(torch.randn(5, m.backbone.feature_dim))
    assert out.abs().max() <= 1 + 1e-6
    with torch.no_grad():
        for p in m.backbone.parameters():
            p.add_(1.0)
    before = [t.clone() for t in m.teacher_backbone.parameters()]
    m.after_step(0.0)
    for t, b, o in zip(m.teacher_backbone.parameters(), before, m.backbone.parameters()):
        torch.testing.assert_close(t, 0.9 * b + 0.1 * o)
    assert not any(p.requires_grad for p in m.teacher_head.parameters())
    assert any(isinstance(x, torch.nn.BatchNorm1d) for x in m.head.mlp)  # head_batch_norm (default)
    plain = DINO(build_backbone("resnet18-w0.25", True), out_dim=16, head_batch_norm=False, norm_last_layer=False)
    assert not any(isinstance(x, torch.nn.BatchNorm1d) for x in plain.head.mlp)
    with torch.no_grad():  # a learned scale per output row: 3 x the cosine
        plain.head.last_scale.fill_(3.0)
        x = torch.randn(5, plain.backbone.feature_dim)
        h = F.normalize(plain.head.mlp(x), dim=-1)
        torch.testing.assert_close(plain.head(x), 3 * h @ F.normalize(plain.head.last.weight, dim=1).T)


def test_patchify_and_masking_by_hand():
    x3 = torch.arange(3 * 4 * 4, dtype=torch.float32).view(1, 3, 4, 4)  # 2 x 2 patches of 2 px
    p = patchify(x3, 2)
    assert p.shape == (1, 4, 12)
    # patch 1 = rows 0-1, columns 2-3; pixels row by row, the 3 channels of each pixel together
    want = [x3[0, c, r, col].item() for r in (0, 1) for col in (2, 3) for c in range(3)]
    assert p[0, 1].tolist() == want
    keep, mask = random_masking(torch.tensor([[0.3, 0.1, 0.9, 0.5]]), 2)
    assert keep.tolist() == [[1, 0]] and mask.tolist() == [[0.0, 0.0, 1.0, 1.0]]


def test_mae_loss_by_hand():
    pred = torch.tensor([[[1.0, 2.0], [0.0, 0.0], [3.0, 1.0]]])
    target = torch.tensor([[[1.0, 3.0], [5.0, 5.0], [2.0, 4.0]]])
    mask = torch.tensor([[1.0, 0.0, 1.0]])  # patches 0 and 2 were dropped
    # raw: patch 0 ((0 + 1) / 2), patch 2 ((1 + 9) / 2)
    assert mae_loss(pred, target, mask, norm_pix=False).item() == pytest.approx((0.5 + 5.0) / 2)
    # normalised: (1, 3) -> (-1, 1) / sqrt(2 + 1e-6); (2, 4) likewise (unbiased variance 2)
    s = 1 / math.sqrt(2 + 1e-6)
    want = (((1 + s) ** 2 + (2 - s) ** 2) / 2 + ((3 + s) ** 2 + (1 - s) ** 2) / 2) / 2
    assert mae_loss(pred, target, mask).item() == pytest.approx(want, rel=1e-6)


def test_mae_encoder_sees_only_the_visible_patches():
    torch.manual_seed(0)
    m = MAE(build_backbone("vit_tiny", True, 32)).eval()
    assert m.patches == 64 and m.keep == 16
    x = torch.randn(2, 3, 32, 32)
    noise = m.noise(2, torch.Generator().manual_seed(0), "cpu")
    keep, mask = random_masking(noise, m.keep)
    y = x.clone()  # every dropped patch's pixels changed
    for n in range(2):
        for j in torch.nonzero(mask[n]).flatten().tolist():
            r, c = divmod(j, 8)
            y[n, :, 4 * r:4 * r + 4, 4 * c:4 * c + 4] = torch.randn(3, 4, 4)
    with torch.no_grad():
        torch.testing.assert_close(m.encode_visible(x, keep), m.encode_visible(y, keep))
        assert not torch.allclose(m(x, noise), m(y, noise))  # the targets changed
    with pytest.raises(ValueError, match="ViT backbone"):
        MAE(build_backbone("resnet18-w0.25", True))
    with pytest.raises(ValueError, match="noise"):
        m(x, noise[:, :10])


def test_registry_errors():
    assert sorted(METHODS) == ["byol", "dino", "mae", "moco", "simclr", "simsiam", "swav"]
    with pytest.raises(ValueError, match="unknown method 'ibot'.*byol, dino, mae, moco, simclr, simsiam, swav"):
        build_method("ibot", build_backbone("resnet18-w0.25", True))
    for bad in (dict(prototypes=0), dict(queue_size=-1), dict(local_crops=-1), dict(epsilon=0)):
        with pytest.raises(ValueError):
            SwAV(build_backbone("resnet18-w0.25", True), **bad)
    for bad in (dict(teacher_temp=0), dict(center_momentum=2), dict(local_crops=1.5)):
        with pytest.raises(ValueError):
            DINO(build_backbone("resnet18-w0.25", True), **bad)
    with pytest.raises(ValueError, match="mask_ratio"):
        MAE(build_backbone("vit_tiny", True, 32), mask_ratio=1.0)
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
