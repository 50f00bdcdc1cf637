"""The run report: RUN/report/report.md and its plots (round scores, coreset composition,
top selected images per centroid, accuracy comparison). Plots need matplotlib; without it
the report says so and keeps its tables."""
from __future__ import annotations

import csv
import os
import time
from typing import Dict, List, Optional

import numpy as np
import torch
import torch.nn.functional as F

from . import plots
from .data import parse_spec


def openset_labels(run) -> Optional[np.ndarray]:
    """Each open-set row's folder (its first folder under the open-set root), or None when
    the open-set is a torchvision dataset (no folders to speak of)."""
    labels: List[str] = []
    for i, spec in enumerate(run.cfg.openset):
        kind, name, _ = parse_spec(spec)
        if kind == "torchvision":
            return None
        with open(run.path(run.features(), f"openset_{i}.paths.txt")) as f:
            paths = [line.rstrip("\n") for line in f]
        if kind == "folder":
            labels += [os.path.relpath(p, name).split(os.sep)[0] for p in paths]
        else:
            labels += [os.path.basename(os.path.dirname(p)) for p in paths]
    return np.array(labels)


def read_groups(path: str) -> Dict[str, str]:
    """folder -> group from a TSV with `folder` and `group` columns (openset_classes.tsv)."""
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
    except (UnicodeDecodeError, csv.Error) as e:
        raise ValueError(f"{path}: not a readable tab-separated text file ({e})") from None
    if not rows or not {"folder", "group"} <= set(rows[0]):
        raise ValueError(f"{path}: expected a tab-separated file with 'folder' and 'group' columns")
    return {r["folder"]: r["group"] for r in rows}


def random_indices(run, size: int, n: int) -> np.ndarray:
    """The baseline's random subset if it ran, else a draw of the same size (seeded)."""
    if run.enabled("baseline") and run.stage_record("baseline").get("status") == "done":
        return np.load(run.path("baseline", "random_indices.npy"))
    return np.sort(np.random.default_rng(run.cfg.seed).choice(n, size=size, replace=False))


def reference_selections(run, size: int) -> Dict[str, np.ndarray]:
    """Nearest-to-X (kNN) and nearest-to-mean selections of `size` items from the features
    SimCore read: where they beat SimCore, the selection left separable items behind; where
    they do no better, the encoder does not separate the target."""
    from .samplers import nearest_to_mean, nearest_to_target
    X = np.load(run.path(run.features(), "target.npy"))
    shards = [run.path(run.features(), f"openset_{i}.npy") for i in range(len(run.cfg.openset))]
    return {"nearest to X": nearest_to_target(X, shards, size), "nearest to mean": nearest_to_mean(X, shards, size)}


def composition(run, indices: np.ndarray) -> Dict[str, Dict[str, float]]:
    """{"group": {sampler: {group: %}}, "folder": {...}}: SimCore, the reference samplers of
    the same size (by group) and random."""
    labels = openset_labels(run)
    if labels is None:
        return {}
    rand = random_indices(run, indices.size, labels.size)
    out = {}
    if run.cfg.openset_groups:
        groups = read_groups(run.cfg.openset_groups)
        g = np.array([groups.get(x, "unlisted") for x in labels])
        order = [x for x in ("target-class", "dog", "related", "animal", "other") if x in set(g)]
        order += sorted(set(g) - set(order))
        out["group"] = {"SimCore": plots.shares_of(g[indices], order)}
        if indices.size:
            out["group"].update({name: plots.shares_of(g[ix], order)
                                 for name, ix in reference_selections(run, indices.size).items()})
        out["group"].update({"random": plots.shares_of(g[rand], order), "open-set": plots.shares_of(g, order)})
    top = list(plots.shares_of(labels[indices]))[:8]
    fold = lambda ls: np.where(np.isin(ls, top), ls, "(other folders)")  # noqa: E731
    order = top + ["(other folders)"]
    out["folder"] = {"SimCore": plots.shares_of(fold(labels[indices]), order),
                     "random": plots.shares_of(fold(labels[rand]), order)}
    return out


def _load_image(path: str, size: int = 64) -> np.ndarray:
    from PIL import Image
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB").resize((size, size), Image.NEAREST))


