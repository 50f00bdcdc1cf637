"""Issue 13 (hardening): symlinked --out, odd file names, damaged caches and result files,
file modes, leftover temporaries, up-front number checks, one-line errors, --quiet."""
import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from simcore.checkpoint import load_checkpoint, save_checkpoint
from simcore.cli import main
from simcore.data import list_items, load_images
from simcore.extract import extract, load_backbone
from simcore.leftovers import writer_gone
from simcore.pipeline import Run, RunConfig
from simcore.train import TrainConfig, pretrain
from simcore_ext import CoresetResult, select_coreset
from simcore_ext.result import atomic_write

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _images(root, classes, per_class, seed, size=16):
    rng = np.random.default_rng(seed)
    for c in range(classes):
        os.makedirs(os.path.join(root, f"class{c}"), exist_ok=True)
        for i in range(per_class):
            img = rng.integers(0, 256, (size, size, 3), dtype=np.uint8) // (c + 1)
            Image.fromarray(img).save(os.path.join(root, f"class{c}", f"{i:03d}.png"))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("hardening-data")
    _images(str(root / "train"), 2, 12, 0)
    _images(str(root / "openset"), 3, 8, 1)
    cfg = TrainConfig(data=[str(root / "train")], out=str(root / "pre"), arch="resnet18-w0.125", epochs=1,
                      batch_size=8, warmup_epochs=0, image_size=16, amp="off", cache_dir=str(root / "cache"))
    pretrain(cfg, progress=False)
    return root


def config(data, out, **kw):
    base = dict(target=str(data / "train"), openset=[str(data / "openset")], out=str(out),
                arch="resnet18-w0.125", epochs=1, batch_size=8, warmup_epochs=0, image_size=16, k=2,
                budget=4, tau=None, linear_epochs=2, amp="off", cache_dir=str(data / "cache"))
    base.update(kw)
    return RunConfig(**base)


