"""The run report's figures (matplotlib, PNG): the round-score curve with the threshold and
the stop, the coreset's composition, the top selected images per centroid, the accuracy
comparison. Every file is written whole (temporary file, then rename) or not at all.

matplotlib is an optional dependency (the `plot` extra); `available()` says whether it
is installed, and every function raises ImportError with the fix when it is not."""
from __future__ import annotations

import os
from typing import Dict, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

GROUP_COLOURS = {"target-class": "#1b7837", "dog": "#7fbf7b", "related": "#7fbf7b",
                 "animal": "#c2a5cf", "other": "#bababa"}


def available() -> bool:
    try:
        import matplotlib  # noqa: F401
        return True
    except ImportError:
        return False


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise ImportError("plots need matplotlib: pip install matplotlib (or simcore's [plot] extra)") from None
    matplotlib.use("Agg", force=False)  # files only, no display
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path: str) -> str:
    plt = _pyplot()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}.png"
    try:
        fig.savefig(tmp, dpi=120, bbox_inches="tight")
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def round_scores(scores: Sequence[float], sizes: Sequence[int], threshold: Optional[float],
                 stop_reason: str, patience: Optional[int], path: str) -> str:
    """g_t per round, the threshold tau * g_patience and the round that stopped; items
    selected so far on a second axis."""
    plt = _pyplot()
    scores, sizes = np.asarray(scores, dtype=float), np.asarray(sizes)
    t = np.arange(1, scores.size + 1)
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    ax.plot(t, scores, color="#2166ac", lw=1.5, label="round score $g_t$")
    if threshold is not None:
        ax.axhline(threshold, color="#b2182b", ls="--", lw=1, label=f"threshold {threshold:.4f}")
    if patience is not None and patience <= scores.size:
        ax.axvline(patience, color="#999999", ls=":", lw=1, label=f"patience (round {patience})")
    if scores.size:
        ax.plot([t[-1]], [scores[-1]], "o", color="#b2182b", label=f"stop: {stop_reason} (round {t[-1]})")
    ax.set_xlabel("round")
    ax.set_ylabel("mean similarity to the centroids")
    ax2 = ax.twinx()
    ax2.plot(t, np.cumsum(sizes), color="#4d4d4d", lw=0.8, alpha=0.5)
    ax2.set_ylabel("items selected", color="#4d4d4d")
    ax.legend(loc="best", fontsize=8)
    ax.set_title("SimCore rounds")
    return _save(fig, path)


def composition_bars(shares: Mapping[str, Mapping[str, float]], path: str,
                     title: str = "coreset composition") -> str:
    """One stacked horizontal bar per sampler: its share (%) of each group or folder."""
    plt = _pyplot()
    names = list(shares)
    groups = []
    for s in shares.values():
        groups += [g for g in s if g not in groups]
    fig, ax = plt.subplots(figsize=(7.0, 0.5 * len(names) + 1.4))
    left = np.zeros(len(names))
    cmap = plt.get_cmap("tab20")
    for i, g in enumerate(groups):
        v = np.array([float(shares[n].get(g, 0.0)) for n in names])
        ax.barh(names, v, left=left, color=GROUP_COLOURS.get(g, cmap(i % 20)), label=g)
        for y, (a, w) in enumerate(zip(left, v)):
            if w >= 8:
                ax.text(a + w / 2, y, f"{w:.0f}%", ha="center", va="center", fontsize=7)
        left += v
    ax.set_xlim(0, 100)
    ax.set_xlabel("% of the coreset")
    ax.invert_yaxis()
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.25 if len(names) > 2 else -0.5),
              ncol=min(5, len(groups)), fontsize=7, frameon=False)
    ax.set_title(title)
    return _save(fig, path)


def image_grid(images: Sequence[Sequence[np.ndarray]], path: str, row_labels: Optional[Sequence[str]] = None,
               title: str = "top selected images per centroid", frame_first: bool = False) -> str:
    """A grid: row r holds images[r] (HxWx3 uint8 arrays), e.g. one centroid's nearest picks;
    frame_first draws a frame around each row's first image (e.g. the target anchor)."""
    plt = _pyplot()
    rows = len(images)
    cols = max((len(r) for r in images), default=0)
    if rows == 0 or cols == 0:
        raise ValueError("image_grid needs at least one image")
    fig, axes = plt.subplots(rows, cols, figsize=(0.9 * cols + 0.8, 0.9 * rows + 0.5), squeeze=False)
    for r in range(rows):
        for c in range(cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(frame_first and c == 0)
                spine.set_color("#1b7837")
                spine.set_linewidth(2.5)
            if c < len(images[r]):
                ax.imshow(images[r][c], interpolation="nearest")
        if row_labels is not None:
            axes[r][0].set_ylabel(row_labels[r], rotation=0, ha="right", va="center", fontsize=7)
    fig.suptitle(title, fontsize=9)
    return _save(fig, path)


Bar = Union[float, Tuple[float, float]]


def accuracy_bars(bars: Mapping[str, Bar], path: str, title: str = "accuracy",
                  ylabel: str = "top-1 accuracy (%)") -> str:
    """One bar per pretraining variant: a value, or (mean, std) drawn with an error bar."""
    plt = _pyplot()
    names = list(bars)
    vals = [b if isinstance(b, (int, float)) else b[0] for b in bars.values()]
    errs = [0.0 if isinstance(b, (int, float)) else b[1] for b in bars.values()]
    fig, ax = plt.subplots(figsize=(max(4.0, 1.1 * len(names) + 1), 3.6))
    colours = ["#1b7837" if "SimCore" in n else "#bababa" if "rand" in n else "#2166ac" for n in names]
    ax.bar(range(len(names)), vals, yerr=errs if any(errs) else None, color=colours, capsize=3)
    for i, (v, e) in enumerate(zip(vals, errs)):
        ax.text(i, v + e + 0.5, f"{v:.1f}", ha="center", va="bottom", fontsize=8)  # above the error bar
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0.0, max([v + e for v, e in zip(vals, errs)] + [1.0]) + 5)  # from zero: bar heights compare as ratios
    ax.set_title(title)
    return _save(fig, path)


def shares_of(labels: Sequence[str], order: Optional[Sequence[str]] = None) -> Dict[str, float]:
    """{label: % of the items} (in `order` when given, else by decreasing count)."""
    labels = np.asarray(labels)
    if labels.size == 0:
        return {}
    names, counts = np.unique(labels, return_counts=True)
    share = {str(n): 100.0 * c / labels.size for n, c in zip(names, counts)}
    keys = list(order) if order is not None else sorted(share, key=lambda n: -share[n])
    return {k: share.get(k, 0.0) for k in keys}