def top_images(run, indices: np.ndarray, centroids: int = 8, per_row: int = 7) -> Optional[list]:
    """For `centroids` centroids (those nearest to the most coreset items): the target
    image nearest to it, then its `per_row` nearest images of the whole coreset."""
    paths = run.openset_paths()
    tgt_paths = open(run.path(run.features(), "target.paths.txt")).read().splitlines()
    if not (paths and os.path.isfile(paths[0]) and os.path.isfile(tgt_paths[0])) or indices.size == 0:
        return None
    C = torch.from_numpy(np.load(run.path("centroids", "centroids.npy"))).float()
    U = _rows(run, indices)
    X = F.normalize(torch.from_numpy(np.load(run.path(run.features(), "target.npy")).astype(np.float32)), dim=1)
    sim = F.normalize(U, dim=1) @ C.T  # [B, k]
    counts = torch.bincount(sim.argmax(1), minlength=C.shape[0])
    busiest = [c for c in counts.argsort(descending=True)[:centroids].tolist() if counts[c] > 0]
    rows, labels = [], []
    for c in busiest:
        best = sim[:, c].topk(min(per_row, sim.shape[0])).indices  # ranked over the whole coreset
        anchor = int((X @ C[c]).argmax())
        rows.append([_load_image(tgt_paths[anchor])] + [_load_image(paths[int(indices[i])]) for i in best])
        labels.append(f"centroid {c}")
    return [rows, labels]


def _rows(run, indices: np.ndarray) -> torch.Tensor:
    """Feature rows of the open-set at global `indices` (shards concatenated)."""
    out, start = [], 0
    order = np.argsort(indices)
    for i in range(len(run.cfg.openset)):
        shard = np.load(run.path(run.features(), f"openset_{i}.npy"), mmap_mode="r")
        sel = indices[order][(indices[order] >= start) & (indices[order] < start + shard.shape[0])]
        out.append(np.asarray(shard[sel - start], dtype=np.float32))
        start += shard.shape[0]
    rows = np.concatenate(out)
    back = np.empty_like(order)
    back[order] = np.arange(order.size)
    return torch.from_numpy(rows[back])


