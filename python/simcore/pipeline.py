"""`simcore run`: the whole SimCore recipe, stage by stage, in one run folder.

    pretrain   SSL encoder on the target X alone           RUN/pretrain/checkpoint.pt
    extract    features of X and of every open-set part    RUN/features/*.npy (+ .paths.txt)
    centroids  k-means of X's features                     RUN/centroids/centroids.npy
    select     the SimCore coreset (select_coreset)        RUN/select/coreset.npz, coreset.txt
    retrain    a fresh encoder on X + coreset              RUN/retrain/checkpoint.pt
    baseline   (--compare-random) on X + a random subset   RUN/baseline/checkpoint.pt
               of the same size
    eval       kNN and linear probe on the test split      RUN/eval/eval.json
    report     markdown + plots                            RUN/report/report.md, *.png

Retraining runs exactly as many optimizer steps as the X-only pretraining (the paper's
comparison), so X alone, X + random and X + SimCore differ only in their data.

RUN/manifest.json records, per stage, a key (a hash of the stage's parameters, the
fingerprints of its input data and the stamps of the stages it reads) and a status. A
rerun skips every stage whose key is unchanged and whose status is "done"; a changed
parameter re-runs that stage and, through the stamps, every stage after it; a stage left
"running" (the process died) resumes: pretraining from its last epoch, extraction from its
last chunk; the quick stages start over. Each stage writes into its own folder, whole files
only (temporary file + rename), and is marked done last; a stage that starts afresh first
empties its folder, so nothing half-written is ever trusted. `from_stage` forces a restart
at that stage."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Union

import numpy as np
import torch

from .data import list_items, parse_spec

STAGES = ("pretrain", "extract", "centroids", "select", "retrain", "baseline", "eval", "report")
FORMAT = "simcore.run/1"


@dataclass
class RunConfig:
    target: str  # X: ImageFolder tree (its classes label the kNN / linear evaluation), list or torchvision:
    openset: List[str]  # U: one or more folders / lists / torchvision: specs, concatenated
    out: str
    test: Optional[str] = None  # labelled test split of the target (eval stage)
    budget: Union[int, float, None] = None  # items, a fraction of U, or None: 50 x |X|
    k: int = 100
    tau: Optional[float] = 0.95
    patience: int = 20
    method: str = "simclr"
    arch: str = "resnet18"
    epochs: int = 100  # of the X-only pretraining; retraining matches its optimizer steps
    batch_size: int = 256
    lr: Optional[float] = None
    warmup_epochs: int = 10
    image_size: int = 32
    seed: int = 0
    compare_random: bool = False  # also pretrain on X + a random subset of the coreset's size
    openset_groups: Optional[str] = None  # TSV folder -> group (measuring only, never selecting)
    linear_epochs: int = 100
    feature_dtype: str = "float16"
    device: Optional[str] = None  # selection device (default: CUDA if available)
    amp: str = "auto"
    workers: int = -1
    cache_dir: Optional[str] = None
    method_options: dict = field(default_factory=dict)

    def train_config(self, data: List[str], out: str, steps: Optional[int] = None,
                     warmup_steps: Optional[int] = None):
        from .train import TrainConfig
        return TrainConfig(data=data, out=out, method=self.method, arch=self.arch, epochs=self.epochs,
                           steps=steps, warmup_steps=warmup_steps, batch_size=self.batch_size, lr=self.lr,
                           warmup_epochs=min(self.warmup_epochs, self.epochs), image_size=self.image_size,
                           seed=self.seed, amp=self.amp, workers=self.workers, cache_dir=self.cache_dir,
                           method_options=dict(self.method_options))

    def check(self) -> "RunConfig":
        """Every argument and path, before any work (one-line errors)."""
        from simcore_ext.checks import check_int, check_tau
        for spec in [self.target] + list(self.openset) + ([self.test] if self.test else []):
            _check_data(spec)
        if not self.openset:
            raise ValueError("give at least one --openset")
        check_int(self.k, "k", 1)
        check_int(self.patience, "patience", 1)
        check_tau(self.tau)
        if self.budget is not None:
            from simcore_ext.checks import resolve_budget
            resolve_budget(self.budget, 10**12, 1)  # type and range; the size is known later
        for name in ("linear_epochs",):
            check_int(getattr(self, name), name, 1)
        if self.feature_dtype not in ("float16", "float32"):
            raise ValueError(f"feature_dtype must be float16 or float32, got {self.feature_dtype!r}")
        if self.openset_groups is not None and not os.path.isfile(self.openset_groups):
            raise FileNotFoundError(f"no such open-set groups file: {self.openset_groups}")
        if os.path.exists(self.out) and not os.path.isdir(self.out):
            raise FileExistsError(f"--out {self.out} is a file, not a run folder")
        if self.device is not None:
            torch.device(self.device)  # raises on a malformed name
        self.train_config([self.target], os.path.join(self.out, "pretrain")).check()
        kind = parse_spec(self.target)[0]
        if self.test is not None and kind == "list":
            raise ValueError(f"--test needs a labelled target (an ImageFolder tree), not the list {self.target}")
        if kind != "torchvision":
            n = len(list_items(kind, self.target)[0])
            if n < self.batch_size:
                raise ValueError(f"batch_size {self.batch_size} is larger than the {n} target images")
        return self


def _check_data(spec: str) -> None:
    kind, name, _ = parse_spec(spec)
    if kind == "folder" and not os.path.isdir(name):
        raise FileNotFoundError(f"no such dataset folder: {name}")
    if kind == "list" and not os.path.isfile(name):
        raise FileNotFoundError(f"no such image list: {name}")


def fingerprint(spec: str) -> str:
    """Identity of a dataset's content: every image file's relative path, size and mtime
    (folders, lists), or the name of a torchvision dataset."""
    kind, name, split = parse_spec(spec)
    h = hashlib.sha1(f"{kind}|{os.path.abspath(name) if kind != 'torchvision' else name}|{split}".encode())
    if kind != "torchvision":
        items, classes = list_items(kind, name)
        h.update("|".join(classes).encode())
        for path, label in items:
            st = os.stat(path)
            h.update(f"|{path}|{label}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()


def _hash(obj) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _write_json(obj, path: str) -> None:
    from simcore_ext.result import atomic_write
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write(path, lambda f: json.dump(obj, f, indent=2, default=str), binary=False)


def _write_lines(lines, path: str) -> None:
    from simcore_ext.result import atomic_write
    atomic_write(path, lambda f: f.writelines(f"{x}\n" for x in lines), binary=False)


class RunLock:
    """RUN/.lock holds the pid of the `simcore run` using the folder; a lock whose process
    is gone (killed) is taken over."""

    def __init__(self, folder: str):
        self.path = os.path.join(folder, ".lock")

    def __enter__(self):
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                try:
                    pid = int(open(self.path).read().strip() or 0)
                except (OSError, ValueError):
                    pid = 0
                if pid and pid != os.getpid() and _alive(pid):
                    raise FileExistsError(f"another simcore run (pid {pid}) is using {os.path.dirname(self.path)}")
                os.unlink(self.path)
                continue
            with os.fdopen(fd, "w") as f:
                f.write(str(os.getpid()))
            return self
        raise FileExistsError(f"cannot lock {self.path}")

    def __exit__(self, *exc):
        if os.path.exists(self.path):
            os.unlink(self.path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Run:
    """One run folder: the manifest, the stage keys, and the stages themselves."""

    def __init__(self, cfg: RunConfig, progress: bool = True, log=print):
        self.cfg, self.progress, self.log = cfg, progress, log
        self.out = cfg.out
        self.manifest_path = os.path.join(self.out, "manifest.json")
        self.manifest = {"format": FORMAT, "stages": {}}
        if os.path.exists(self.manifest_path):
            with open(self.manifest_path) as f:
                saved = json.load(f)
            if saved.get("format") != FORMAT:
                raise ValueError(f"{self.manifest_path} is not a simcore run manifest ({saved.get('format')!r})")
            self.manifest = saved
        self.fingerprints: Dict[str, object] = {}

    # -- bookkeeping ---------------------------------------------------------------------
    def path(self, *parts) -> str:
        return os.path.join(self.out, *parts)

    def _save_manifest(self) -> None:
        self.manifest["config"] = asdict(self.cfg)
        _write_json(self.manifest, self.manifest_path)

    def stage_record(self, stage: str) -> dict:
        return self.manifest["stages"].get(stage, {})

    def _spec(self, stage: str) -> dict:
        """What a stage's result depends on: its parameters, its data, the stages it reads."""
        c = self.cfg
        train = dict(method=c.method, arch=c.arch, epochs=c.epochs, batch_size=c.batch_size, lr=c.lr,
                     warmup_epochs=c.warmup_epochs, image_size=c.image_size, seed=c.seed, amp=c.amp,
                     method_options=c.method_options)
        specs = {
            "pretrain": (train, dict(target=self.fingerprints["target"]), []),
            "extract": (dict(dtype=c.feature_dtype), dict(target=self.fingerprints["target"],
                                                          openset=self.fingerprints["openset"]), ["pretrain"]),
            "centroids": (dict(k=c.k, seed=c.seed), {}, ["extract"]),
            "select": (dict(budget=c.budget, tau=c.tau, patience=c.patience), {}, ["centroids"]),
            "retrain": (train, {}, ["pretrain", "select"]),
            "baseline": (dict(train, random_seed=c.seed), {}, ["pretrain", "select"]),
            "eval": (dict(linear_epochs=c.linear_epochs, seed=c.seed),
                     dict(test=self.fingerprints.get("test")), ["pretrain", "retrain", "baseline"]),
            "report": (dict(groups=self.fingerprints.get("groups")), {}, ["select", "eval", "baseline"]),
        }
        params, inputs, deps = specs[stage]
        upstream = {d: self.stage_record(d).get("stamp") for d in deps if self.enabled(d)}
        return dict(params=params, inputs=inputs, upstream=upstream)

    def enabled(self, stage: str) -> bool:
        if stage == "baseline":
            return self.cfg.compare_random
        if stage == "eval":
            return self.cfg.test is not None
        return True

    def outputs_present(self, rec: dict) -> bool:
        return all(os.path.exists(self.path(p)) for p in rec.get("outputs", []))

    # -- driving -------------------------------------------------------------------------
    def run(self, from_stage: Optional[str] = None) -> dict:
        if from_stage is not None and from_stage not in STAGES:
            raise ValueError(f"unknown stage {from_stage!r}: expected one of {', '.join(STAGES)}")
        os.makedirs(self.out, exist_ok=True)
        with RunLock(self.out):
            t0 = time.perf_counter()
            self.log(f"simcore run -> {self.out}")
            self.fingerprints = dict(target=fingerprint(self.cfg.target),
                                     openset=[fingerprint(s) for s in self.cfg.openset])
            if self.cfg.test:
                self.fingerprints["test"] = fingerprint(self.cfg.test)
            if self.cfg.openset_groups:
                with open(self.cfg.openset_groups, "rb") as f:
                    self.fingerprints["groups"] = hashlib.sha1(f.read()).hexdigest()
            forced = False
            for stage in STAGES:
                forced = forced or stage == from_stage
                if not self.enabled(stage):
                    self.manifest["stages"].pop(stage, None)
                    continue
                self._stage(stage, forced)
            self.log(f"done in {time.perf_counter() - t0:.1f} s: {self.path('report', 'report.md')}")
        return self.manifest

    def _stage(self, stage: str, forced: bool) -> None:
        key = _hash(self._spec(stage))
        rec = self.stage_record(stage)
        if not forced and rec.get("status") == "done" and rec.get("key") == key and self.outputs_present(rec):
            self.log(f"[{stage}] up to date (skipped)")
            return
        folder = self.path(stage if stage != "extract" else "features")
        resume = not forced and rec.get("status") == "running" and rec.get("key") == key
        if not resume and os.path.exists(folder):
            shutil.rmtree(folder)  # another key, or forced: nothing of it may be trusted
        os.makedirs(folder, exist_ok=True)
        self.manifest["stages"][stage] = dict(status="running", key=key, started=time.time())
        self._save_manifest()
        self.log(f"[{stage}] {'resuming' if resume else 'running'}")
        t0 = time.perf_counter()
        info = getattr(self, f"stage_{stage}")() or {}
        seconds = time.perf_counter() - t0
        outputs = info.pop("outputs")
        self.manifest["stages"][stage] = dict(status="done", key=key, stamp=_hash([key, time.time_ns()]),
                                              seconds=round(seconds, 2), outputs=outputs, **info)
        self._save_manifest()
        self.log(f"[{stage}] done in {seconds:.1f} s")

    # -- the stages ----------------------------------------------------------------------
    def _pretrain(self, data: List[str], folder: str, steps=None, warmup_steps=None) -> dict:
        from .train import pretrain
        cfg = self.cfg.train_config(data, self.path(folder), steps, warmup_steps)
        pretrain(cfg, resume=os.path.exists(self.path(folder, "checkpoint.pt")), progress=self.progress)
        with open(self.path(folder, "metrics.csv")) as f:
            rows = f.read().splitlines()[1:]
        return dict(outputs=[f"{folder}/checkpoint.pt"], epochs=len(rows),
                    last_loss=float(rows[-1].split(",")[1]) if rows else None)

    def stage_pretrain(self) -> dict:
        n = count_images(self.cfg.target, self.cfg.cache_dir)
        steps_per_epoch = n // self.cfg.batch_size
        info = self._pretrain([self.cfg.target], "pretrain")
        info.update(images=n, steps=self.cfg.epochs * steps_per_epoch,
                    warmup_steps=min(self.cfg.warmup_epochs, self.cfg.epochs) * steps_per_epoch)
        return info

    def stage_extract(self) -> dict:
        from .extract import extract
        ckpt = self.path("pretrain", "checkpoint.pt")
        outs = ["features/target.npy"] + [f"features/openset_{i}.npy" for i in range(len(self.cfg.openset))]
        for spec, out in zip([self.cfg.target] + list(self.cfg.openset), outs):
            if not os.path.exists(self.path(out)):  # a finished part of an interrupted stage stays
                extract(ckpt, spec, self.path(out), dtype=self.cfg.feature_dtype, device=self.cfg.device,
                        cache_dir=self.cfg.cache_dir, progress=self.progress, workers=self.cfg.workers)
        rows = [int(np.load(self.path(o), mmap_mode="r").shape[0]) for o in outs]
        return dict(outputs=outs + [o[:-4] + ".paths.txt" for o in outs], rows=rows)

    def stage_centroids(self) -> dict:
        from simcore_ext.kmeans import make_centroids
        from simcore_ext.result import atomic_write
        X = torch.from_numpy(np.load(self.path("features", "target.npy")).astype(np.float32))
        if not torch.isfinite(X).all() or bool((X.norm(dim=1) == 0).any()):
            raise ValueError("target features hold NaN/Inf or zero rows: the encoder diverged "
                             "(try a lower --lr, or --from-stage pretrain)")
        C = make_centroids(X, self.cfg.k, "cosine", self.cfg.seed)
        atomic_write(self.path("centroids", "centroids.npy"), lambda f: np.save(f, C.numpy()))
        return dict(outputs=["centroids/centroids.npy"], k=int(C.shape[0]))

    def openset_paths(self) -> List[str]:
        paths = []
        for i in range(len(self.cfg.openset)):
            with open(self.path("features", f"openset_{i}.paths.txt")) as f:
                paths += [line.rstrip("\n") for line in f]
        return paths

    def stage_select(self) -> dict:
        from simcore_ext import select_coreset
        shards = [self.path("features", f"openset_{i}.npy") for i in range(len(self.cfg.openset))]
        C = np.load(self.path("centroids", "centroids.npy"))
        n = int(np.load(self.path("features", "target.npy"), mmap_mode="r").shape[0])
        N = sum(int(np.load(s, mmap_mode="r").shape[0]) for s in shards)
        budget = self.cfg.budget if self.cfg.budget is not None else min(50 * n, N)
        r = select_coreset(None, shards, centroids=C, budget=budget, tau=self.cfg.tau,
                           patience=self.cfg.patience, device=self.cfg.device, seed=self.cfg.seed,
                           progress=self.progress)
        r.save(self.path("select", "coreset.npz"))
        paths = self.openset_paths()
        _write_lines([paths[i] for i in r.indices.tolist()], self.path("select", "coreset.txt"))
        summary = dict(items=len(r), openset=N, rounds=r.rounds, stop_reason=r.stop_reason,
                       threshold=r.threshold, select_seconds=r.stats["seconds"], device=r.params.get("device"))
        _write_json(summary, self.path("select", "selection.json"))
        self.log(f"[select] {len(r)} of {N} open-set images in {r.rounds} rounds ({r.stop_reason}), "
                 f"{r.stats['seconds']:.2f} s")
        return dict(outputs=["select/coreset.npz", "select/coreset.txt", "select/selection.json"], **summary)

    def _steps(self) -> dict:
        rec = self.stage_record("pretrain")
        return dict(steps=rec["steps"], warmup_steps=rec["warmup_steps"])

    def stage_retrain(self) -> dict:
        info = self._pretrain([self.cfg.target, self.path("select", "coreset.txt")], "retrain", **self._steps())
        info.update(self._steps())
        return info

    def stage_baseline(self) -> dict:
        size = self.stage_record("select")["items"]
        paths = self.openset_paths()
        rng = np.random.default_rng(self.cfg.seed)
        pick = np.sort(rng.choice(len(paths), size=size, replace=False))
        _write_lines([paths[i] for i in pick.tolist()], self.path("baseline", "random.txt"))
        np.save(self.path("baseline", "random_indices.npy"), pick)
        info = self._pretrain([self.cfg.target, self.path("baseline", "random.txt")], "baseline", **self._steps())
        info["outputs"].append("baseline/random.txt")
        info.update(self._steps())
        return info

    def models(self) -> Dict[str, str]:
        """Evaluated encoders: label -> checkpoint (relative to the run folder)."""
        m = {"X": "pretrain/checkpoint.pt"}
        if self.enabled("baseline"):
            m["X + random"] = "baseline/checkpoint.pt"
        m["X + SimCore"] = "retrain/checkpoint.pt"
        return m

    def stage_eval(self) -> dict:
        from .evaluate import knn, linear_probe
        from .extract import FeatureSource, features_of, load_backbone
        dev = torch.device(self.cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        train = FeatureSource(self.cfg.target, self.cfg.image_size, self.cfg.cache_dir, workers=self.cfg.workers)
        test = FeatureSource(self.cfg.test, self.cfg.image_size, self.cfg.cache_dir, workers=self.cfg.workers)
        if train.classes != test.classes:
            raise ValueError(f"target and test have different classes: {train.classes} vs {test.classes}")
        ytr, yte = train.labels(), test.labels()
        results = {}
        for label, ckpt in self.models().items():
            backbone, _ = load_backbone(self.path(ckpt), dev)
            ftr, fte = features_of(backbone, train), features_of(backbone, test)
            k = knn(ftr, ytr, fte, yte)
            lin = linear_probe(ftr, ytr, fte, yte, epochs=self.cfg.linear_epochs, seed=self.cfg.seed)
            results[label] = dict(linear=lin["top1"], linear_mean_per_class=lin["mean_per_class"],
                                  knn20=k[20], knn200=k[200])
            self.log(f"[eval] {label}: linear {lin['top1']:.1f}%, kNN(20) {k[20]:.1f}%, kNN(200) {k[200]:.1f}%")
        _write_json(results, self.path("eval", "eval.json"))
        return dict(outputs=["eval/eval.json"], results=results)

    def stage_report(self) -> dict:
        from .report import write_report
        return write_report(self)


def count_images(spec: str, cache_dir: Optional[str] = None) -> int:
    kind, name, _ = parse_spec(spec)
    if kind == "torchvision":
        from .data import load_images
        return len(load_images(spec, 32, cache_dir=cache_dir))
    return len(list_items(kind, name)[0])


def run(cfg: RunConfig, from_stage: Optional[str] = None, progress: bool = True, log=print) -> dict:
    """Runs (or completes) the pipeline in cfg.out; returns the manifest."""
    cfg.check()
    return Run(cfg, progress=progress, log=log).run(from_stage)
