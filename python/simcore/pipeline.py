"""`simcore run`: the whole SimCore recipe, stage by stage, in one run folder.

    pretrain   SSL encoder on the target X alone           RUN/pretrain/checkpoint.pt
    extract    features of X and of every open-set part    RUN/features/*.npy (+ .paths.txt)
    whiten     (--whiten D) PCA whitening fitted on U's     RUN/whitened/*.npy, whitening.npz
               features; X and U whitened, what the
               centroids, selection and report then read
    centroids  k-means of X's features                     RUN/centroids/centroids.npy
    select     the SimCore coreset (select_coreset)        RUN/select/coreset.npz, coreset.txt
    retrain    a fresh encoder on X + coreset              RUN/retrain/checkpoint.pt
    baseline   (--compare-random) on X + a random subset   RUN/baseline/checkpoint.pt
               of the same size
    eval       kNN and linear probe on the test split      RUN/eval/eval.json
               (and, with --finetune F..., the whole network
               fine-tuned on a share F of X's labels)
    report     markdown + plots                            RUN/report/report.md, *.png

Retraining runs exactly as many optimizer steps as the X-only pretraining (the paper's
comparison), so X alone, X + random and X + SimCore differ only in their data.

With --resample N (the released code's --sampling_times N + 1) retraining's steps are cut
into N + 1 equal segments; after each of the first N, the retraining encoder as it is then
extracts X and U, k-means (the same k and seed) gives centroids and select_coreset (the same
budget, tau, patience) a new coreset from the whole of U, and training goes on with X + that
coreset: the same optimizer and method state, the same learning-rate schedule over all the
steps, the same steps in all. Each re-selection goes to RUN/retrain/resample_I/ (coreset.txt,
coreset.npz, selection.json with its size, rounds, stop reason and overlap with the coreset
before it; its features are deleted once it is saved) and is resumable like the rest: a
finished one is read back, and training resumes from its last epoch or segment end.
Where we differ from the released code: it re-selects at epoch boundaries (ours: at a step
cut, the last epoch of a segment cut short there), extracts features in eval mode with
resize + center crop (ours: the run's extraction, at the retrieval size), and also re-draws
its random baseline (ours keeps the baseline's one random subset).

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

from . import plots
from .data import file_stamp, list_items, parse_spec

STAGES = ("pretrain", "extract", "whiten", "centroids", "select", "retrain", "baseline", "eval", "report")
STAGE_FOLDERS = {s: {"extract": "features", "whiten": "whitened"}.get(s, s) for s in STAGES}
FORMAT = "simcore.run/1"
SELF_VALIDATING = ("eval",)  # keeps one result file per encoder, each valid for its checkpoint


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
    optimizer: str = "sgd"  # or "lars", "adamw"
    weight_decay: float = 5e-4
    min_crop: float = 0.08  # smallest random-resized-crop area of the SSL views, in every SSL training
    image_size: int = 32
    seed: int = 0
    compare_random: bool = False  # also pretrain on X + a random subset of the coreset's size
    openset_groups: Optional[str] = None  # TSV folder -> group (measuring only, never selecting)
    linear_epochs: int = 100
    # label fractions in (0, 1] to fine-tune every encoder on (eval stage; none by default)
    finetune: List[float] = field(default_factory=list)
    finetune_epochs: int = 50
    feature_dtype: str = "float16"
    device: Optional[str] = None  # extraction, selection, evaluation (default: CUDA if available)
    amp: str = "auto"
    skip_bad_images: bool = False
    workers: int = -1
    cache_dir: Optional[str] = None
    method_options: dict = field(default_factory=dict)
    # the encoder whose features select: "pretrain" (the paper's: SSL on X, the pretrain
    # stage) or any simcore.encoders spec; retraining is the same whatever selects
    retrieval_encoder: str = "pretrain"
    retrieval_size: Optional[int] = None  # its input size (default: its own; pretrain: image_size)
    retrieval_amp: str = "off"  # extraction under bf16 autocast: "bf16", "auto" or "off" (float32)
    # re-select the coreset this many times during retraining, with the retraining encoder
    # (the released code's --sampling_times minus one); 0: the paper's single selection
    resample: int = 0
    # PCA-whiten the retrieval features to this many dimensions, fitted on the open-set's
    # (simcore.whiten); 0: the paper's raw features
    whiten: int = 0

    def train_config(self, data: List[str], out: str, steps: Optional[int] = None,
                     warmup_steps: Optional[int] = None):
        from .train import TrainConfig
        return TrainConfig(data=data, out=out, method=self.method, arch=self.arch, epochs=self.epochs,
                           steps=steps, warmup_steps=warmup_steps, batch_size=self.batch_size, lr=self.lr,
                           optimizer=self.optimizer, weight_decay=self.weight_decay, min_crop=self.min_crop,
                           warmup_epochs=min(self.warmup_epochs, self.epochs), image_size=self.image_size,
                           seed=self.seed, amp=self.amp, workers=self.workers, cache_dir=self.cache_dir,
                           skip_bad_images=self.skip_bad_images, method_options=dict(self.method_options))

    def check(self) -> "RunConfig":
        """Every argument and path, before any work (one-line errors)."""
        from simcore_ext.checks import check_int, check_tau, resolve_budget
        if not self.openset:
            raise ValueError("give at least one --openset")
        for spec in [self.target] + list(self.openset) + ([self.test] if self.test else []):
            _check_data(spec)
        for spec in self.openset:
            if parse_spec(spec)[0] == "torchvision":
                raise ValueError(f"--openset {spec}: the open-set must be image files (a folder or a .txt "
                                 "list): the coreset is trained on as a list of its files")
        check_int(self.k, "k", 1)
        check_int(self.seed, "seed", 0)
        check_int(self.patience, "patience", 1)
        check_int(self.linear_epochs, "linear_epochs", 1)
        check_int(self.finetune_epochs, "finetune_epochs", 1)
        check_int(self.resample, "resample", 0)
        check_int(self.whiten, "whiten", 0)
        if self.retrieval_amp not in ("off", "bf16", "auto"):
            raise ValueError(f"retrieval_amp must be off, bf16 or auto, got {self.retrieval_amp!r}")
        for f in self.finetune:
            if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 < f <= 1:
                raise ValueError(f"--finetune label fractions must be in (0, 1], got {f!r}")
        if self.finetune and self.test is None:
            raise ValueError("--finetune needs --test: fine-tuning is scored on the test split")
        check_tau(self.tau)
        n_openset = sum(_count(s) for s in self.openset)  # lists every part: an empty one fails here
        if self.budget is not None:
            resolve_budget(self.budget, n_openset, 1)
        if self.feature_dtype not in ("float16", "float32"):
            raise ValueError(f"feature_dtype must be float16 or float32, got {self.feature_dtype!r}")
        if self.openset_groups is not None:
            if not os.path.isfile(self.openset_groups):
                raise FileNotFoundError(f"no such open-set groups file: {self.openset_groups}")
            from .report import read_groups
            read_groups(self.openset_groups)
        if self.device is not None:
            _check_device(self.device)
        if self.retrieval_encoder != "pretrain":
            from .encoders import check_encoder
            check_encoder(self.retrieval_encoder)
        if self.retrieval_size is not None:
            from .encoders import check_size
            check_size(self.retrieval_size)
        from .data import check_cache_dir
        check_cache_dir(self.cache_dir)
        self.train_config([self.target], os.path.join(self.out, "pretrain")).check()
        if self.whiten:
            self._check_whiten(n_openset)
        if self.retrieval_encoder == "pretrain" and self.retrieval_size is not None:
            from .models import parse_arch, vit_patch
            if parse_arch(self.arch)[0].startswith("vit") and self.retrieval_size % vit_patch(self.image_size):
                raise ValueError(f"--retrieval-size {self.retrieval_size}: the pretrained {self.arch} takes "
                                 f"multiples of its {vit_patch(self.image_size)} px patch")
        kind = parse_spec(self.target)[0]
        if self.test is not None:
            if kind == "list":
                raise ValueError(f"--test needs a labelled target (an ImageFolder tree), not the list {self.target}")
            tkind = parse_spec(self.test)[0]
            if tkind == "list":
                raise ValueError(f"--test needs labelled images (an ImageFolder tree), not the list {self.test}")
            if kind == tkind == "folder":
                a, b = list_items(kind, self.target)[1], list_items(tkind, self.test)[1]
                if a != b:
                    raise ValueError(f"--target and --test have different classes: {a} vs {b}")
                if len(a) < 2:
                    raise ValueError(f"--target {self.target} has one class ({a[0]}): the evaluation "
                                     "needs at least two (any encoder scores 100%); drop --test")
        if kind != "torchvision":
            n = _count(self.target)
            if n < self.batch_size:
                raise ValueError(f"batch_size {self.batch_size} is larger than the {n} target images")
            check_resample(self.resample, self.epochs * (n // self.batch_size))  # again once the steps ran
        self._check_out()
        return self

    def _check_whiten(self, n_openset: int) -> None:
        """What the whiten stage would only find after pretraining and extraction: more
        dimensions than the features of an encoder that selects have (the X encoder, an
        ImageNet retrieval encoder, or under --resample the retraining one), or too few
        open-set rows."""
        from .models import build_backbone
        from .train import SMALL_IMAGES
        widths = []
        if self.retrieval_encoder == "pretrain" or self.resample:
            with torch.device("meta"):  # shapes only: no memory, no random numbers drawn
                widths.append((f"the {self.arch} encoder's",
                               build_backbone(self.arch, self.image_size <= SMALL_IMAGES, self.image_size).feature_dim))
        if self.retrieval_encoder != "pretrain":
            from .encoders import feature_width
            width = feature_width(self.retrieval_encoder)  # None: a checkpoint or a RegNet, known once loaded
            if width is not None:
                widths.append((f"the retrieval encoder {self.retrieval_encoder}'s", width))
        for what, width in widths:
            if self.whiten > width:
                raise ValueError(f"--whiten {self.whiten}: {what} features are {width} wide; choose at most {width}")
        if n_openset <= self.whiten:
            raise ValueError(f"--whiten {self.whiten}: whitening to {self.whiten} dimensions needs more than "
                             f"{self.whiten} open-set rows, got {n_openset}")

    def _check_out(self) -> None:
        out = os.path.realpath(self.out)  # symlinks resolved, on either side
        check_out_folder(self.out, "run folder")
        for spec in [self.target] + list(self.openset) + ([self.test] if self.test else []):
            kind, name, _ = parse_spec(spec)  # a list names its files: only a folder would take in ours
            root = os.path.realpath(name)
            if kind == "folder" and (out == root or out.startswith(root + os.sep)):
                raise ValueError(f"--out {self.out} lies inside the data folder {name}: its files would "
                                 "become data")
            for folder in sorted(set(STAGE_FOLDERS.values())) if kind != "torchvision" else ():
                if (root + os.sep).startswith(os.path.join(out, folder) + os.sep):
                    raise ValueError(f"the data {name} lies in {folder}/ of --out {self.out}: that stage "
                                     "would delete it")
        if os.path.isdir(out) and not os.path.exists(os.path.join(out, "manifest.json")):
            mine = sorted(set(STAGE_FOLDERS.values()) & set(os.listdir(out)))
            if mine:
                raise FileExistsError(f"--out {self.out} holds {', '.join(mine)} but no manifest.json: not a "
                                      "simcore run folder (a run would replace them); choose another --out")


def check_resample(resample: int, steps: int) -> None:
    """Each of the resample + 1 segments of retraining needs at least one step."""
    if resample > steps - 1:
        raise ValueError(f"--resample {resample}: retraining runs {steps} optimizer steps (as many as the "
                         f"pretraining on X) and each of its {resample + 1} segments needs one: give at most "
                         f"{steps - 1}")


def check_out_folder(out: str, what: str = "folder") -> None:
    """--out may not exist yet, but must be (or become) a writable folder."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise FileExistsError(f"--out {out} is a file, not a {what}")
    parent = os.path.abspath(out)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionError(f"--out {out}: {parent} is not writable")


