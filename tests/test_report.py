"""The report's top-images grid: per centroid, its nearest images of the whole coreset."""
import os
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F

from simcore import report


def _run(tmp_path, target, centroids, openset):
    (tmp_path / "features").mkdir()
    (tmp_path / "centroids").mkdir()
    np.save(tmp_path / "features" / "target.npy", target)
    np.save(tmp_path / "features" / "openset_0.npy", openset)
    np.save(tmp_path / "centroids" / "centroids.npy", centroids)
    for name, rows in (("target", target), ("openset_0", openset)):
        paths = [str(tmp_path / f"{name}-{i}.png") for i in range(len(rows))]
        for p in paths:
            open(p, "wb").close()
        (tmp_path / "features" / f"{name}.paths.txt").write_text("".join(p + "\n" for p in paths))
    return SimpleNamespace(
        cfg=SimpleNamespace(openset=["u"]), path=lambda *parts: os.path.join(str(tmp_path), *parts),
        features=lambda: "features",
        openset_paths=lambda: (tmp_path / "features" / "openset_0.paths.txt").read_text().splitlines())


def test_rows_rank_the_whole_coreset_and_skip_empty_centroids(tmp_path, monkeypatch):
    monkeypatch.setattr(report, "_load_image", lambda path, size=64: os.path.basename(path))
    rng = np.random.default_rng(0)
    # close centroids: a centroid's nearest items are often nearer still to a neighbour
    base = rng.standard_normal(16)
    C = F.normalize(torch.from_numpy(base + 0.3 * rng.standard_normal((12, 16))), dim=1).float().numpy()
    U = (base + 0.5 * rng.standard_normal((300, 16))).astype(np.float32)
    X = (base + 0.5 * rng.standard_normal((40, 16))).astype(np.float32)
    run = _run(tmp_path, X, C, U)
    coreset = rng.choice(300, 60, replace=False)
    rows, labels = report.top_images(run, coreset, centroids=8, per_row=5)
    sim = F.normalize(torch.from_numpy(U[coreset]), dim=1) @ torch.from_numpy(C).T
    owners = set(sim.argmax(1).tolist())
    assert len(rows) == len(labels) == min(8, len(owners))
    Xn = F.normalize(torch.from_numpy(X), dim=1)
    for row, label in zip(rows, labels):
        c = int(label.split()[-1])
        assert c in owners
        assert row[0] == f"target-{int((Xn @ torch.from_numpy(C[c])).argmax())}.png"
        want = [f"openset_0-{int(coreset[i])}.png" for i in sim[:, c].argsort(descending=True)[:5]]
        assert row[1:] == want
    # fewer coreset items than a row holds, and centroids no item is nearest to: no empty rows
    rows, labels = report.top_images(run, coreset[:2], centroids=8, per_row=5)
    assert 1 <= len(rows) <= 2 and all(len(r) == 3 for r in rows)
