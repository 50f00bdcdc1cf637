"""The paper's Table (OpenSSL setting) in miniature on real photographs: tinyopenssl's six
dog breeds as the fine-grained target X, its 50,300-image open-set OS as U.

    python benchmarks/openssl_table.py --data-dir ../shared/data/tinyopenssl [--steps 420]

Rows, as in the paper, every one pretrained with SimCLR for the same number of optimizer
steps from the same initialisation seed: X; OS; X+OS; X+OS_rand (1%, 5%, and the size the
stop criterion chose); X+OS_SimCore (1%, 5%, stop criterion); X+OS_oracle at the same sizes
(the open-set's target-class and dog images: the paper's motivating experiment, the ceiling
of any sampler), and the share of the oracle's gain each sampler recovers. The SimCore
retrieval encoder is the X row's encoder (pretrained on X alone, as in the paper) or
--retrieval-encoder (any simcore.encoders spec); centroids and selection see features only,
never the open-set folders. Beside each SimCore coreset, the precision of the reference
samplers of the same size on the same features (nearest to X, nearest to X's mean). Each encoder is scored on dogs/test by
weighted kNN (k = 20, 200) and a linear probe fit on dogs/train, and, for choosing settings
such as the step count without dogs/test, by a probe fit on 80% of dogs/train and scored on
the other 20% (`val_linear`, the "held out" line); each sampler by its
selection precision: the share of its coreset in the `target-class` and `dog` groups of
openset_classes.tsv. A reference sampler runs SimCore on raw 8x8 pixels, and an analysis
(--analysis-seeds) measures the 1% selection's precision with other retrieval encoders:
the X+OS row's, and one trained with X's labels (at each --analysis-sizes px); and, on every
seed's cached features, its precision as k varies (--analysis-k).

Runs are resumable: every finished (row, seed) lands in WORK_DIR/results.json, and
interrupted pretrainings resume from their last epoch. Writes benchmarks/results/
openssl_table.{json,md} and PNGs; hyper-parameters come from ssl_dogs.py's validation-split
choice (batch 256, lr 0.3); nothing is tuned on dogs/test."""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F

from simcore.data import load_images
from simcore.evaluate import features, knn, linear_probe
from simcore.extract import extract, load_backbone
from simcore.samplers import nearest_to_mean, nearest_to_target
from simcore.train import TrainConfig, pretrain
from simcore_ext import select_coreset

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
# (name, what it pretrains on): sampler names refer to coresets drawn per seed
ROWS = [("X", ["X"]), ("X+OS_SimCore (1%)", ["X", "simcore-1%"]), ("X+OS_rand (1%)", ["X", "random-1%"]),
        ("X+OS_oracle (1%)", ["X", "oracle-1%"]),
        ("X+OS_SimCore (stop)", ["X", "simcore-stop"]), ("X+OS_rand (stop size)", ["X", "random-stop"]),
        ("X+OS_oracle (stop size)", ["X", "oracle-stop"]),
        ("X+OS_SimCore (5%)", ["X", "simcore-5%"]), ("X+OS_rand (5%)", ["X", "random-5%"]),
        ("X+OS_oracle (5%)", ["X", "oracle-5%"]),
        ("X+OS", ["X", "OS"]), ("OS", ["OS"])]
LABELS = ("1%", "stop", "5%")
VAL_FRACTION = 0.2  # of dogs/train held out for the val_linear score
GOOD_GROUPS = ("target-class", "dog")


def _write_json(obj, path):
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
    os.replace(tmp, path)


def _groups(data_dir):
    with open(os.path.join(data_dir, "openset_classes.tsv")) as f:
        return {r["folder"]: r["group"] for r in csv.DictReader(f, delimiter="\t")}


def _folders(paths, openset_dir):
    return np.array([os.path.relpath(p, openset_dir).split(os.sep)[0] for p in paths])


def precision(indices, folder_of, group_of):
    """Share (%) of a coreset in each group, and in GOOD_GROUPS together."""
    groups = np.array([group_of.get(f, "unlisted") for f in folder_of[np.asarray(indices)]])
    share = {g: 100.0 * float((groups == g).mean()) for g in sorted(set(group_of.values()) | set(groups))}
    share["precision"] = sum(share.get(g, 0.0) for g in GOOD_GROUPS)
    return share


