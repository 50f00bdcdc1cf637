"""k-means: seeded determinism, sane clusters, degenerate inputs."""
import torch

from simcore_ext import kmeans
from simcore_ext.kmeans import make_centroids


def test_seeded_and_deterministic():
    x = torch.randn(500, 8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(kmeans(x, 10, seed=3), kmeans(x, 10, seed=3))
    assert not torch.equal(kmeans(x, 10, seed=3), kmeans(x, 10, seed=4))


def test_recovers_separated_blobs():
    g = torch.Generator().manual_seed(1)
    centres = torch.eye(5) * 20
    x = centres.repeat_interleave(100, 0) + torch.randn(500, 5, generator=g)
    c = kmeans(x, 5, seed=0)
    dist = torch.cdist(c, centres)
    assert (dist.min(1).values < 1).all() and len(set(dist.argmin(1).tolist())) == 5


def test_fewer_distinct_points_than_k():
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).repeat(10, 1)
    c = kmeans(x, 5, seed=0)
    assert c.shape == (5, 2) and torch.isfinite(c).all()


def test_make_centroids_cosine_unit_rows():
    x = torch.randn(50, 4) * 10
    c = make_centroids(x, 7, "cosine", 0)
    torch.testing.assert_close(c.norm(dim=1), torch.ones(7))
    assert torch.equal(make_centroids(x, 50, "dot", 0), x)
