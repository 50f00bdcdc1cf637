"""kNN and the linear probe on features whose classes are separable: ~100%."""
import pytest
import torch

from simcore.evaluate import knn, linear_probe


def blobs(n_per, classes=4, d=16, seed=0, spread=0.3):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, d, generator=g) * 3
    y = torch.arange(classes).repeat_interleave(n_per)
    return centres[y] + spread * torch.randn(len(y), d, generator=g), y


def test_knn_separable():
    (xtr, ytr), (xte, yte) = blobs(50), blobs(20, seed=0)
    acc = knn(xtr, ytr, xte + 0.01, yte)
    assert acc[20] == 100.0 and acc[200] == 100.0


def test_knn_weights_votes_by_similarity():
    # one very close neighbour of class 1 outvotes two far ones of class 0 at k = 3
    train = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.05, 1.0]])
    y = torch.tensor([1, 0, 0])
    test = torch.tensor([[1.0, 0.1]])
    assert knn(train, y, test, torch.tensor([1]), ks=(3,))[3] == 100.0


def test_linear_probe_separable():
    (xtr, ytr), (xte, yte) = blobs(60), blobs(30, seed=0)
    acc = linear_probe(xtr, ytr, xte + 0.01, yte, epochs=30)
    assert acc["top1"] > 99 and acc["mean_per_class"] > 99


def test_linear_probe_validation_split():
    (xtr, ytr), (xte, yte) = blobs(60), blobs(30, seed=0)
    acc = linear_probe(xtr, ytr, xte + 0.01, yte, epochs=10, val_fraction=0.25)
    assert acc["val_top1"] > 95 and acc["top1"] > 95
    with pytest.raises(ValueError, match="val_fraction"):
        linear_probe(xtr, ytr, xte, yte, val_fraction=1.0)


def test_errors():
    x, y = blobs(5)
    with pytest.raises(ValueError, match="unlabelled"):
        knn(x, y, x, torch.full_like(y, -1))
    with pytest.raises(ValueError, match="same d"):
        knn(x, y, x[:, :3], y)
    with pytest.raises(ValueError, match="one label per"):
        linear_probe(x, y[:-1], x, y)
    with pytest.raises(ValueError, match="empty"):
        knn(x[:0], y[:0], x, y)