def samplers(args, seed, work, openset_dir, x_ckpt, x_dir, folder_of, group_of, raw):
    """Coresets of this seed: SimCore (1%, 5%, stop) on the retrieval encoder's features
    (the X row's, or --retrieval-encoder), random of the same sizes, the oracle (the
    open-set's target-class and dog images, as many as there are, at most the size), the
    reference samplers nearest to X and to X's mean, and SimCore on raw pixels (reference).
    Cached in WORK/seedS/coresets[-ENCODER].json; sets added later join a cached file."""
    tag = _features_tag(args)
    path = os.path.join(work, f"coresets{tag}{_white_tag(args)}.json")
    out = dict(sets={}, info={}, precision={})
    if os.path.exists(path):
        with open(path) as f:
            out = json.load(f)
    sets, info = out["sets"], out["info"]
    feats = {}
    encoder = None
    for name, data in (("X", x_dir), ("U", openset_dir)):
        f = os.path.join(work, f"features{tag}-{name}.npy")
        if not os.path.exists(f):
            if encoder is None:
                from simcore.encoders import load_encoder
                spec = args.retrieval_encoder or f"checkpoint:{x_ckpt}"
                encoder = load_encoder(spec, args.retrieval_size)
            extract(encoder, data, f, dtype="float32", cache_dir=args.cache_dir, progress=False)
        feats[name] = f
    with open(os.path.join(work, f"features{tag}-U.paths.txt")) as f:
        assert [line.rstrip("\n") for line in f] == raw["paths"], "feature rows and images differ"
    X, N = np.load(feats["X"]), len(raw["paths"])
    if args.whiten:  # PCA whitening fitted on U's features (simcore.whiten); every sampler reads it
        from simcore.whiten import fit_whitening, whiten_file
        w = fit_whitening([feats["U"]], args.whiten)
        white = os.path.join(work, f"features{tag}{_white_tag(args)}-U.npy")
        if not os.path.exists(white):
            whiten_file(feats["U"], white, w)
        X, feats = w.apply(X), dict(feats, U=white)
    good = np.flatnonzero(np.isin([group_of.get(x, "unlisted") for x in folder_of], GOOD_GROUPS))
    for label, budget, tau in (("1%", 0.01, None), ("5%", 0.05, None), ("stop", None, 0.95)):
        if f"simcore-{label}" not in sets:
            t0 = time.perf_counter()
            r = select_coreset(X, feats["U"], k=args.k, budget=budget, tau=tau, seed=seed, progress=False)
            sets[f"simcore-{label}"] = r.indices.tolist()
            info[f"simcore-{label}"] = dict(items=len(r), rounds=r.rounds, stop_reason=r.stop_reason,
                                            seconds=time.perf_counter() - t0)
        n = len(sets[f"simcore-{label}"])
        if f"random-{label}" not in sets:
            rng = np.random.default_rng(seed * 7919 + n)
            sets[f"random-{label}"] = sorted(rng.choice(N, size=n, replace=False).tolist())
        if f"oracle-{label}" not in sets:  # the paper's motivating experiment: the right images
            rng = np.random.default_rng(seed * 7919 + n + 1)
            sets[f"oracle-{label}"] = sorted(rng.choice(good, size=min(n, good.size), replace=False).tolist())
        for name, fn in (("nearest-X", nearest_to_target), ("nearest-mean", nearest_to_mean)):
            if f"{name}-{label}" not in sets:
                sets[f"{name}-{label}"] = fn(X, feats["U"], n).tolist()
    if "raw-pixels-1%" not in sets:
        r = select_coreset(raw["X"], raw["U"], k=args.k, budget=0.01, tau=None, seed=seed, progress=False)
        sets["raw-pixels-1%"] = r.indices.tolist()
    out["precision"] = {name: precision(ix, folder_of, group_of) for name, ix in sets.items()}
    _write_json(out, path)
    return out


def _features_tag(args) -> str:
    """Names the selection features: the X row's depend on its steps, another encoder's not."""
    return _encoder_tag(args) or ("" if args.steps == 420 else f"-{args.steps}steps")


def _white_tag(args) -> str:
    return f"-white{args.whiten}" if args.whiten else ""