def _table(header: List[str], rows: List[List[str]]) -> List[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def _retrieval(run) -> str:
    rec = run.stage_record("extract")
    spec = run.cfg.retrieval_encoder
    what = "the pretrain stage's encoder (SSL on X)" if spec == "pretrain" else f"`{spec}`"
    white = f", PCA-whitened to {run.cfg.whiten} dimensions (fitted on the open-set)" if run.cfg.whiten else ""
    return f"{what} at {rec.get('encoder_size', '?')} px, {rec.get('dim', '?')}-d features{white}"


def _resampled(run) -> List[str]:
    """The re-selections during retraining (--resample): one row each."""
    rows = run.stage_record("retrain").get("resampled") or []
    if not rows:
        return []
    steps = run.stage_record("retrain").get("steps")
    out = ["### Re-selections during retraining", "",
           f"Retraining's {steps} steps ran in {len(rows) + 1} equal segments: the first on the coreset above, "
           "each later one on a coreset the retraining encoder re-selected from the whole open-set at the "
           "segment's first step (the same k, budget, tau and patience); X + SimCore below is that encoder.", ""]
    out += _table(["re-selection", "at step", "images", "rounds", "stopped by", "kept from the previous coreset"],
                  [[str(i), str(r["step"]), str(r["items"]), str(r["rounds"]), r["stop_reason"],
                    f"{r['overlap']} ({100 * r['overlap_fraction']:.1f}%)"] for i, r in enumerate(rows, 1)])
    return out + [""]


def write_report(run) -> dict:
    from simcore_ext import CoresetResult
    cfg = run.cfg
    r = CoresetResult.load(run.path("select", "coreset.npz"))
    idx = r.indices.numpy()
    sel = run.stage_record("select")
    out = ["# SimCore run", "", f"Written {time.strftime('%Y-%m-%d %H:%M:%S')} by `simcore run`.", "",
           f"- target X: `{cfg.target}` ({run.stage_record('pretrain').get('images', '?')} images)",
           f"- open-set U: {', '.join(f'`{s}`' for s in cfg.openset)} ({sel['openset']} images)",
           f"- encoder: {cfg.method} {cfg.arch}, {cfg.epochs} epochs on X "
           f"({run.stage_record('pretrain').get('steps')} optimizer steps of batch {cfg.batch_size}; "
           f"every retraining runs the same steps), {cfg.image_size} px, seed {cfg.seed}"
           + (f"; X + SimCore's coreset re-selected {cfg.resample} time(s) during its retraining"
              if cfg.resample else ""),
           f"- retrieval encoder (whose features select): {_retrieval(run)}",
           f"- SimCore: k = {run.stage_record('centroids').get('k')}, budget {cfg.budget or '50 x |X|'}, "
           f"tau {cfg.tau}, patience {cfg.patience}", "",
           "## Selection", "",
           f"{sel['items']} of {sel['openset']} open-set images ({100 * sel['items'] / sel['openset']:.2f}%) "
           f"in {sel['rounds']} rounds; stopped by the {sel['stop_reason']}"
           + (f" (threshold {sel['threshold']:.4f})" if sel["threshold"] is not None else "")
           + f"; {sel['select_seconds']:.2f} s on {sel['device']}.", ""]
    figures = {}
    have_plots = plots.available()
    if have_plots:
        figures["rounds"] = plots.round_scores(r.round_scores.numpy(), r.round_sizes.numpy(), r.threshold,
                                               r.stop_reason, cfg.patience if cfg.tau is not None else None,
                                               run.path("report", "rounds.png"))
        out += ["![round scores](rounds.png)", ""]
    comp = composition(run, idx)
    for kind, shares in comp.items():
        cols = list(next(iter(shares.values())))
        out += [f"### Composition by open-set {kind}", ""]
        if kind == "group":
            out += ["Beside SimCore, selections of the same size from the same features: the items nearest to "
                    "any target image (kNN) and nearest to the target's mean. If they do no better than "
                    "SimCore, the encoder does not separate the target's relatives; if they do, the "
                    "selection does not use what it separates.", ""]
        out += _table(["sampler"] + cols, [[name] + [f"{v[c]:.1f}%" for c in cols] for name, v in shares.items()])
        out.append("")
        if have_plots:
            figures[f"composition_{kind}"] = plots.composition_bars(
                shares, run.path("report", f"composition_{kind}.png"), title=f"coreset composition by {kind}")
            out += [f"![composition by {kind}](composition_{kind}.png)", ""]
    if have_plots:
        grid = top_images(run, idx)
        if grid is not None:
            figures["top_images"] = plots.image_grid(grid[0], run.path("report", "top_images.png"), grid[1],
                                                     title="per centroid: nearest target image, then its nearest "
                                                           "selected open-set images", frame_first=True)
            out += ["### Top selected images per centroid", "",
                    "Framed, first column: the target image nearest to the centroid; then the coreset's "
                    "images nearest to it.", "", "![top images](top_images.png)", ""]
    out += _resampled(run)
    ev = run.stage_record("eval").get("results") if run.enabled("eval") else None
    if ev:
        out += ["## Evaluation on the test split", "", f"Test: `{cfg.test}`; linear probe {cfg.linear_epochs} "
                "epochs on frozen features of X; weighted kNN (k = 20, 200).", ""]
        out += _table(["pretraining data", "linear top-1", "linear mean/class", "kNN k=20", "kNN k=200"],
                      [[name, f"{v['linear']:.1f}", f"{v['linear_mean_per_class']:.1f}", f"{v['knn20']:.1f}",
                        f"{v['knn200']:.1f}"] for name, v in ev.items()])
        out.append("")
        tuned = [f for f in (next(iter(ev.values())).get("finetune") or {})]
        if tuned:
            out += ["### Semi-supervised fine-tuning", "",
                    f"The whole network (each encoder's backbone and a new linear head) fine-tuned for "
                    f"{cfg.finetune_epochs} epochs on a class-balanced share of X's labels (seed {cfg.seed}; "
                    "random-resized crop + flip), final epoch's accuracy on the test split.", ""]
            out += _table(["pretraining data"] + [f"{100 * float(f):g}% labels: top-1 (mean/class)" for f in tuned],
                          [[name] + [f"{v['finetune'][f]['top1']:.1f} ({v['finetune'][f]['mean_per_class']:.1f})"
                                     for f in tuned] for name, v in ev.items()])
            out.append("")
        if have_plots:
            figures["accuracy"] = plots.accuracy_bars({k: v["linear"] for k, v in ev.items()},
                                                      run.path("report", "accuracy.png"),
                                                      title="linear top-1 on the test split")
            out += ["![accuracy](accuracy.png)", ""]
    if not have_plots:
        out += ["(No plots: matplotlib is not installed; `pip install matplotlib`.)", ""]
    out += ["## Stages", ""]
    out += _table(["stage", "seconds"], [[s, f"{rec.get('seconds', 0):.1f}"] for s, rec in run.manifest["stages"].items()
                                         if rec.get("status") == "done"])
    from .pipeline import _write_lines
    _write_lines(out, run.path("report", "report.md"))
    return dict(outputs=["report/report.md"] + [os.path.relpath(p, run.out) for p in figures.values()],
                composition=comp)