def _count(spec: str) -> int:
    kind, name, _ = parse_spec(spec)
    return len(list_items(kind, name)[0]) if kind != "torchvision" else 0


def _check_device(name: str) -> None:
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device {name!r} is not a device (cpu, cuda, cuda:1, ...)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name}: no CUDA GPU is available here")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"--device {name}: this machine has {torch.cuda.device_count()} GPU(s)")
    elif dev.type != "cpu":
        raise ValueError(f"--device {name}: expected cpu or cuda[:N]")


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
            st_size, st_mtime_ns = file_stamp(path)
            h.update(f"|{path}|{label}|{st_size}|{st_mtime_ns}".encode())
    return h.hexdigest()


def _hash(obj) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def fractions(cfg: RunConfig) -> List[float]:
    """The run's fine-tuning label fractions, once each, in increasing order."""
    return sorted({float(f) for f in cfg.finetune})


def _saved(path: str, key: str) -> Optional[dict]:
    """The results in a result file written under `key`, or None (missing, damaged, another key)."""
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            saved = json.load(f)
    except ValueError:  # damaged: computed again
        return None
    if isinstance(saved, dict) and saved.get("key") == key and isinstance(saved.get("results"), dict):
        return saved["results"]
    return None


def _write_json(obj, path: str) -> None:
    from simcore_ext.result import atomic_write
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write(path, lambda f: json.dump(obj, f, indent=2, default=str), binary=False)