def _encoder_tag(args) -> str:
    """'' for the X row's encoder (the cached files of earlier runs), else a file-name tag."""
    if not args.retrieval_encoder:
        return ""
    return "-" + "".join(c if c.isalnum() or c in "-." else "_" for c in args.retrieval_encoder) + \
        (f"-{args.retrieval_size}px" if args.retrieval_size else "")


def raw_pixels(x_dir, openset_dir, cache_dir):
    """8x8 area-downsampled pixels (the reference sampler's features)."""
    def px(spec):
        s = load_images(spec, 32, cache_dir=cache_dir)
        return F.adaptive_avg_pool2d(s.images.float(), 8).flatten(1), s.paths
    X, _ = px(x_dir)
    U, paths = px(openset_dir)
    return dict(X=X, U=U, paths=paths)


def row_tag(args, parts) -> str:
    """Rows that train on a coreset depend on the retrieval encoder (the sizes too)."""
    return _encoder_tag(args) + _white_tag(args) if any(p not in ("X", "OS") for p in parts) else ""


def row_dir(args, work, name, tag=""):
    """A row's run folder (other step counts get their own)."""
    return os.path.join(work, name.replace(" ", "_").replace("%", "pc").replace("(", "").replace(")", "") + tag
                        + ("" if args.steps == 420 else f"-{args.steps}steps"))


def run_row(args, seed, name, parts, work, x_dir, openset_dir, coresets, train, test):
    tag, ftag = row_tag(args, parts), _features_tag(args)
    data = []
    for part in parts:
        if part == "X":
            data.append(x_dir)
        elif part == "OS":
            data.append(openset_dir)
        else:
            lst = os.path.join(work, f"{part}{ftag}{_white_tag(args)}.txt")  # the coreset of these features
            if not os.path.exists(lst):
                with open(os.path.join(work, f"features{ftag}-U.paths.txt")) as f:
                    paths = [line.rstrip("\n") for line in f]
                with open(lst + ".tmp", "w") as f:
                    f.writelines(paths[i] + "\n" for i in coresets["sets"][part])
                os.replace(lst + ".tmp", lst)
            data.append(lst)
    out = row_dir(args, work, name, tag)
    cfg = TrainConfig(data=data, out=out, method="simclr", arch=args.arch, steps=args.steps,
                      warmup_steps=args.steps // 10, batch_size=args.batch_size, lr=args.lr,
                      seed=seed, cache_dir=args.cache_dir)
    t0 = time.perf_counter()
    pretrain(cfg, resume=os.path.exists(os.path.join(out, "checkpoint.pt")), progress=False)
    wall = time.perf_counter() - t0
    backbone, _ = load_backbone(os.path.join(out, "checkpoint.pt"), torch.device("cpu"))
    ftr, fte = features(backbone, train.images, 32), features(backbone, test.images, 32)
    k = knn(ftr, train.labels, fte, test.labels)
    lin = linear_probe(ftr, train.labels, fte, test.labels, seed=seed)
    # for choosing settings (steps, regime) without dogs/test: a probe fit on 80% of dogs/train,
    # scored on the other 20%
    val = linear_probe(ftr, train.labels, fte, test.labels, seed=seed, val_fraction=VAL_FRACTION)["val_top1"]
    images = sum(len(load_images(d, 32, cache_dir=args.cache_dir)) for d in data)
    return dict(row=name, seed=seed, images=images, knn20=k[20], knn200=k[200], linear=lin["top1"],
                val_linear=val, train_seconds=wall)


def fmt_mean(values):
    """mean (+- std where there are several values)."""
    m, s = mean_std(list(values))
    return f"{m:.1f}" if s == 0 else f"{m:.1f} ± {s:.1f}"


def mean_std(values):
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _label(sampler: str) -> str:
    return sampler.rsplit("-", 1)[1]  # simcore-1% -> 1%


def gain_recovered(rows_by_name, metric: str, sampler_row: str, oracle_row: str, x_row: str = "X"):
    """(X+sampler - X) / (X+oracle - X) of the seed means; None where the oracle does not beat X."""
    m = {r: statistics.mean(v[metric] for v in rows_by_name[r]) for r in (sampler_row, oracle_row, x_row)
         if rows_by_name.get(r)}
    if len(m) < 3 or m[oracle_row] - m[x_row] <= 0:
        return None
    return (m[sampler_row] - m[x_row]) / (m[oracle_row] - m[x_row])


