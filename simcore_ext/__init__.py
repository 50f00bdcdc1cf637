"""Exact, fast SimCore coreset selection (Kim, Bae & Yun, CVPR 2023).

    from simcore_ext import select_coreset
    result = select_coreset(target_features, openset_features, budget=0.01)
    result.indices  # open-set rows, in selection order

The contract is SPEC.md; `simcore_ext.reference.reference_select` is its plain float64
definition (the test oracle)."""
from ._ops import cpu_isa, facility_location, masked_topk, scan_topk, with_cuda
from .kmeans import kmeans
from .result import CoresetResult
from .select import openset_topk, select_coreset

__all__ = [
    "select_coreset",
    "openset_topk",
    "CoresetResult",
    "kmeans",
    "masked_topk",
    "scan_topk",
    "facility_location",
    "cpu_isa",
    "with_cuda",
]
__version__ = "0.1.0"