def one_line_error(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


# 1 ------------------------------------------------------------------------------------
def test_out_inside_the_data_through_a_symlink_is_refused(data, tmp_path):
    os.symlink(data / "openset", tmp_path / "ulink")
    with pytest.raises(ValueError, match="lies inside the data folder"):  # the data through a link
        config(data, data / "openset" / "run2", openset=[str(tmp_path / "ulink")]).check()
    os.symlink(data / "openset", tmp_path / "outlink")
    with pytest.raises(ValueError, match="lies inside the data folder"):  # --out through a link
        config(data, tmp_path / "outlink" / "run2").check()
    _images(str(tmp_path / "run" / "features" / "u"), 2, 2, 4)
    with pytest.raises(ValueError, match="lies in features/ of --out"):  # that stage would delete it
        config(data, tmp_path / "run", openset=[str(tmp_path / "run" / "features" / "u")]).check()
    assert not os.path.exists(data / "openset" / "run2")


# 2 ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["a\nb.png", "a\rb.png", "a\u2028b.png", "a\x0bb.png", os.fsdecode(b"\xff\xfe.png")])
def test_file_names_a_path_list_cannot_hold_are_refused_up_front(data, tmp_path, capsys, name):
    root = tmp_path / "U"
    _images(str(root), 2, 3, 5)
    Image.new("RGB", (16, 16)).save(os.path.join(root, "class1", name), format="PNG")
    with pytest.raises(ValueError, match="image file name") as e:
        list_items("folder", str(root))
    assert repr(os.path.join(root, "class1", name)) in str(e.value)
    assert main(["run", "--target", str(data / "train"), "--openset", str(root), "--out",
                 str(tmp_path / "run"), "--quiet"]) == 2
    assert "image file name" in one_line_error(capsys)
    assert not os.path.exists(tmp_path / "run")


# 3, 4 ---------------------------------------------------------------------------------
def test_a_damaged_cache_entry_is_a_miss(tmp_path):
    _images(str(tmp_path / "X"), 2, 4, 3)
    first = load_images(str(tmp_path / "X"), 16, cache_dir=str(tmp_path / "c"), progress=False)
    (entry,) = (tmp_path / "c" / "images").iterdir()
    for damage in (lambda b: b[: len(b) // 2], lambda b: b"", lambda b: b"not a tensor file"):
        entry.write_bytes(damage(entry.read_bytes()))
        again = load_images(str(tmp_path / "X"), 16, cache_dir=str(tmp_path / "c"), progress=False)
        assert torch.equal(again.images, first.images) and again.paths == first.paths
        assert torch.equal(torch.load(entry, weights_only=True)["images"], first.images)  # rewritten
    torch.save(dict(images=torch.zeros(8, 3, 4, 4, dtype=torch.uint8), labels=torch.zeros(8, dtype=torch.int64),
                    classes=["a"], paths=["x"] * 8), entry)  # loads, but is not this entry
    assert torch.equal(load_images(str(tmp_path / "X"), 16, cache_dir=str(tmp_path / "c")).images, first.images)


def test_the_flag_not_the_cache_decides_whether_bad_images_stop(tmp_path):
    _images(str(tmp_path / "X"), 2, 4, 3)
    (tmp_path / "X" / "class0" / "bad.png").write_bytes(b"not an image")
    kw = dict(cache_dir=str(tmp_path / "c"), progress=False)
    with pytest.raises(ValueError, match="bad.png"):
        load_images(str(tmp_path / "X"), 16, **kw)
    assert len(load_images(str(tmp_path / "X"), 16, skip_bad=True, **kw)) == 8
    with pytest.raises(ValueError, match="bad.png"):  # the skipping entry is there now
        load_images(str(tmp_path / "X"), 16, **kw)
    assert len(load_images(str(tmp_path / "X"), 16, skip_bad=True, **kw)) == 8


# 5 ------------------------------------------------------------------------------------
@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002])
def test_written_files_honour_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        atomic_write(tmp_path / "a.json", lambda f: f.write("{}"), binary=False)
        save_checkpoint(str(tmp_path / "c.pt"), x=torch.zeros(2))
        select_coreset(torch.randn(5, 4), torch.randn(40, 4), k=2, budget=3).save(tmp_path / "r.npz")
    finally:
        os.umask(old)
    for name in ("a.json", "c.pt", "r.npz"):
        assert os.stat(tmp_path / name).st_mode & 0o777 == 0o666 & ~umask, name
    os.chmod(tmp_path / "a.json", 0o640)  # rewriting keeps an existing file's mode, as open() does
    atomic_write(tmp_path / "a.json", lambda f: f.write("[]"), binary=False)
    assert os.stat(tmp_path / "a.json").st_mode & 0o777 == 0o640


# 6 ------------------------------------------------------------------------------------
LEFTOVERS = [".tmp-123-abcd.pt", ".tmp-k2j3h4.pt", "metrics.csv.tmp-4242", "config.json.tmp-4242"]


def test_a_resumed_pretraining_and_extraction_remove_their_temporaries(data, tmp_path):
    cfg = TrainConfig(data=[str(data / "train")], out=str(tmp_path / "pre"), arch="resnet18-w0.125", epochs=1,
                      batch_size=8, warmup_epochs=0, image_size=16, amp="off", cache_dir=str(data / "cache"))
    pretrain(cfg, progress=False)
    for name in LEFTOVERS + ["notes.txt"]:
        (tmp_path / "pre" / name).write_bytes(b"x" * 100)
    pretrain(cfg, resume=True, progress=False)  # as after a kill past the last epoch's checkpoint
    assert sorted(os.listdir(tmp_path / "pre")) == ["checkpoint.pt", "config.json", "metrics.csv", "notes.txt"]
    (tmp_path / "f").mkdir()
    for name in ("u.npy.paths.tmp-4242", "u.npy.progress.json.tmp-4242", "v.npy.paths.tmp-4242"):
        (tmp_path / "f" / name).write_text("x")
    extract(str(tmp_path / "pre" / "checkpoint.pt"), str(data / "openset"), str(tmp_path / "f" / "u.npy"),
            cache_dir=str(data / "cache"), progress=False)
    assert sorted(os.listdir(tmp_path / "f")) == ["u.npy", "u.paths.txt", "v.npy.paths.tmp-4242"]


def test_a_resumed_stage_removes_the_temporaries_of_the_killed_one(data, tmp_path):
    cfg = config(data, tmp_path / "run")
    Run(cfg.check(), progress=False, log=lambda s: None).run()
    manifest = json.load(open(tmp_path / "run" / "manifest.json"))
    manifest["stages"]["extract"]["status"] = "running"  # as a kill -9 inside extraction leaves it
    (tmp_path / "run" / "manifest.json").write_text(json.dumps(manifest))
    for name in LEFTOVERS:
        (tmp_path / "run" / "features" / name).write_text("x")
    Run(cfg.check(), progress=False, log=lambda s: None).run()
    assert not set(LEFTOVERS) & set(os.listdir(tmp_path / "run" / "features"))


# 7 ------------------------------------------------------------------------------------
def _npz(path, **arrays):
    with zipfile.ZipFile(path, "w") as z:
        for name, a in arrays.items():
            with z.open(name + ".npy", "w") as f:
                if isinstance(a, bytes):
                    f.write(a)
                else:
                    np.lib.format.write_array(f, np.asarray(a), allow_pickle=False)


def _good_arrays():
    r = select_coreset(torch.randn(6, 4, generator=torch.Generator().manual_seed(0)),
                       torch.randn(50, 4, generator=torch.Generator().manual_seed(1)), k=2, budget=5, tau=None)
    meta = dict(format="simcore.coreset/1", stop_reason=r.stop_reason, threshold=r.threshold, params=r.params,
                stats=r.stats)
    return dict(indices=r.indices.numpy(), round_scores=r.round_scores.numpy(), round_sizes=r.round_sizes.numpy(),
                centroids=r.centroids.numpy(), meta=np.array(json.dumps(meta)))


def _meta_with(**changes):
    a = _good_arrays()
    meta = json.loads(str(a["meta"]))
    meta.update(changes)
    return np.array(json.dumps(meta))


def _huge_header():
    import io
    f = io.BytesIO()
    np.lib.format.write_array_header_1_0(f, {"descr": "<i8", "fortran_order": False, "shape": (1 << 40,)})
    return f.getvalue() + b"\0" * 64


@pytest.mark.parametrize("change, what", [
    (dict(indices=np.array([0.5, 1.0, 2.0, 3.0, 4.0])), "indices"),
    (dict(indices=np.array([0, 1, -2, 3, 4])), "outside the open-set"),
    (dict(indices=np.array([0, 1, 2, 3, 50])), "outside the open-set"),
    (dict(indices=np.array([0, 1, 1, 3, 4])), "twice"),
    (dict(indices=np.array([[0, 1, 2, 3, 4]])), "indices"),
    (dict(round_sizes=lambda: _good_arrays()["round_sizes"] + 1), "do not add up"),
    (dict(round_scores=np.arange(7.0)), "round scores"),
    (dict(centroids=np.full((2, 4), np.nan, np.float32)), "NaN"),
    (dict(centroids=np.zeros(4, np.float32)), "centroids"),
    (dict(meta=lambda: _meta_with(stop_reason="tired")), "unknown stop_reason"),
    (dict(meta=lambda: _meta_with(threshold="high")), "threshold"),
    (dict(meta=lambda: _meta_with(params=[])), "params"),
    (dict(meta=lambda: np.array("{not json")), "not valid JSON"),
    (dict(meta=lambda: np.array(3.0)), "meta"),
    (dict(indices=None), "no 'indices'"),
    (dict(indices=_huge_header()), "more than the file holds"),
    (dict(centroids=b"\x93NUMPY garbage"), "centroids"),
])
def test_load_validates_what_it_reads(tmp_path, change, what):
    a = _good_arrays()
    for k, v in change.items():
        v = v() if callable(v) else v
        if v is None:
            del a[k]
        else:
            a[k] = v
    _npz(tmp_path / "c.npz", **a)
    with pytest.raises(ValueError, match=what) as e:
        CoresetResult.load(tmp_path / "c.npz")
    assert str(tmp_path / "c.npz") in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("damage", [lambda b: b"", lambda b: b[:100], lambda b: b[: len(b) // 2],
                                    lambda b: b[:-30], lambda b: b"PK\x03\x04" + b"\0" * 200,
                                    lambda b: bytes(x ^ 0x55 for x in b)])
def test_damaged_result_files_are_one_value_error(tmp_path, damage):
    _npz(tmp_path / "good.npz", **_good_arrays())
    assert len(CoresetResult.load(tmp_path / "good.npz")) == 5
    (tmp_path / "bad.npz").write_bytes(damage((tmp_path / "good.npz").read_bytes()))
    with pytest.raises(ValueError, match="bad.npz"):
        CoresetResult.load(tmp_path / "bad.npz")


# 8 ------------------------------------------------------------------------------------
@pytest.mark.parametrize("kw, match", [
    (dict(lr=float("nan")), "lr must be a finite number > 0"),
    (dict(lr=-1.0), "lr must be a finite number > 0"),
    (dict(lr=float("inf")), "lr must be"),
    (dict(method_options=dict(temperature=0.0)), "temperature must be a finite number > 0"),
    (dict(method_options=dict(temperature=float("nan"))), "temperature"),
    (dict(method="moco", method_options=dict(queue_size=0)), "queue_size must be an int >= 1"),
    (dict(method_options=dict(queue_size=64)), "simclr has no option queue_size"),
    (dict(seed=2**64), "seed must be an int in"),
])
def test_numbers_that_would_fail_later_are_checked_up_front(data, tmp_path, kw, match):
    with pytest.raises(ValueError, match=match):
        config(data, tmp_path / "run", **kw).check()
    assert not os.path.exists(tmp_path / "run")


@pytest.mark.parametrize("argv, match", [
    (["--lr", "nan"], "argument --lr: expected a finite number, got 'nan'"),
    (["--temperature", "inf"], "argument --temperature: expected a finite number"),
    (["--tau", "nan"], "tau must be a number"),
    (["--budget", "nan%"], "budget must look like"),
    (["--budget", "abc"], "budget must look like"),
])
def test_bad_numbers_are_one_line_where_parsed(data, tmp_path, capsys, argv, match):
    with pytest.raises(SystemExit) as e:
        main(["run", "--target", str(data / "train"), "--openset", str(data / "openset"),
              "--out", str(tmp_path / "run")] + argv)
    assert e.value.code == 2
    assert match in one_line_error(capsys)


def test_seed_beyond_the_generators_is_refused(data, tmp_path, capsys):
    with pytest.raises(ValueError, match="seed must be <="):
        select_coreset(torch.randn(5, 4), torch.randn(40, 4), k=2, budget=3, seed=2**64)
    assert main(["run", "--target", str(data / "train"), "--openset", str(data / "openset"),
                 "--out", str(tmp_path / "run"), "--seed", str(2**64)]) == 2
    assert "seed must be an int in [0, 4294967295]" in one_line_error(capsys)


def test_eval_checks_its_numbers_before_decoding(data, tmp_path, capsys):
    base = ["eval", "linear", "--checkpoint", str(data / "pre" / "checkpoint.pt"), "--train",
            str(data / "train"), "--test", str(data / "train"), "--cache-dir", str(tmp_path / "c")]
    for argv, match in ((["--val-fraction", "1.5"], "--val-fraction must be in [0, 1)"),
                        (["--epochs", "0"], "--epochs must be >= 1"), (["--lr", "-1"], "--lr must be > 0")):
        assert main(base + argv) == 2
        assert match in one_line_error(capsys)
    assert not os.path.exists(tmp_path / "c")  # nothing decoded


# 9 ------------------------------------------------------------------------------------
def test_cache_dir_naming_a_file(data, tmp_path, capsys):
    (tmp_path / "afile").write_text("")
    for cache in (tmp_path / "afile", tmp_path / "afile" / "sub"):
        assert main(["run", "--target", str(data / "train"), "--openset", str(data / "openset"),
                     "--out", str(tmp_path / "run"), "--cache-dir", str(cache)]) == 2
        assert "is a file, not a folder" in one_line_error(capsys)
        assert main(["extract", "--checkpoint", str(data / "pre" / "checkpoint.pt"), "--data",
                     str(data / "train"), "--out", str(tmp_path / "f.npy"), "--cache-dir", str(cache)]) == 2
        assert "is a file, not a folder" in one_line_error(capsys)


def test_select_on_empty_or_foreign_feature_files(tmp_path, capsys):
    np.save(tmp_path / "U.npy", np.random.default_rng(0).standard_normal((50, 4)).astype(np.float32))
    (tmp_path / "empty.npy").write_bytes(b"")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    for flag in ("--target-features", "--centroids"):
        for bad in ("empty.npy", "obj.npy"):
            assert main(["select", flag, str(tmp_path / bad), "--openset-features", str(tmp_path / "U.npy"),
                         "--out", str(tmp_path / "o"), "--quiet"]) == 2
            line = one_line_error(capsys)
            assert f"{flag} {tmp_path / bad}: cannot read it as a .npy array" in line, line


def test_checkpoints_that_do_not_fit_their_config(data, tmp_path, capsys):
    state = load_checkpoint(str(data / "pre" / "checkpoint.pt"))
    wrong_arch = dict(state, config=dict(state["config"], arch="resnet18-w0.25"))
    save_checkpoint(str(tmp_path / "arch.pt"), **wrong_arch)
    with pytest.raises(ValueError, match=r"weights do not fit its config's arch 'resnet18-w0.25'") as e:
        load_backbone(str(tmp_path / "arch.pt"), torch.device("cpu"))
    assert "\n" not in str(e.value)
    no_arch = dict(state, config={k: v for k, v in state["config"].items() if k != "arch"})
    save_checkpoint(str(tmp_path / "noarch.pt"), **no_arch)
    with pytest.raises(ValueError, match="its config has no valid 'arch'"):
        load_backbone(str(tmp_path / "noarch.pt"), torch.device("cpu"))
    assert main(["extract", "--checkpoint", str(tmp_path / "arch.pt"), "--data", str(data / "train"),
                 "--out", str(tmp_path / "f.npy"), "--quiet"]) == 2
    assert "weights do not fit" in one_line_error(capsys)


def test_tensors_on_the_meta_device_are_a_value_error():
    with pytest.raises(ValueError, match="openset is on the meta device"):
        select_coreset(torch.randn(5, 4), torch.empty(40, 4, device="meta"), k=2, budget=3)
    with pytest.raises(ValueError, match="target is on the meta device"):
        select_coreset(torch.empty(5, 4, device="meta"), torch.randn(40, 4), k=2, budget=3)


# 10 -----------------------------------------------------------------------------------
def test_checkpoint_messages(tmp_path):
    import argparse
    torch.save({"x": argparse.Namespace(a=1)}, tmp_path / "code.pt")
    with pytest.raises(ValueError, match="holds Python code or objects beyond tensors") as e:
        load_checkpoint(str(tmp_path / "code.pt"))
    assert "weights_only=False" not in str(e.value) and "\n" not in str(e.value)
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(ValueError, match="empty.pt: the file is empty"):
        load_checkpoint(str(tmp_path / "empty.pt"))
    (tmp_path / "junk.pt").write_bytes(b"\0" * 10)
    with pytest.raises(ValueError, match=r"cannot read checkpoint .*junk.pt: \S") as e:
        load_checkpoint(str(tmp_path / "junk.pt"))
    assert "\n" not in str(e.value)
    (tmp_path / "text.pt").write_text("junk\n")  # torch's legacy reader: a bare magic number
    with pytest.raises(ValueError, match=r"text.pt: not a PyTorch file$"):
        load_checkpoint(str(tmp_path / "text.pt"))


def test_budget_and_groups_messages(data, tmp_path, capsys):
    base = ["run", "--target", str(data / "train"), "--openset", str(data / "openset"), "--out", str(tmp_path / "r")]
    assert main(base + ["--budget=-5"]) == 2
    assert "budget must be >= 1 item, got -5" in one_line_error(capsys)
    (tmp_path / "g.tsv").write_bytes(b"folder\tgroup\nclass\xe9\tx\n")
    assert main(base + ["--openset-groups", str(tmp_path / "g.tsv")]) == 2
    assert str(tmp_path / "g.tsv") in one_line_error(capsys)


# 11 -----------------------------------------------------------------------------------
def test_a_one_class_target_with_a_test_split_is_refused(tmp_path):
    _images(str(tmp_path / "X"), 1, 8, 0)
    _images(str(tmp_path / "T"), 1, 4, 1)
    _images(str(tmp_path / "U"), 2, 4, 2)
    cfg = RunConfig(target=str(tmp_path / "X"), openset=[str(tmp_path / "U")], out=str(tmp_path / "run"),
                    test=str(tmp_path / "T"), batch_size=4)
    with pytest.raises(ValueError, match="has one class"):
        cfg.check()
    cfg.test = None  # without --test, one class is a legitimate target
    cfg.check()


# 12 -----------------------------------------------------------------------------------
def test_quiet_silences_the_decoding_bars(data, tmp_path, capsys):
    assert main(["extract", "--checkpoint", str(data / "pre" / "checkpoint.pt"), "--data", str(data / "openset"),
                 "--out", str(tmp_path / "f.npy"), "--cache-dir", str(tmp_path / "fresh"), "--quiet"]) == 0
    assert capsys.readouterr().err == ""


# 13 -----------------------------------------------------------------------------------
def test_bad_open_set_rows_are_named_by_the_first_pass(tmp_path):
    U = torch.randn(300, 4)
    U[250, 1] = float("inf")
    np.save(tmp_path / "u0.npy", U[:100].numpy())
    np.save(tmp_path / "u1.npy", U[100:].numpy())
    with pytest.raises(ValueError, match="openset row 250 contains NaN or Inf"):
        select_coreset(torch.randn(6, 4), [str(tmp_path / "u0.npy"), str(tmp_path / "u1.npy")], k=2,
                       budget=3, chunk_size=32)


# beyond the list ----------------------------------------------------------------------
def test_a_link_back_up_the_tree_is_walked_once(tmp_path):
    _images(str(tmp_path / "X"), 2, 3, 0)
    os.symlink(tmp_path / "X" / "class0", tmp_path / "X" / "class0" / "loop")
    os.symlink(tmp_path / "X", tmp_path / "X" / "class1" / "up")
    items, classes = list_items("folder", str(tmp_path / "X"))
    assert classes == ["class0", "class1"] and len(items) == 6


def test_damaged_progress_files_are_misses(data, tmp_path):
    ckpt = str(data / "pre" / "checkpoint.pt")
    kw = dict(cache_dir=str(data / "cache"), progress=False)
    clean = np.load(extract(ckpt, str(data / "openset"), str(tmp_path / "a.npy"), **kw))
    np.lib.format.open_memmap(tmp_path / "b.npy.partial", mode="w+", dtype=np.float16, shape=clean.shape).flush()
    (tmp_path / "b.npy.progress.json").write_text('{"rows_do')  # a marker cut short
    assert np.array_equal(np.load(extract(ckpt, str(data / "openset"), str(tmp_path / "b.npy"), **kw)), clean)
    with pytest.raises(ValueError, match="batch_size must be an int >= 1, got 0"):
        extract(ckpt, str(data / "openset"), str(tmp_path / "c.npy"), batch_size=0, **kw)


def test_a_run_folder_damaged_by_hand(data, tmp_path):
    cfg = config(data, tmp_path / "run", test=str(data / "train"), linear_epochs=1)
    Run(cfg.check(), progress=False, log=lambda s: None).run()
    manifest = json.load(open(tmp_path / "run" / "manifest.json"))
    manifest["stages"]["eval"]["status"] = "running"  # killed while evaluating...
    (tmp_path / "run" / "manifest.json").write_text(json.dumps(manifest))
    (tmp_path / "run" / "eval" / "pretrain.json").write_text("{")  # ...with one result file damaged
    lines = []
    Run(cfg.check(), progress=False, log=lines.append).run()
    assert [line.split(":")[0] for line in lines if line.startswith("[eval] X")] == ["[eval] X"]  # only it redone
    paths = tmp_path / "run" / "features" / "openset_0.paths.txt"
    paths.write_text("".join(paths.read_text().splitlines(keepends=True)[:-1]))  # a line lost
    with pytest.raises(ValueError, match="lists 23 images for 24 feature rows"):
        Run(cfg.check(), progress=False, log=lambda s: None).run(from_stage="select")


def test_a_dangling_link_is_an_unreadable_image(tmp_path):
    _images(str(tmp_path / "X"), 2, 3, 0)
    os.symlink(tmp_path / "gone.png", tmp_path / "X" / "class0" / "dead.png")
    kw = dict(cache_dir=str(tmp_path / "c"), progress=False)
    with pytest.raises(ValueError, match="cannot read image .*dead.png"):
        load_images(str(tmp_path / "X"), 16, **kw)
    assert len(load_images(str(tmp_path / "X"), 16, skip_bad=True, **kw)) == 6


def test_the_shared_cache_loses_only_old_temporaries_of_dead_writers(tmp_path):
    _images(str(tmp_path / "X"), 2, 3, 0)
    folder = tmp_path / "c" / "images"
    folder.mkdir(parents=True)
    names = {"old_dead": ".tmp-999999999-ab.pt", "new_dead": ".tmp-999999998-cd.pt",
             "old_alive": f".tmp-{os.getppid()}-ef.pt", "other": "keep.pt"}
    for key, name in names.items():
        (folder / name).write_bytes(b"x" * 10)
        if key.startswith("old") or key == "other":
            os.utime(folder / name, (1e9, 1e9))
    load_images(str(tmp_path / "X"), 16, cache_dir=str(tmp_path / "c"), progress=False)
    left = set(os.listdir(folder))
    assert names["old_dead"] not in left and {names["new_dead"], names["old_alive"], names["other"]} <= left


def test_writer_gone_only_for_processes_that_ended():
    """The one test behind every orphan clean-up (cache, generator, select --whiten): this
    process, a live one and impossible pids are kept; an ended child's pid is gone."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert writer_gone(child.pid)
    assert not writer_gone(os.getpid()) and not writer_gone(os.getppid())
    assert not writer_gone(2**70)  # OverflowError in os.kill: kept
    assert not writer_gone(1)  # init: alive (root) or another user's (PermissionError)


def test_writer_gone_keeps_another_users_live_process(monkeypatch):
    """Shared caches: a live writer owned by another user answers os.kill with EPERM."""
    def kill(pid, sig):
        raise PermissionError(1, "Operation not permitted")
    monkeypatch.setattr(os, "kill", kill)
    assert not writer_gone(12345)


def test_a_full_disk_is_one_line_and_leaves_nothing_half_written(tmp_path, capsys, monkeypatch):
    import errno
    import simcore_ext.result as result_mod
    np.save(tmp_path / "X.npy", np.random.default_rng(0).standard_normal((20, 4)).astype(np.float32))
    np.save(tmp_path / "U.npy", np.random.default_rng(1).standard_normal((200, 4)).astype(np.float32))

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(result_mod.os, "fsync", full)
    assert main(["select", "--target-features", str(tmp_path / "X.npy"), "--openset-features",
                 str(tmp_path / "U.npy"), "--out", str(tmp_path / "sel"), "--k", "2", "--budget", "5",
                 "--quiet"]) == 2
    assert "No space left on device" in one_line_error(capsys)
    assert os.listdir(tmp_path / "sel") == []