def table(results, coresets, args, base_rate):
    """The markdown table: accuracy rows (mean +- std over seeds), sampler precision and the
    share of the oracle's gain each sampler recovers."""
    fmt = lambda v: "{:.1f} ± {:.1f}".format(*mean_std(v))  # noqa: E731
    seeds = sorted({r["seed"] for r in results.values()})
    encoder = f"`{args.retrieval_encoder}`" + (f" at {args.retrieval_size} px" if args.retrieval_size else "") \
        if args.retrieval_encoder else "the X row"
    encoder += f", PCA-whitened to {args.whiten} dimensions" if getattr(args, "whiten", 0) else ""
    lines = [f"SimCLR {args.arch}, {args.steps} optimizer steps of batch {args.batch_size} per row "
             f"(lr {args.lr}, 32 px), seeds {seeds}; dogs/train (1,800) + open-set (50,300) -> "
             f"dogs/test (300, 6 breeds); SimCore k = {args.k}, retrieval encoder = {encoder}. "
             "Oracle = the open-set's target-class and dog images (3,200 in all), as many as the "
             "sampler's size allows. Gain recovered = (X+sampler - X) / (X+oracle - X), linear / kNN k=20, "
             "where the oracle beats X.", "",
             "| pretraining data | images | linear top-1 | kNN k=20 | kNN k=200 | selection precision | gain recovered |",
             "|---|---|---|---|---|---|---|"]
    by_name = {name: [r for r in results.values() if r["row"] == name] for name, _ in ROWS}
    for name, parts in ROWS:
        rs = by_name[name]
        if not rs:
            continue
        sampler = next((p for p in parts if p not in ("X", "OS")), None)
        prec = [coresets[str(r["seed"])]["precision"][sampler]["precision"] for r in rs] if sampler else None
        gain = "-"
        if sampler and not sampler.startswith("oracle"):
            oracle = next(n for n, p in ROWS if p == ["X", f"oracle-{_label(sampler)}"])
            g = [gain_recovered(by_name, m, name, oracle) for m in ("linear", "knn20")]
            gain = " / ".join("-" if x is None else f"{x:.2f}" for x in g)
        lines.append(f"| {name} | {statistics.mean(r['images'] for r in rs):,.0f} | "
                     f"{fmt([r['linear'] for r in rs])} | {fmt([r['knn20'] for r in rs])} | "
                     f"{fmt([r['knn200'] for r in rs])} | {fmt(prec) + '%' if prec else '-'} | {gain} |")
    held, lacking = [], []  # results written before the held-out score lack it
    for name, _ in ROWS:
        if by_name[name]:
            if all("val_linear" in r for r in by_name[name]):
                held.append((name, [r["val_linear"] for r in by_name[name]]))
            else:
                lacking.append(name)
    if held:
        lines += ["", f"Held out of dogs/train ({VAL_FRACTION:.0%}; a probe fit on the rest), the score for choosing "
                  "settings: linear top-1 " + ", ".join(f"{name} {fmt_mean(v)}" for name, v in held) + "."]
    if lacking:
        lines += ["", "No held-out score for " + ", ".join(lacking) + ": scored before it was recorded "
                  "(delete their entries in WORK_DIR/results.json to rescore; the trained encoders are reused)."]
    raw = [c["precision"]["raw-pixels-1%"]["precision"] for c in coresets.values()]
    lines += ["", f"Reference sampler, SimCore on raw 8x8 pixels (1%): precision {fmt(raw)}%. "
              f"Precision = share of the coreset in the open-set's `target-class` and `dog` groups "
              f"(the whole open-set: {base_rate:.1f}%)."]
    for label in LABELS:
        per = [c["precision"][f"simcore-{label}"] for c in coresets.values()]
        lines.append(f"SimCore ({label}): " + ", ".join(
                     f"{g} {fmt([p.get(g, 0.0) for p in per])}%" for g in ("target-class", "dog", "animal", "other"))
                     + "; "
                     f"{statistics.mean(c['info'][f'simcore-{label}']['items'] for c in coresets.values()):,.0f} items.")
        ref = {name: [c["precision"][f"{name}-{label}"]["precision"] for c in coresets.values()
                      if f"{name}-{label}" in c["precision"]] for name in ("nearest-X", "nearest-mean")}
        if all(ref.values()):
            lines.append(f"Same size, same features ({label}): nearest to X {fmt(ref['nearest-X'])}%, nearest to "
                         f"X's mean {fmt(ref['nearest-mean'])}% precision.")
    return "\n".join(lines)


