"""The generated demo dataset: layout, counts, shares, determinism, reuse and atomicity."""
import csv
import hashlib
import json
import os
import re

import pytest
from PIL import Image

from simcore import synthetic
from simcore.synthetic import GROUPS, make_demo_data

SMALL = dict(classes=6, train_per_class=10, test_per_class=4, openset_size=300)


def files(root):
    """{path relative to root: bytes} of every file below root."""
    out = {}
    for dirpath, _, names in os.walk(root):
        for n in names:
            p = os.path.join(dirpath, n)
            with open(p, "rb") as f:
                out[os.path.relpath(p, root)] = f.read()
    return out


def read_tsv(root):
    with open(os.path.join(root, "openset_classes.tsv"), newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("demo") / "data")
    return root, make_demo_data(root, seed=3, **SMALL)


def test_layout_counts_and_tsv(small):
    root, m = small
    assert sorted(os.listdir(root)) == ["manifest.json", "openset", "openset_classes.tsv", "target"]
    with open(os.path.join(root, "manifest.json")) as f:
        assert json.load(f) == m
    classes = m["classes"]
    assert len(classes) == len(set(classes)) == SMALL["classes"]
    for split, per in (("train", SMALL["train_per_class"]), ("test", SMALL["test_per_class"])):
        assert sorted(os.listdir(os.path.join(root, "target", split))) == sorted(classes)
        for c in classes:
            names = sorted(os.listdir(os.path.join(root, "target", split, c)))
            assert names == [f"{i:05d}.png" for i in range(per)]

    rows = read_tsv(root)
    assert list(rows[0]) == ["folder", "source", "class", "group", "images"]
    assert sorted(r["folder"] for r in rows) == sorted(os.listdir(os.path.join(root, "openset")))
    for r in rows:
        assert r["source"] == "synthetic" and r["group"] in GROUPS
        assert len(os.listdir(os.path.join(root, "openset", r["folder"]))) == int(r["images"]) > 0
    per_group = {g: sum(int(r["images"]) for r in rows if r["group"] == g) for g in GROUPS}
    assert sum(per_group.values()) == SMALL["openset_size"] == m["counts"]["openset"]
    assert per_group == {g: m["counts"][g] for g in GROUPS}
    assert m["counts"]["train"] == SMALL["classes"] * SMALL["train_per_class"]
    assert m["counts"]["test"] == SMALL["classes"] * SMALL["test_per_class"]

    # Target-class folders of U are the target's classes; the groups have the requested shares.
    target_rows = [r for r in rows if r["group"] == "target-class"]
    assert sorted(r["folder"] for r in target_rows) == sorted(classes)
    assert per_group["target-class"] == round(0.05 * SMALL["openset_size"])
    assert per_group["related"] == round(0.15 * SMALL["openset_size"])
    assert len({r["folder"] for r in rows if r["group"] == "related"}) >= 2
    assert len({r["folder"] for r in rows if r["group"] == "other"}) >= 8
    assert not {r["folder"] for r in rows if r["group"] != "target-class"} & set(classes)


def test_shares_follow_the_arguments(tmp_path):
    m = make_demo_data(str(tmp_path / "d"), seed=0, classes=2, train_per_class=2, test_per_class=1,
                       openset_size=200, share_target=0.2, share_related=0.3)
    assert (m["counts"]["target-class"], m["counts"]["related"], m["counts"]["other"]) == (40, 60, 100)
    m = make_demo_data(str(tmp_path / "e"), seed=0, classes=2, train_per_class=2, test_per_class=1,
                       openset_size=200, share_target=0.0, share_related=0.0)
    assert (m["counts"]["target-class"], m["counts"]["related"], m["counts"]["other"]) == (0, 0, 200)
    assert {r["group"] for r in read_tsv(str(tmp_path / "e"))} == {"other"}


def test_related_squares_carry_the_target_patterns(tmp_path):
    m = make_demo_data(str(tmp_path / "d"), seed=0, classes=3, train_per_class=2, test_per_class=1,
                       openset_size=60, share_target=0.1, share_related=0.3, related="squares")
    rows = read_tsv(str(tmp_path / "d"))
    related = sorted(r["folder"] for r in rows if r["group"] == "related")
    assert related == sorted(c.replace("disc", "square") for c in m["classes"]) and m["counts"]["related"] == 18
    assert m["params"]["related"] == "squares"
    with pytest.raises(ValueError, match="related must be"):
        make_demo_data(str(tmp_path / "e"), related="circles")


