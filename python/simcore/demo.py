"""`simcore demo`: the whole SimCore pipeline on built-in generated images, in minutes on
a laptop CPU; and (`--selection-only`) a selection on generated features, in a second.

The pipeline demo generates (simcore.synthetic) a fine-grained target of a few visually
close classes with a labelled test split, and an open-set in which a known share of the
images is of the target's classes, a share is related and the rest unrelated. It then runs
`simcore run` on them with a small encoder: pretrain on X, extract, centroids, select,
retrain on X + coreset and on X + a random subset of the same size (same optimizer steps),
evaluate, report; and prints the comparison and what the coreset holds.

The selection-only demo draws features around class directions, the way an encoder places
a fine-grained target and an open-set, selects a coreset and shows what it pulled."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from simcore_ext import select_coreset

GROUPS = ("target-class", "related", "other")


@dataclass
class DemoFeatures:
    target: torch.Tensor  # (n, d)
    openset: torch.Tensor  # (N, d)
    group: np.ndarray  # (N,) index into GROUPS
    classes: int


def make_features(seed: int = 0, classes: int = 6, per_class: int = 100, n_openset: int = 200_000,
                  d: int = 128, share_target: float = 0.01, share_related: float = 0.03) -> DemoFeatures:
    g = torch.Generator().manual_seed(seed)
    noise = 0.8 / d**0.5  # noise of norm ~0.8 around a unit direction

    def around(dirs: torch.Tensor, count: int) -> torch.Tensor:
        pick = torch.randint(0, dirs.shape[0], (count,), generator=g)
        return dirs[pick] + noise * torch.randn(count, d, generator=g)

    family = F.normalize(torch.randn(1, d, generator=g), dim=1)  # e.g. "dogs"
    class_dirs = F.normalize(family + 0.5 * F.normalize(torch.randn(classes, d, generator=g), dim=1), dim=1)
    related_dirs = F.normalize(family + 0.9 * F.normalize(torch.randn(50, d, generator=g), dim=1), dim=1)
    other_dirs = F.normalize(torch.randn(500, d, generator=g), dim=1)

    target = torch.cat([class_dirs[c] + noise * torch.randn(per_class, d, generator=g) for c in range(classes)])
    n_t, n_r = int(share_target * n_openset), int(share_related * n_openset)
    parts = [around(class_dirs, n_t), around(related_dirs, n_r), around(other_dirs, n_openset - n_t - n_r)]
    group = np.repeat(np.arange(3), [p.shape[0] for p in parts])
    perm = torch.randperm(n_openset, generator=g)
    return DemoFeatures(target, torch.cat(parts)[perm], group[perm.numpy()], classes)


def composition(group: np.ndarray) -> str:
    share = np.bincount(group, minlength=3) / max(1, group.size)
    return ", ".join(f"{name} {100 * s:.1f}%" for name, s in zip(GROUPS, share))


def run_selection_demo(out: str | None = None, seed: int = 0, n_openset: int = 200_000, progress: bool = True) -> int:
    if isinstance(n_openset, bool) or not isinstance(n_openset, int) or n_openset < 1:
        raise ValueError(f"--openset-size must be a positive number of rows, got {n_openset!r}")
    t0 = time.perf_counter()
    data = make_features(seed=seed, n_openset=n_openset)
    n, d = data.target.shape
    print(f"simcore demo: target X {n} x {d} ({data.classes} close classes), "
          f"open-set U {data.openset.shape[0]} x {d} ({composition(data.group)})")
    print(f"generated in {time.perf_counter() - t0:.2f} s; selecting with k=100, tau=0.95, patience=20, "
          f"budget 50 n = {50 * n} (the released sampler's defaults)")
    r = select_coreset(data.target, data.openset, seed=seed, progress=progress)

    print(f"\n{'round':>6} {'added':>6} {'g_t':>8}")
    rows = list(enumerate(zip(r.round_sizes.tolist(), r.round_scores.tolist()), start=1))
    shown = rows if len(rows) <= 16 else rows[:10] + [None] + rows[-5:]
    for row in shown:
        if row is None:
            print(f"{'...':>6}")
            continue
        t, (size, g) = row
        print(f"{t:>6} {size:>6} {g:>8.4f}")
    s = r.stats
    why = {"criterion": f"round {r.rounds} scored {r.round_scores[-1]:.4f} < threshold {r.threshold:.4f}",
           "budget": f"the budget of {r.params['budget']} items is spent",
           "exhausted": "every open-set item is selected"}[r.stop_reason]
    print(f"\nstopped ({r.stop_reason}): {why}")
    print(f"{len(r)} items in {s['seconds']:.2f} s (centroids {s['seconds_centroids']:.2f} s, "
          f"first pass {s['seconds_first_pass']:.2f} s, {s['passes']} pass(es), "
          f"CPU kernels {s['cpu_isa']}, device {r.params['device']})")
    picked = data.group[r.indices.numpy()]
    rng = np.random.default_rng(seed)
    rand = data.group[rng.choice(data.group.size, size=len(r), replace=False)]
    print(f"coreset: {composition(picked)}")
    print(f"random : {composition(rand)}")
    if out:
        os.makedirs(out, exist_ok=True)
        path = os.path.join(out, "coreset.npz")
        r.save(path)
        print(f"saved {path}")
    return 0


# The pipeline demo's settings: a 2-core CPU runs them in 2.5 to 5 minutes (149-297 s
# measured on 2-core EPYCs). They put the demo where SimCore has something to add
# (RESULTS.md, issue 11): X is small (40 images per class) and the encoder sees each of its
# images ~150 times, so at these optimizer steps new images of the target's semantics
# improve it, while at 30 epochs they did not. The open-set holds, like ImageNet for a dog
# target (~12% dogs), 10% new images of the target's classes and 30% relatives (the
# target's patterns on squares: another object with the same semantics); the rest is
# unrelated. 200 test images per class keep the test noise near +-1 point. Chosen on the
# worlds of seeds 0 and 1; on held-out seeds 3-8 the gain over X is smaller than the
# run-to-run spread (RESULTS.md, issue 11).
DEMO_DATA = dict(train_per_class=40, test_per_class=200, openset_size=6000, share_target=0.10,
                 share_related=0.30, related="squares")
# 240 images in batches of 120: 2 steps an epoch, 300 steps in all (a batch size that does not
# divide X drops the remainder every epoch).
DEMO = dict(arch="resnet18-w0.25", epochs=150, batch_size=120, lr=0.3, warmup_epochs=15, k=30,
            budget=0.08, linear_epochs=100)


def demo_config(out: str, seed: int, run_options: dict | None = None):
    """The RunConfig of the demo in OUT (its generated data in OUT/data); run_options:
    overrides of DEMO."""
    from .pipeline import RunConfig
    data = os.path.join(out, "data")
    return RunConfig(target=os.path.join(data, "target", "train"), test=os.path.join(data, "target", "test"),
                     openset=[os.path.join(data, "openset")], out=out, seed=seed, compare_random=True,
                     openset_groups=os.path.join(data, "openset_classes.tsv"), **dict(DEMO, **(run_options or {})))


def run_demo(out: str = "simcore-demo", seed: int = 0, from_stage: str | None = None,
             progress: bool = True, data_options: dict | None = None, run_options: dict | None = None) -> int:
    """data_options, run_options: overrides of DEMO_DATA and DEMO (benchmarks compare generated
    worlds and settings with them)."""
    from .pipeline import Run
    from .synthetic import make_demo_data

    t0 = time.perf_counter()
    data = os.path.join(out, "data")
    info = make_demo_data(data, seed=seed, progress=progress, **dict(DEMO_DATA, **(data_options or {})))
    print(f"simcore demo: generated data in {data} ({time.perf_counter() - t0:.1f} s): "
          f"{_counts(info)}")
    run = Run(demo_config(out, seed, run_options).check(), progress=progress)
    run.run(from_stage)
    ev = run.stage_record("eval")["results"]
    print("\naccuracy on the target's test split (same optimizer steps for every encoder):")
    print(f"{'pretraining data':<18} {'linear':>8} {'kNN k=20':>9} {'kNN k=200':>10}")
    for name, v in ev.items():
        print(f"{name:<18} {v['linear']:>7.1f}% {v['knn20']:>8.1f}% {v['knn200']:>9.1f}%")
    if {"X", "X + SimCore"} <= ev.keys():
        gain = ev["X + SimCore"]["linear"] - ev["X"]["linear"]
        vs = (f", {ev['X + SimCore']['linear'] - ev['X + random']['linear']:+.1f} against X + random"
              if "X + random" in ev else "")
        print(f"X + SimCore, linear: {gain:+.1f} points against X{vs} (one seed)")
    comp = run.stage_record("report")["composition"].get("group", {})
    sel = run.stage_record("select")
    print(f"\ncoreset: {sel['items']} of {sel['openset']} open-set images, {sel['rounds']} rounds "
          f"({sel['stop_reason']})")
    width = max(map(len, comp), default=0)
    for name, shares in comp.items():
        print(f"  {name:<{width}}  " + ", ".join(f"{g} {v:.1f}%" for g, v in shares.items()))
    print(f"\nreport and plots: {os.path.join(out, 'report')} "
          f"({time.perf_counter() - t0:.0f} s in all)")
    return 0


def _counts(info: dict) -> str:
    c = info.get("counts", {})
    return ", ".join(f"{k} {v}" for k, v in c.items()) if c else ""