def _precision_with(args, seed, work, ckpt, tag, x_dir, openset_dir, folder_of, group_of, path):
    """SimCore (1%) precision with checkpoint `ckpt` as the retrieval encoder (features
    cached as WORK/features-TAG-{X,U}.npy), written to `path`."""
    feats = {}
    for name, data in (("X", x_dir), ("U", openset_dir)):
        out = os.path.join(work, f"features-{tag}-{name}.npy")
        if not os.path.exists(out):
            extract(ckpt, data, out, dtype="float32", cache_dir=args.cache_dir, progress=False)
        feats[name] = np.load(out, mmap_mode="r")
    r = select_coreset(feats["X"], os.path.join(work, f"features-{tag}-U.npy"), k=args.k, budget=0.01, tau=None,
                       seed=seed, progress=False)
    out = precision(r.indices.numpy(), folder_of, group_of)
    _write_json(out, path)
    return out


def retrieval_ablation(args, seed, work, x_dir, openset_dir, folder_of, group_of):
    """Analysis, not a paper row: SimCore (1%) precision when the retrieval encoder is the
    X+OS row's encoder (same steps, 52k images) instead of the X row's. Cached."""
    path = os.path.join(work, "retrieval_xos.json")
    ckpt = os.path.join(row_dir(args, work, "X+OS"), "checkpoint.pt")
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    if not os.path.exists(ckpt):
        return None
    return _precision_with(args, seed, work, ckpt, "xos", x_dir, openset_dir, folder_of, group_of, path)