def test_images_are_rgb_of_the_requested_size(small, tmp_path):
    root, _ = small
    for rel in files(root):
        if rel.endswith(".png"):
            with Image.open(os.path.join(root, rel)) as im:
                assert (im.format, im.mode, im.size) == ("PNG", "RGB", (32, 32)), rel
    make_demo_data(str(tmp_path / "tiny"), image_size=8, classes=2, train_per_class=1, test_per_class=1,
                   openset_size=40)
    with Image.open(tmp_path / "tiny" / "openset" / "glyphs" / "00000.png") as im:
        assert (im.mode, im.size) == ("RGB", (8, 8))


def test_no_two_images_are_the_same(small):
    root, _ = small
    pngs = [b for rel, b in files(root).items() if rel.endswith(".png")]
    assert len({hashlib.sha1(b).digest() for b in pngs}) == len(pngs)


def test_same_seed_same_bytes_other_seed_other_images(small, tmp_path):
    root, _ = small
    make_demo_data(str(tmp_path / "a"), seed=3, **SMALL)
    make_demo_data(str(tmp_path / "b"), seed=4, **SMALL)
    again, other = files(tmp_path / "a"), files(tmp_path / "b")
    assert again == files(root)
    assert other.keys() == again.keys()
    pngs = [k for k in again if k.endswith(".png")]
    assert sum(other[k] != again[k] for k in pngs) == len(pngs)


def test_second_call_reuses_the_folder(small):
    root, m = small
    before = {p: os.stat(os.path.join(root, p)).st_mtime_ns for p in files(root)}
    assert make_demo_data(root + os.sep, seed=3, **SMALL) == m
    assert {p: os.stat(os.path.join(root, p)).st_mtime_ns for p in files(root)} == before


def test_an_other_folder_is_left_alone(small, tmp_path):
    root, _ = small
    before = files(root)
    with pytest.raises(FileExistsError, match=re.escape(root)):
        make_demo_data(root, seed=4, **SMALL)
    with pytest.raises(FileExistsError):
        make_demo_data(root, seed=3, **{**SMALL, "openset_size": 301})
    assert files(root) == before
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="mine"):
        make_demo_data(str(tmp_path / "mine"), **SMALL)
    assert os.listdir(tmp_path / "mine") == ["notes.txt"]


@pytest.mark.parametrize("name, value, message", [
    ("seed", -1, "seed"), ("image_size", 7, "image_size"), ("image_size", 32.0, "image_size"),
    ("classes", 1, "classes"), ("classes", synthetic.MAX_CLASSES + 1, "classes"),
    ("train_per_class", 0, "train_per_class"), ("test_per_class", -3, "test_per_class"),
    ("openset_size", 0, "openset_size"), ("share_target", -0.1, "share_target"),
    ("share_target", 1.0, "share_target"), ("share_related", 1.5, "share_related"),
    ("share_related", float("nan"), "share_related"),
    ("share_related", 0.95, r"share_target \+ share_related"),  # 0.05 + 0.95 >= 1
])
def test_bad_arguments_raise_before_any_work(tmp_path, name, value, message):
    with pytest.raises(ValueError, match=message):
        make_demo_data(str(tmp_path / "d"), **{**SMALL, name: value})
    assert os.listdir(tmp_path) == []


def test_success_leaves_no_temporary_folder(tmp_path):
    make_demo_data(str(tmp_path / "d"), **SMALL)
    assert os.listdir(tmp_path) == ["d"]


def test_a_failure_midway_leaves_nothing(tmp_path, monkeypatch):
    write, calls = synthetic._write_png, []

    def flaky(path, pixels):
        calls.append(path)
        if len(calls) > 5:
            raise OSError("disk full")
        write(path, pixels)

    monkeypatch.setattr(synthetic, "_write_png", flaky)
    with pytest.raises(OSError, match="disk full"):
        make_demo_data(str(tmp_path / "d"), **SMALL)
    assert os.listdir(tmp_path) == []
    monkeypatch.setattr(synthetic, "_write_png", write)
    make_demo_data(str(tmp_path / "d"), **SMALL)  # and a later call starts afresh
    assert os.listdir(tmp_path) == ["d"]


def test_a_killed_generators_half_tree_is_removed(tmp_path):
    dead = tmp_path / "d.tmp-999999999"  # above any pid_max: no such process
    (dead / "train").mkdir(parents=True)
    alive = tmp_path / f"d.tmp-{os.getpid()}x"  # not a pid suffix: left alone
    alive.mkdir()
    make_demo_data(str(tmp_path / "d"), seed=0, classes=2, train_per_class=1, test_per_class=1, openset_size=40)
    assert sorted(os.listdir(tmp_path)) == sorted(["d", alive.name])
    make_demo_data(str(tmp_path / "new" / "d"), seed=0, classes=2, train_per_class=1, test_per_class=1,
                   openset_size=40)  # a parent folder that does not exist yet
