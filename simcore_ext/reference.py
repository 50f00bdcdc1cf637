"""The test oracle: SPEC.md's plain definition in PyTorch, float64, one full pass per round.

Small on purpose, so that it can be checked by eye. It holds the dense k x N similarity
matrix: use it on test-sized inputs only. Centroids come from the same `make_centroids`
as the fast path, so both select from the same centroids."""
from __future__ import annotations

import torch

from .checks import as_feature_tensor, resolve_budget
from .kmeans import make_centroids
from .result import CoresetResult
from .sources import OpenSet


def reference_select(target=None, openset=None, *, k=100, centroids=None, budget=None,
                     tau=0.95, patience=20, metric="cosine", seed=0) -> CoresetResult:
    U = OpenSet(openset).materialize()  # float64
    if centroids is None:
        C = make_centroids(as_feature_tensor(target, "target"), k, metric, seed).double()
    else:
        C = as_feature_tensor(centroids, "centroids").double().cpu()
    if metric == "cosine":
        U = U / U.norm(dim=1, keepdim=True)
        C = C / C.norm(dim=1, keepdim=True)
    k, N = C.shape[0], U.shape[0]
    default = 50 * (k if target is None else as_feature_tensor(target, "target").shape[0])
    B = resolve_budget(budget, N, default)

    S = C @ U.T  # s(j, i)
    selected = torch.zeros(N, dtype=torch.bool)
    order, scores, sizes, threshold, t = [], [], [], None, 0
    while True:
        if len(order) >= B:
            reason = "budget"
            break
        if len(order) == N:
            reason = "exhausted"
            break
        t += 1
        best = S.masked_fill(selected, float("-inf")).max(dim=1)  # ties: first (smallest) index
        g = best.values.mean().item()
        scores.append(g)
        if tau is not None and t == patience:
            threshold = tau * g
        if tau is not None and t > patience and g < threshold:
            sizes.append(0)
            reason = "criterion"
            break
        round_set, value, first = [], {}, {}
        for j, i in enumerate(best.indices.tolist()):
            v = best.values[j].item()
            if i not in value:
                round_set.append(i)
                value[i], first[i] = v, j
            else:
                value[i] = max(value[i], v)
        room = B - len(order)
        if len(round_set) > room:  # keep the best items, in selection order
            keep = set(sorted(round_set, key=lambda i: (-value[i], first[i]))[:room])
            round_set = [i for i in round_set if i in keep]
        order += round_set
        selected[round_set] = True
        sizes.append(len(round_set))

    return CoresetResult(
        indices=torch.tensor(order, dtype=torch.int64),
        round_scores=torch.tensor(scores, dtype=torch.float64),
        round_sizes=torch.tensor(sizes, dtype=torch.int64),
        stop_reason=reason,
        threshold=threshold,
        centroids=C.float(),
        params=dict(k=k, budget=B, tau=tau, patience=patience, metric=metric, seed=seed,
                    n_openset=N, d=U.shape[1], oracle=True),
    )