def supervised_retrieval(args, seed, work, x_dir, openset_dir, folder_of, group_of, size=32):
    """Analysis, not a paper row: SimCore (1%) precision when the retrieval encoder is
    trained with X's labels (cross-entropy, 30 epochs, crop + flip) on `size` px images, an
    upper reference for what a discriminative encoder lets the same sampler do. Open-set
    labels are still never seen. Cached."""
    suffix = "" if size == 32 else f"-{size}px"
    path = os.path.join(work, f"retrieval_supervised{suffix}.json")
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    from simcore.augment import Augment, augment
    from simcore.checkpoint import save_checkpoint
    from simcore.models import build_backbone
    ckpt = os.path.join(work, f"supervised{suffix}", "checkpoint.pt")
    if not os.path.exists(ckpt):
        train = load_images(x_dir, size, cache_dir=args.cache_dir)
        torch.manual_seed(seed)
        backbone = build_backbone(args.arch, small_images=True)
        head = torch.nn.Linear(backbone.feature_dim, len(train.classes))
        params = list(backbone.parameters()) + list(head.parameters())
        opt = torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True)
        epochs, bs, n = 30, 128, len(train)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, 0.1, total_steps=epochs * (n // bs))
        aug = Augment(size=size, scale=(0.35, 1.0), jitter_p=0.0, gray_p=0.0)
        g = torch.Generator().manual_seed(seed)
        backbone.train()
        for _ in range(epochs):
            order = torch.randperm(n, generator=g)
            for a in range(0, n - bs + 1, bs):
                i = order[a:a + bs]
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    loss = F.cross_entropy(head(backbone(augment(train.images[i], aug, g))).float(), train.labels[i])
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
        save_checkpoint(ckpt, model={f"backbone.{k}": v for k, v in backbone.state_dict().items()},
                        config=dict(arch=args.arch, image_size=size))
    return _precision_with(args, seed, work, ckpt, f"sup{suffix}", x_dir, openset_dir, folder_of, group_of, path)


def k_analysis(args, seed, work, folder_of, group_of):
    """Analysis, not a paper row: SimCore (1%) precision as k varies, with the X row's
    encoder and with the supervised one (their cached features). Cached per k."""
    path = os.path.join(work, "retrieval_k.json")
    out = {}
    if os.path.exists(path):
        with open(path) as f:
            out = json.load(f)
    for tag, prefix in (("X encoder", "features"), ("supervised-on-X encoder", "features-sup")):
        X, U = (os.path.join(work, f"{prefix}-{s}.npy") for s in ("X", "U"))
        if not (os.path.exists(X) and os.path.exists(U)):
            continue
        for k in args.analysis_k:
            if str(k) not in out.setdefault(tag, {}):
                r = select_coreset(np.load(X), U, k=k, budget=0.01, tau=None, seed=seed, progress=False)
                out[tag][str(k)] = precision(r.indices.numpy(), folder_of, group_of)
    _write_json(out, path)
    return out


def plots(results, coresets, prefix):
    from simcore.plots import accuracy_bars, composition_bars
    bars = {}
    for name, _ in ROWS:
        rs = [r["linear"] for r in results.values() if r["row"] == name]
        if rs:
            bars[name] = mean_std(rs)
    accuracy_bars(bars, f"{prefix}_linear.png", title="linear top-1 on dogs/test (mean ± std over seeds)")
    shares = {}
    for name in ("simcore-1%", "random-1%", "simcore-5%", "random-5%", "simcore-stop", "random-stop",
                 "raw-pixels-1%"):
        shares[name] = {g: statistics.mean(c["precision"][name].get(g, 0.0) for c in coresets.values())
                        for g in ("target-class", "dog", "animal", "other")}
    composition_bars(shares, f"{prefix}_composition.png", title="coreset composition by open-set group")


def main():
    ap = argparse.ArgumentParser(formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--data-dir", required=True, help="the tinyopenssl folder")
    ap.add_argument("--steps", type=int, default=420, help="optimizer steps of every row (60 X-epochs)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--arch", default="resnet18-w0.25")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--lr", type=float, default=0.3)
    ap.add_argument("--k", type=int, default=100, help="SimCore centroids")
    ap.add_argument("--rows", nargs="+", default=None, choices=[name for name, _ in ROWS], metavar="ROW",
                    help="only these rows (default: all); the X row always runs: it is the retrieval encoder")
    ap.add_argument("--analysis-seeds", type=int, nargs="*", default=[0],
                    help="seeds of the retrieval-encoder analysis (X+OS and supervised-on-X encoders)")
    ap.add_argument("--analysis-k", type=int, nargs="*", default=[1, 10, 30, 100, 300, 1000],
                    help="k values of the SimCore (1%%) precision analysis (analysis seeds)")
    ap.add_argument("--analysis-sizes", type=int, nargs="*", default=[32, 64],
                    help="image sizes (px) of the supervised-on-X retrieval encoder (analysis seeds)")
    ap.add_argument("--retrieval-encoder", default=None, metavar="SPEC",
                    help="select with this encoder (simcore.encoders: a checkpoint, torchvision:NAME[:FILE], "
                    "efficientnet-lite0|1|2) instead of the X row's")
    ap.add_argument("--retrieval-size", type=int, default=None, metavar="PX", help="its input size")
    ap.add_argument("--whiten", type=int, default=0, metavar="D",
                    help="PCA-whiten the selection features to D dimensions, fitted on U's (simcore.whiten)")
    ap.add_argument("--work-dir", default=os.path.expanduser("~/.cache/simcore/openssl_table"))
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--out", default=os.path.join(RESULTS, "openssl_table"), help="output prefix")
    args = ap.parse_args()

    x_dir, test_dir = (os.path.join(args.data_dir, "dogs", s) for s in ("train", "test"))
    openset_dir = os.path.join(args.data_dir, "openset")
    for p in (x_dir, test_dir, openset_dir):
        if not os.path.isdir(p):
            raise SystemExit(f"openssl_table.py: error: no such folder {p} (is --data-dir tinyopenssl?)")
    group_of = _groups(args.data_dir)
    train, test = (load_images(p, 32, cache_dir=args.cache_dir) for p in (x_dir, test_dir))
    raw = raw_pixels(x_dir, openset_dir, args.cache_dir)
    folder_of = _folders(raw["paths"], openset_dir)
    os.makedirs(args.work_dir, exist_ok=True)
    res_path = os.path.join(args.work_dir, "results.json")
    results = json.load(open(res_path)) if os.path.exists(res_path) else {}
    coresets = {}
    rows = [r for r in ROWS if args.rows is None or r[0] in args.rows or r[0] == "X"]  # X first: samplers need it
    for seed in args.seeds:
        work = os.path.join(args.work_dir, f"seed{seed}")
        os.makedirs(work, exist_ok=True)
        for name, parts in rows:
            key = f"{name}/{seed}/{args.steps}" + row_tag(args, parts)
            if key not in results:
                results[key] = run_row(args, seed, name, parts, work, x_dir, openset_dir, coresets.get(str(seed)),
                                       train, test)
                _write_json(results, res_path)
                print(json.dumps(results[key]), flush=True)
            if name == "X" and str(seed) not in coresets:
                coresets[str(seed)] = samplers(args, seed, work, openset_dir,
                                               os.path.join(row_dir(args, work, "X"), "checkpoint.pt"), x_dir,
                                               folder_of, group_of, raw)
                print(json.dumps({"seed": seed, "precision": coresets[str(seed)]["precision"],
                                  "info": coresets[str(seed)]["info"]}), flush=True)
    wanted = {f"{name}/{seed}/{args.steps}" + row_tag(args, parts) for name, parts in ROWS for seed in args.seeds}
    mine = {k: v for k, v in results.items() if k in wanted}
    md = table(mine, coresets, args, precision(np.arange(len(folder_of)), folder_of, group_of)["precision"])
    ablation = {"X+OS encoder": {}, "supervised-on-X encoder": {}}
    for seed in args.analysis_seeds:
        work = os.path.join(args.work_dir, f"seed{seed}")
        a = retrieval_ablation(args, seed, work, x_dir, openset_dir, folder_of, group_of)
        if a is not None:
            ablation["X+OS encoder"][str(seed)] = a
        for size in args.analysis_sizes:
            name = "supervised-on-X encoder" + ("" if size == 32 else f" at {size} px")
            ablation.setdefault(name, {})[str(seed)] = supervised_retrieval(
                args, seed, work, x_dir, openset_dir, folder_of, group_of, size)
    for name, per in ablation.items():
        if per:
            v = [a["precision"] for a in per.values()]
            md += (f"\nAnalysis (not a paper row): SimCore (1%) with the {name} as the retrieval encoder: "
                   f"precision {statistics.mean(v):.1f}% (target-class "
                   f"{statistics.mean(a['target-class'] for a in per.values()):.1f}%, dog "
                   f"{statistics.mean(a['dog'] for a in per.values()):.1f}%), seed(s) {', '.join(sorted(per))}.")
    by_k = {}
    for seed in args.seeds:  # on the features already extracted: seconds
        by_k[str(seed)] = k_analysis(args, seed, os.path.join(args.work_dir, f"seed{seed}"), folder_of, group_of)
    for tag in ("X encoder", "supervised-on-X encoder"):
        per = {s: a[tag] for s, a in by_k.items() if tag in a}
        if per and args.analysis_k:
            md += (f"\nAnalysis (not a paper row): SimCore (1%) precision by k with the {tag}: " + ", ".join(
                f"k = {k}: {fmt_mean(p[str(k)]['precision'] for p in per.values())}%" for k in args.analysis_k)
                + f"; seed(s) {', '.join(sorted(per))}.")
    machine = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    print(md)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out + ".md.tmp", "w") as f:
        f.write(md + f"\n\nMachine: {machine}. Command: python benchmarks/openssl_table.py "
                f"--data-dir DATA --steps {args.steps} --seeds {' '.join(map(str, args.seeds))}\n")
    os.replace(args.out + ".md.tmp", args.out + ".md")
    _write_json(dict(args=vars(args), machine=machine, results=mine, retrieval_xos=ablation, retrieval_k=by_k, coresets={
        s: dict(info=c["info"], precision=c["precision"]) for s, c in coresets.items()}), args.out + ".json")
    try:
        plots(mine, coresets, args.out)
    except ImportError as e:
        print(f"no plots: {e}")


if __name__ == "__main__":
    main()