def _write_lines(lines, path: str) -> None:
    from simcore_ext.result import atomic_write
    atomic_write(path, lambda f: f.writelines(f"{x}\n" for x in lines), binary=False)


class RunLock:
    """An exclusive flock on RUN/.lock for the whole run: the kernel drops it when the
    process dies, even by kill -9, so a killed run never blocks the folder. The file holds
    the holder's pid, for the message only."""

    def __init__(self, folder: str):
        self.path = os.path.join(folder, ".lock")

    def __enter__(self):
        import fcntl
        self.fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(self.fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(self.fd)
            raise FileExistsError(f"another simcore run (pid {holder}) is using {os.path.dirname(self.path)}") from None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, str(os.getpid()).encode(), 0)
        return self

    def __exit__(self, *exc):
        os.close(self.fd)  # releases the lock; the file stays (removing it would race a waiter)


class Run:
    """One run folder: the manifest, the stage keys, and the stages themselves."""

    def __init__(self, cfg: RunConfig, progress: bool = True, log=print):
        self.cfg, self.progress, self.log = cfg, progress, log
        self.out = cfg.out
        self.manifest_path = os.path.join(self.out, "manifest.json")
        self.manifest = self._load_manifest()
        self.fingerprints: Dict[str, object] = {}
        self._encoder_identity: Optional[dict] = None

    def _load_manifest(self) -> dict:
        if not os.path.exists(self.manifest_path):
            return {"format": FORMAT, "stages": {}}
        try:
            with open(self.manifest_path) as f:
                saved = json.load(f)
        except (OSError, ValueError) as e:
            raise ValueError(f"{self.manifest_path} is unreadable ({e}); move the run folder aside") from None
        if not isinstance(saved, dict) or saved.get("format") != FORMAT:
            raise ValueError(f"{self.manifest_path} is not a simcore run manifest")
        return saved

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
                     method_options=c.method_options, skip_bad_images=c.skip_bad_images,
                     # keyed only when changed: runs from before these options keep their keys
                     **({"optimizer": c.optimizer} if c.optimizer != "sgd" else {}),
                     **({"weight_decay": c.weight_decay} if c.weight_decay != 5e-4 else {}),
                     **({"min_crop": c.min_crop} if c.min_crop != 0.08 else {}))
        resample = (dict(resample=c.resample, k=c.k, budget=c.budget, tau=c.tau, patience=c.patience,
                         dtype=c.feature_dtype, size=self.resample_size(),
                         **({"whiten": c.whiten} if c.whiten else {}),
                         **({"amp": c.retrieval_amp} if c.retrieval_amp != "off" else {})) if c.resample else {})
        specs = {
            "pretrain": (train, dict(target=self.fingerprints["target"]), []),
            # a foreign encoder keys on its weights' hash; the X encoder on the pretrain stage
            "extract": (dict(dtype=c.feature_dtype, skip_bad_images=c.skip_bad_images, encoder=self.encoder_identity(),
                             **({"amp": c.retrieval_amp} if c.retrieval_amp != "off" else {})),
                        dict(target=self.fingerprints["target"], openset=self.fingerprints["openset"]),
                        ["pretrain"] if c.retrieval_encoder == "pretrain" else []),
            "whiten": (dict(dim=c.whiten), {}, ["extract"]),
            # "whiten" is upstream only when enabled: runs without it keep their keys
            "centroids": (dict(k=c.k, seed=c.seed), {}, ["extract", "whiten"]),
            "select": (dict(budget=c.budget, tau=c.tau, patience=c.patience), {}, ["extract", "whiten", "centroids"]),
            # the coreset's stamp is its list of paths: the images' content comes in here; with
            # --resample, the settings of its re-selections too (keyed only then, as above)
            "retrain": (dict(train, **resample), dict(target=self.fingerprints["target"],
                                                      openset=self.fingerprints["openset"]),
                        ["pretrain", "select"]),
            "baseline": (dict(train, random_seed=c.seed),  # needs the coreset's size, not its items
                         dict(target=self.fingerprints["target"], openset=self.fingerprints["openset"], items=self.stage_record("select").get("items"),
                              steps=self.stage_record("pretrain").get("steps")), []),
            "eval": (dict(linear_epochs=c.linear_epochs, seed=c.seed,  # no finetune: the keys of before
                          **(dict(finetune=fractions(c), finetune_epochs=c.finetune_epochs, amp=c.amp)
                             if c.finetune else {})),
                     dict(test=self.fingerprints.get("test")), ["pretrain", "retrain", "baseline"]),
            # select's stamp covers only the coreset; its key (settings, features, centroids)
            # fixes the rest of what the report shows. Without matplotlib: redone once it is there
            "report": (dict(groups=self.fingerprints.get("groups"), plots=plots.available(),
                            **({"resample": c.resample} if c.resample else {})),
                       dict(select=self.stage_record("select").get("key")), ["select", "eval", "baseline"]),
        }
        params, inputs, deps = specs[stage]
        upstream = {d: self.stage_record(d).get("stamp") for d in deps if self.enabled(d)}
        return dict(params=params, inputs=inputs, upstream=upstream)

    def encoder_identity(self) -> dict:
        c = self.cfg
        if c.retrieval_encoder == "pretrain":
            return dict(encoder="pretrain", size=c.retrieval_size or c.image_size)
        if self._encoder_identity is None:
            from .encoders import identity
            self._encoder_identity = identity(c.retrieval_encoder, c.retrieval_size)
        return self._encoder_identity

    def resample_size(self) -> Optional[int]:
        """The retraining encoder's input size when it re-selects: the X encoder's retrieval
        size (--retrieval-size), else its own training size (None)."""
        return self.cfg.retrieval_size if self.cfg.retrieval_encoder == "pretrain" else None

    def enabled(self, stage: str) -> bool:
        if stage == "whiten":
            return self.cfg.whiten > 0
        if stage == "baseline":
            return self.cfg.compare_random
        if stage == "eval":
            return self.cfg.test is not None
        return True

    def _stamp(self, outputs: List[str]) -> str:
        """What later stages key on: the outputs' content (files up to 256 MB; larger
        ones, e.g. features, by size and mtime), so a re-run with identical results (the
        same coreset, say) does not re-run what follows."""
        h = hashlib.sha1(b"simcore-stamp")
        for rel in sorted(outputs):
            p = self.path(rel)
            st = os.stat(p)
            if st.st_size > 256 << 20:
                h.update(f"{rel}|{st.st_size}|{st.st_mtime_ns}".encode())
                continue
            h.update(rel.encode())
            with open(p, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
        return h.hexdigest()[:16]

    def outputs_present(self, rec: dict) -> bool:
        return all(os.path.exists(self.path(p)) for p in rec.get("outputs", []))

    # -- driving -------------------------------------------------------------------------
    def run(self, from_stage: Optional[str] = None) -> dict:
        if from_stage is not None and from_stage not in STAGES:
            raise ValueError(f"unknown stage {from_stage!r}: expected one of {', '.join(STAGES)}")
        os.makedirs(self.out, exist_ok=True)
        with RunLock(self.out):
            self.manifest = self._load_manifest()  # as the last holder left it
            t0 = time.perf_counter()
            self.log(f"simcore run -> {self.out}")
            self.fingerprints = dict(target=fingerprint(self.cfg.target),
                                     openset=[fingerprint(s) for s in self.cfg.openset])
            if self.cfg.test:
                self.fingerprints["test"] = fingerprint(self.cfg.test)
            if self.cfg.openset_groups:
                with open(self.cfg.openset_groups, "rb") as f:
                    self.fingerprints["groups"] = hashlib.sha1(f.read()).hexdigest()
            carry = False  # --from-stage names a disabled stage: force the next enabled one
            for stage in STAGES:
                forced = carry or stage == from_stage
                if not self.enabled(stage):
                    carry = forced
                    if self.manifest["stages"].pop(stage, None) is not None:
                        self._save_manifest()
                    if os.path.exists(self.path(STAGE_FOLDERS[stage])):
                        shutil.rmtree(self.path(STAGE_FOLDERS[stage]))  # nothing may read a stale one
                    continue
                carry = False
                self._stage(stage, forced)  # later stages follow through the stamps
            self.log(f"done in {time.perf_counter() - t0:.1f} s: {self.path('report', 'report.md')}")
        return self.manifest

    def _stage(self, stage: str, forced: bool) -> None:
        key = _hash(self._spec(stage))
        rec = self.stage_record(stage)
        if not forced and rec.get("status") == "done" and rec.get("key") == key and self.outputs_present(rec):
            self.log(f"[{stage}] up to date (skipped)")
            return
        folder = self.path(STAGE_FOLDERS[stage])
        resume = not forced and rec.get("status") == "running" and rec.get("key") == key
        if os.path.exists(folder) and (forced or (not resume and stage not in SELF_VALIDATING)):
            shutil.rmtree(folder)  # another key, or forced: nothing of it may be trusted
        os.makedirs(folder, exist_ok=True)
        from .checkpoint import remove_temporaries
        remove_temporaries(folder)  # a killed attempt's, in a kept folder (we hold the run lock)
        self.manifest["stages"][stage] = dict(status="running", key=key, started=time.time())
        self._save_manifest()
        self.log(f"[{stage}] {'resuming' if resume else 'running'}")
        t0 = time.perf_counter()
        info = getattr(self, f"stage_{stage}")() or {}
        seconds = time.perf_counter() - t0
        outputs = info.pop("outputs")
        identity = info.pop("identity", outputs)  # the outputs that say what the result is
        self.manifest["stages"][stage] = dict(status="done", key=key, stamp=self._stamp(identity),
                                              seconds=round(seconds, 2), outputs=outputs, **info)
        self._save_manifest()
        self.log(f"[{stage}] done in {seconds:.1f} s")

    # -- the stages ----------------------------------------------------------------------
    def _pretrain(self, data: List[str], folder: str, steps=None, warmup_steps=None, until=None) -> dict:
        from .train import pretrain
        cfg = self.cfg.train_config(data, self.path(folder), steps, warmup_steps)
        pretrain(cfg, resume=os.path.exists(self.path(folder, "checkpoint.pt")), progress=self.progress,
                 until=until)
        with open(self.path(folder, "metrics.csv")) as f:
            rows = f.read().splitlines()[1:]
        return dict(outputs=[f"{folder}/checkpoint.pt"], epochs=len(rows),
                    last_loss=float(rows[-1].split(",")[1]) if rows else None)

    def stage_pretrain(self) -> dict:
        info = self._pretrain([self.cfg.target], "pretrain")
        with open(self.path("pretrain", "config.json")) as f:
            ran = json.load(f)  # the schedule as run: images counted after --skip-bad-images
        info.update(images=ran["images"], steps=ran["total_steps"], warmup_steps=ran["resolved_warmup_steps"])
        return info

    def stage_extract(self) -> dict:
        from .encoders import load_encoder
        c = self.cfg
        which = self.path("pretrain", "checkpoint.pt") if c.retrieval_encoder == "pretrain" else c.retrieval_encoder
        encoder = load_encoder(which, c.retrieval_size, device=self.device())
        outs = self.extract_into(encoder, "features")
        rows = [int(np.load(self.path(o), mmap_mode="r").shape[0]) for o in outs]
        return dict(outputs=outs + [o[:-4] + ".paths.txt" for o in outs], rows=rows,
                    encoder=c.retrieval_encoder, encoder_size=encoder.size, dim=encoder.dim)

    def features(self) -> str:
        """The folder of the features that select: whitened (--whiten) or as extracted."""
        return "whitened" if self.cfg.whiten else "features"

    def stage_whiten(self) -> dict:
        from .whiten import Whitening
        outs = self.whiten_into("features", "whitened")
        w = Whitening.load(self.path("whitened", "whitening.npz"))
        self.log(f"[whiten] {w.mean.shape[0]} -> {w.dim} dimensions, fitted on {w.rows} open-set rows")
        return dict(outputs=outs, dim=self.cfg.whiten)

    def whiten_into(self, src: str, dst: str) -> List[str]:
        """PCA whitening fitted on the open-set features in `src` (the run's --whiten
        dimensions); X and every open-set part whitened into `dst`, with their path lists."""
        from .whiten import fit_whitening, whiten_file, Whitening
        parts = ["target"] + [f"openset_{i}" for i in range(len(self.cfg.openset))]
        fitted = self.path(dst, "whitening.npz")
        os.makedirs(self.path(dst), exist_ok=True)
        if os.path.exists(fitted):  # an interrupted attempt's: the fit is the slow part on a large U
            w = Whitening.load(fitted)
        else:
            w = fit_whitening([self.path(src, f"{p}.npy") for p in parts[1:]], self.cfg.whiten,
                              progress=self.progress)
            w.save(fitted)
        outs = [f"{dst}/whitening.npz"]
        for p in parts:
            whiten_file(self.path(src, f"{p}.npy"), self.path(dst, f"{p}.npy"), w)
            shutil.copyfile(self.path(src, f"{p}.paths.txt"), self.path(dst, f"{p}.paths.txt"))
            outs += [f"{dst}/{p}.npy", f"{dst}/{p}.paths.txt"]
        return outs

    def device(self) -> str:
        return self.cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")

    def extract_into(self, encoder, folder: str) -> List[str]:
        """Features of X and of every open-set part into `folder` (relative to the run): a
        finished part of an interrupted call stays, an unfinished one resumes."""
        from .extract import extract
        outs = [f"{folder}/target.npy"] + [f"{folder}/openset_{i}.npy" for i in range(len(self.cfg.openset))]
        for spec, out in zip([self.cfg.target] + list(self.cfg.openset), outs):
            if not os.path.exists(self.path(out)):
                extract(encoder, spec, self.path(out), dtype=self.cfg.feature_dtype, device=self.cfg.device,
                        cache_dir=self.cfg.cache_dir, skip_bad=self.cfg.skip_bad_images,
                        progress=self.progress, workers=self.cfg.workers, amp=self.cfg.retrieval_amp)
        return outs

    def centroids_of(self, folder: str) -> torch.Tensor:
        """k-means (cosine, the run's k and seed) of the target features in `folder`."""
        from simcore_ext.kmeans import make_centroids
        X = torch.from_numpy(np.load(self.path(folder, "target.npy")).astype(np.float32))
        if not torch.isfinite(X).all() or bool((X.norm(dim=1) == 0).any()):
            raise ValueError("target features hold NaN/Inf or zero rows: the encoder diverged "
                             "(try a lower --lr, or --from-stage pretrain)")
        return make_centroids(X, self.cfg.k, "cosine", self.cfg.seed)

    def stage_centroids(self) -> dict:
        from simcore_ext.result import atomic_write
        C = self.centroids_of(self.features())
        atomic_write(self.path("centroids", "centroids.npy"), lambda f: np.save(f, C.numpy()))
        return dict(outputs=["centroids/centroids.npy"], k=int(C.shape[0]))

    def openset_paths(self, folder: str = "features") -> List[str]:
        paths = []
        for i in range(len(self.cfg.openset)):
            with open(self.path(folder, f"openset_{i}.paths.txt")) as f:
                part = [line.rstrip("\n") for line in f]
            rows = int(np.load(self.path(folder, f"openset_{i}.npy"), mmap_mode="r").shape[0])
            if len(part) != rows:  # every later index would name the wrong image
                raise ValueError(f"{self.path(folder, f'openset_{i}.paths.txt')} lists {len(part)} images for "
                                 f"{rows} feature rows: rerun with --from-stage extract")
            paths += part
        return paths

    def select_into(self, features: str, C, out: str):
        """select_coreset (the run's budget, tau, patience) on the open-set features in
        `features` with centroids C; coreset.npz and coreset.txt into `out`. -> (result, summary)"""
        from simcore_ext import select_coreset
        shards = [self.path(features, f"openset_{i}.npy") for i in range(len(self.cfg.openset))]
        n = int(np.load(self.path(features, "target.npy"), mmap_mode="r").shape[0])
        N = sum(int(np.load(s, mmap_mode="r").shape[0]) for s in shards)
        budget = self.cfg.budget if self.cfg.budget is not None else min(50 * n, N)
        r = select_coreset(None, shards, centroids=C, budget=budget, tau=self.cfg.tau,
                           patience=self.cfg.patience, device=self.cfg.device, seed=self.cfg.seed,
                           progress=self.progress)
        r.save(self.path(out, "coreset.npz"))
        paths = self.openset_paths(features)
        _write_lines([os.path.abspath(paths[i]) for i in r.indices.tolist()], self.path(out, "coreset.txt"))
        return r, dict(items=len(r), openset=N, rounds=r.rounds, stop_reason=r.stop_reason,
                       threshold=r.threshold, select_seconds=r.stats["seconds"], device=r.params.get("device"))

    def stage_select(self) -> dict:
        r, summary = self.select_into(self.features(), np.load(self.path("centroids", "centroids.npy")), "select")
        _write_json(summary, self.path("select", "selection.json"))
        self.log(f"[select] {len(r)} of {summary['openset']} open-set images in {r.rounds} rounds "
                 f"({r.stop_reason}), {r.stats['seconds']:.2f} s")
        return dict(outputs=["select/coreset.npz", "select/coreset.txt", "select/selection.json"],
                    identity=["select/coreset.txt"], **summary)

    def _steps(self) -> dict:
        rec = self.stage_record("pretrain")
        return dict(steps=rec["steps"], warmup_steps=rec["warmup_steps"])

    def stage_retrain(self) -> dict:
        """X + the coreset, as many steps as pretraining; with --resample N, N + 1 segments
        of them, each after the first on a coreset the retraining encoder re-selected."""
        steps, n = self._steps(), self.cfg.resample
        check_resample(n, steps["steps"])  # the steps as run (--skip-bad-images may drop images)
        cuts = [steps["steps"] * i // (n + 1) for i in range(n + 2)]
        coreset, resampled = self.path("select", "coreset.txt"), []
        for i in range(n + 1):
            if i > 0:
                resampled.append(self._resample(i, cuts[i], n))
                coreset = self.path("retrain", f"resample_{i}", "coreset.txt")
            if i < n and os.path.exists(self.path("retrain", f"resample_{i + 1}", "selection.json")):
                continue  # this segment ended: the next re-selection read its encoder
            info = self._pretrain([self.cfg.target, coreset], "retrain", until=cuts[i + 1], **steps)
        info.update(steps)
        if n:
            info["identity"] = list(info["outputs"])  # the weights; the coresets are in them
            info["outputs"] += [f"retrain/resample_{i}/{f}" for i in range(1, n + 1)
                                for f in ("coreset.txt", "coreset.npz", "selection.json")]
            info["resampled"] = resampled
        return info

    def _resample(self, i: int, step: int, of: int) -> dict:
        """Re-selection i: the retraining encoder as it is at `step` (its checkpoint ends a
        segment there) extracts X and U, k-means and select_coreset as the centroids and
        select stages do, into retrain/resample_i/. selection.json is written last; a
        finished re-selection is read back, not redone."""
        from simcore_ext import CoresetResult
        from .checkpoint import remove_temporaries
        from .encoders import load_encoder
        folder = f"retrain/resample_{i}"
        done = self.path(folder, "selection.json")
        if not os.path.exists(done):
            os.makedirs(self.path(folder), exist_ok=True)
            remove_temporaries(self.path(folder))  # a killed attempt's
            self.log(f"[retrain] re-selection {i} of {of}: the encoder at step {step} extracts X and U")
            encoder = load_encoder(self.path("retrain", "checkpoint.pt"), self.resample_size(), device=self.device())
            self.extract_into(encoder, f"{folder}/features")
            feats = f"{folder}/features"
            if self.cfg.whiten:  # fitted anew on this encoder's features
                self.whiten_into(feats, f"{folder}/whitened")
                feats = f"{folder}/whitened"
            r, summary = self.select_into(feats, self.centroids_of(feats), folder)
            before = CoresetResult.load(self.path("select" if i == 1 else f"retrain/resample_{i - 1}",
                                                  "coreset.npz")).indices
            kept = len(set(before.tolist()) & set(r.indices.tolist()))
            summary.update(step=step, overlap=kept, overlap_fraction=kept / max(1, len(before)))
            _write_json(summary, done)
            self.log(f"[retrain] re-selection {i} of {of} at step {step}: {len(r)} of {summary['openset']} "
                     f"open-set images in {r.rounds} rounds ({r.stop_reason}); {kept} of the previous "
                     f"{len(before)} kept ({100 * summary['overlap_fraction']:.1f}%)")
        for sub in ("features", "whitened"):
            if os.path.exists(self.path(folder, sub)):
                shutil.rmtree(self.path(folder, sub))  # as large as the open-set's; the coreset stays
        with open(done) as f:
            return json.load(f)

    def stage_baseline(self) -> dict:
        size = self.stage_record("select")["items"]
        paths = self.openset_paths()
        rng = np.random.default_rng(self.cfg.seed)
        pick = np.sort(rng.choice(len(paths), size=size, replace=False))
        _write_lines([os.path.abspath(paths[i]) for i in pick.tolist()], self.path("baseline", "random.txt"))
        from simcore_ext.result import atomic_write
        atomic_write(self.path("baseline", "random_indices.npy"), lambda f: np.save(f, pick))
        info = self._pretrain([self.cfg.target, self.path("baseline", "random.txt")], "baseline", **self._steps())
        info["outputs"] += ["baseline/random.txt", "baseline/random_indices.npy"]
        info.update(self._steps())
        return info

    def models(self) -> Dict[str, str]:
        """Evaluated encoders: label -> the stage that trained it."""
        m = {"X": "pretrain"}
        if self.enabled("baseline"):
            m["X + random"] = "baseline"
        m["X + SimCore"] = "retrain"
        return m

    def resampled_note(self, stage: str) -> str:
        n = self.cfg.resample if stage == "retrain" else 0
        return f" (coreset re-selected {n} time{'s' * (n > 1)} during retraining)" if n else ""

    def stage_eval(self) -> dict:
        """Each encoder's accuracies go to eval/<stage>.json, and each fine-tuning to
        eval/<stage>.finetune-<fraction>.json, with the key they were computed under (its
        checkpoint's stamp, the data, the settings): a re-run computes only what changed or
        is missing, and an interrupted one resumes after the last finished result."""
        from .evaluate import finetune, knn, label_subset, linear_probe
        from .extract import FeatureSource, features_of, load_backbone
        c = self.cfg
        dev = torch.device(c.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        sets = images = None
        results, keep = {}, {"eval.json"}
        for label, stage in self.models().items():
            common = dict(stamp=self.stage_record(stage)["stamp"], target=self.fingerprints["target"],
                          test=self.fingerprints["test"], seed=c.seed)
            key = _hash(dict(common, linear_epochs=c.linear_epochs))
            path = self.path("eval", f"{stage}.json")
            keep.add(f"{stage}.json")
            results[label] = _saved(path, key)
            if results[label] is None:
                if sets is None:
                    sets = [FeatureSource(x, c.image_size, c.cache_dir, c.skip_bad_images, c.workers, self.progress)
                            for x in (c.target, c.test)]
                    if sets[0].classes != sets[1].classes:
                        raise ValueError(f"target and test have different classes: {sets[0].classes} vs {sets[1].classes}")
                    ytr, yte = sets[0].labels(), sets[1].labels()
                backbone, _ = load_backbone(self.path(stage, "checkpoint.pt"), dev)
                ftr, fte = features_of(backbone, sets[0]), features_of(backbone, sets[1])
                k = knn(ftr, ytr, fte, yte)
                lin = linear_probe(ftr, ytr, fte, yte, epochs=c.linear_epochs, seed=c.seed)
                results[label] = dict(linear=lin["top1"], linear_mean_per_class=lin["mean_per_class"],
                                      knn20=k[20], knn200=k[200])
                _write_json(dict(key=key, results=results[label]), path)
                self.log(f"[eval] {label}{self.resampled_note(stage)}: linear {lin['top1']:.1f}%, "
                         f"kNN(20) {k[20]:.1f}%, kNN(200) {k[200]:.1f}%")
            tuned = {}
            for f in fractions(c):
                key = _hash(dict(common, fraction=f, finetune_epochs=c.finetune_epochs, amp=c.amp))
                name = f"{stage}.finetune-{f:g}.json"
                keep.add(name)
                tuned[f"{f:g}"] = _saved(self.path("eval", name), key)
                if tuned[f"{f:g}"] is not None:
                    continue
                if images is None:
                    from .data import load_images
                    images = [load_images(x, c.image_size, cache_dir=c.cache_dir, skip_bad=c.skip_bad_images,
                                          progress=self.progress) for x in (c.target, c.test)]
                    if images[0].classes != images[1].classes:
                        raise ValueError(f"target and test have different classes: {images[0].classes} vs "
                                         f"{images[1].classes}")
                rows, raised = label_subset(images[0].labels, f, c.seed)
                if raised:
                    self.log(f"[eval] label fraction {f:g} leaves {len(raised)} class(es) with no image: "
                             f"rounded up to one image each ({len(rows)} images)")
                backbone, _ = load_backbone(self.path(stage, "checkpoint.pt"), dev)
                acc = finetune(backbone, images[0].images[rows], images[0].labels[rows], images[1].images,
                               images[1].labels, epochs=c.finetune_epochs, seed=c.seed, amp=c.amp,
                               progress=self.progress, desc=f"finetune {label}, {100 * f:g}% of the labels")
                tuned[f"{f:g}"] = dict(acc, images=len(rows))
                _write_json(dict(key=key, results=tuned[f"{f:g}"]), self.path("eval", name))
                self.log(f"[eval] {label}: fine-tuned on {100 * f:g}% of the labels ({len(rows)} images): "
                         f"top-1 {acc['top1']:.1f}%, mean/class {acc['mean_per_class']:.1f}%")
            if tuned:
                results[label] = dict(results[label], finetune=tuned)
        for stale in set(os.listdir(self.path("eval"))) - keep:
            os.remove(self.path("eval", stale))
        _write_json(results, self.path("eval", "eval.json"))
        return dict(outputs=["eval/eval.json"], results=results)

    def stage_report(self) -> dict:
        from .report import write_report
        return write_report(self)


def run(cfg: RunConfig, from_stage: Optional[str] = None, progress: bool = True, log=print) -> dict:
    """Runs (or completes) the pipeline in cfg.out; returns the manifest."""
    cfg.check()
    return Run(cfg, progress=progress, log=log).run(from_stage)
