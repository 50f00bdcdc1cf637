"""Argument checks and resolution shared by select_coreset and the oracle.

Every failure is a ValueError or TypeError that names the argument and the offending value
(or row), raised before anything is computed or written."""
from __future__ import annotations

import math
import numbers
from typing import Optional, Union

import numpy as np
import torch

from .sources import TORCH_FLOATS, numpy_to_torch, torch_dtype_of_numpy

METRICS = ("cosine", "dot")


def as_feature_tensor(x, name: str) -> torch.Tensor:
    """A 2-D float tensor (numpy arrays converted without copy); TypeError/ValueError otherwise."""
    if isinstance(x, np.ndarray):
        torch_dtype_of_numpy(x.dtype, name)
        x = numpy_to_torch(x)
    elif not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a tensor or a numpy array, got {type(x).__name__}")
    if x.dtype not in TORCH_FLOATS:
        raise TypeError(f"{name} must hold floating-point features, got dtype {x.dtype}")
    check_tensor_device(x, name)
    if x.dim() != 2:
        raise ValueError(f"{name} must be 2-D (rows, d), got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is empty (0 rows)")
    return x


def check_tensor_device(x: torch.Tensor, name: str) -> None:
    """Data must live on a CPU or a CUDA GPU (not 'meta', which holds no values)."""
    if x.device.type not in ("cpu", "cuda"):
        raise ValueError(f"{name} is on the {x.device} device: expected a CPU or CUDA tensor")


def bad_row_reason(row: torch.Tensor, norm: float, metric: str) -> Optional[str]:
    """Why a row cannot be used, or None. `norm` is its float32 L2 norm."""
    if not bool(torch.isfinite(row).all()):
        return "contains NaN or Inf"
    if not math.isfinite(norm):
        return "is too large for float32 (its norm overflows)"
    if metric == "cosine" and norm == 0.0:
        return "has zero norm, so its cosine similarity is undefined (use metric='dot' or drop it)"
    return None


def check_rows(x: torch.Tensor, name: str, metric: str, offset: int = 0,
               norms: Optional[torch.Tensor] = None) -> None:
    """Raises ValueError naming the first row that is non-finite, overflows, or is zero
    under cosine. `norms` (float32 L2 norms of x's rows cast to float32) may be given to
    save the pass; a value beyond float32's range makes its row's norm infinite."""
    if norms is None:
        norms = torch.linalg.vector_norm(x.float(), dim=1)
    ok = torch.isfinite(norms)
    if metric == "cosine":
        ok &= norms > 0
    if bool(ok.all()):
        return
    r = int((~ok).nonzero()[0, 0])
    reason = bad_row_reason(x[r], float(norms[r]), metric) or "does not fit in float32"
    raise ValueError(f"{name} row {offset + r} {reason}")


def check_int(value, name: str, minimum: int, maximum: Optional[int] = None) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value}")
    return int(value)


SEED_MAX = 2**64 - 1  # what torch's generators take


def check_metric(metric) -> str:
    if metric not in METRICS:
        raise ValueError(f"metric must be 'cosine' or 'dot', got {metric!r}")
    return metric


def check_tau(tau) -> Optional[float]:
    if tau is None:
        return None
    if isinstance(tau, bool) or not isinstance(tau, numbers.Real):
        raise TypeError(f"tau must be a float in (0, 1] or None, got {tau!r}")
    if not (0.0 < float(tau) <= 1.0):
        raise ValueError(f"tau must be in (0, 1], got {tau}")
    return float(tau)


def resolve_budget(budget: Union[int, float, None], n_openset: int, default: int) -> int:
    """Items to select: an int >= 1, or a float in (0, 1) as a fraction of N (floored, as the
    released sampler). None: `default`."""
    if budget is None:
        return default
    if isinstance(budget, bool) or not isinstance(budget, numbers.Real):
        raise TypeError(f"budget must be an int, a float in (0, 1) or None, got {budget!r}")
    if isinstance(budget, numbers.Integral):
        if budget <= 0:
            raise ValueError(f"budget must be >= 1 item, got {budget}")
        return int(budget)
    if not (0.0 < float(budget) < 1.0):
        raise ValueError(f"budget as a fraction must be in (0, 1), got {budget}")
    items = int(float(budget) * n_openset)
    if items < 1:
        raise ValueError(f"budget={budget} of the {n_openset} open-set rows is less than one item")
    return items


def resolve_device(device, default: Optional[torch.device]) -> torch.device:
    if device is None:
        if default is not None:
            return default
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device: {device!r} is not a device ({e})") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but CUDA is not available")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be a CPU or CUDA device, got {device!r}")
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    return dev
