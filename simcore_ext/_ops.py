"""The compiled `simcore` torch ops: thin wrappers and fake (meta) impls for torch.compile.

torch.ops.simcore.masked_topk(centroids, openset, excluded, K) -> (values, indices)
torch.ops.simcore.scan_topk(centroids, openset, excluded, K, normalize, floor) -> (values, indices, norms)
torch.ops.simcore.facility_location(centroids, openset, selected) -> per-centroid max
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

try:
    from . import _C
except ImportError as e:  # pragma: no cover - depends on how the package was installed
    raise ImportError(
        "simcore_ext._C (the compiled ops) is missing. Install the package with "
        "`pip install --no-build-isolation .` (or `make install`); running Python from the "
        "source tree with `python -m ...` shadows the installed package."
    ) from e


def masked_topk(
    centroids: torch.Tensor, openset: torch.Tensor, excluded: Optional[torch.Tensor], K: int
) -> Tuple[torch.Tensor, torch.Tensor]:
    """The K largest <c_j, u_i> per centroid over the rows not excluded.

    Returns float32 values [k, K] (descending) and int64 indices [k, K]; ties go to the
    smaller row index; missing slots hold -inf and -1. -inf and NaN scores are never returned.
    """
    return torch.ops.simcore.masked_topk(centroids, openset, excluded, K)


def scan_topk(
    centroids: torch.Tensor,
    openset: torch.Tensor,
    excluded: Optional[torch.Tensor],
    K: int,
    normalize: bool,
    floor: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """masked_topk with scores divided by ||u_i|| when `normalize`, keeping only scores
    strictly above floor[j] (float32 [k]) when given; plus every row's float32 L2 norm."""
    return torch.ops.simcore.scan_topk(centroids, openset, excluded, K, normalize, floor)


def facility_location(
    centroids: torch.Tensor, openset: torch.Tensor, selected: torch.Tensor
) -> torch.Tensor:
    """Per centroid, max <c_j, u_i> over the selected rows (-inf where none); f(S) is the sum."""
    return torch.ops.simcore.facility_location(centroids, openset, selected)


def cpu_isa() -> str:
    """The instruction set the CPU kernels use: generic, avx2, avx512 or avx512bf16."""
    return _C.cpu_isa()


def with_cuda() -> bool:
    """Whether the CUDA kernels were compiled into this build."""
    return _C.with_cuda()


def _check_pair(centroids, openset):
    torch._check(centroids.dim() == 2, lambda: "centroids must be 2-D")
    torch._check(openset.dim() == 2, lambda: "openset must be 2-D")
    torch._check(centroids.shape[1] == openset.shape[1], lambda: "feature dimensions differ")
    torch._check(centroids.dtype == openset.dtype, lambda: "dtypes differ")


@torch.library.register_fake("simcore::masked_topk")
def _masked_topk_fake(centroids, openset, excluded, K):
    _check_pair(centroids, openset)
    k = centroids.shape[0]
    return (
        centroids.new_empty((k, K), dtype=torch.float32),
        centroids.new_empty((k, K), dtype=torch.int64),
    )


@torch.library.register_fake("simcore::scan_topk")
def _scan_topk_fake(centroids, openset, excluded, K, normalize, floor=None):
    values, indices = _masked_topk_fake(centroids, openset, excluded, K)
    return values, indices, openset.new_empty((openset.shape[0],), dtype=torch.float32)


@torch.library.register_fake("simcore::facility_location")
def _facility_location_fake(centroids, openset, selected):
    _check_pair(centroids, openset)
    return centroids.new_empty((centroids.shape[0],), dtype=torch.float32)
