"""Datasets: ImageFolder decoding and its cache, bad and missing files, torchvision names
(the download path runs against a local stand-in: no network here)."""
import os

import numpy as np
import pytest
import torch
from PIL import Image

from simcore import data
from simcore.data import load_images, parse_spec


def make_folder(root, classes=("b_dog", "a_cat"), per_class=3, size=(40, 30)):
    rng = np.random.default_rng(0)
    for c in classes:
        os.makedirs(root / c / "sub", exist_ok=True)
        for i in range(per_class):
            where = root / c / ("sub" if i == 0 else "")  # any depth below the class folder
            arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
            Image.fromarray(arr).save(where / f"img{i}.{'png' if i % 2 else 'jpg'}")
    (root / "a_cat" / "notes.txt").write_text("not an image")
    return root


def test_folder_decodes_and_caches(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "ds")
    s = load_images(str(root), 16, cache_dir=str(tmp_path / "cache"))
    assert s.images.shape == (6, 3, 16, 16) and s.images.dtype == torch.uint8
    assert s.classes == ["a_cat", "b_dog"] and s.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert all(os.path.isfile(p) for p in s.paths)
    # second load: from the cache, no decoding
    monkeypatch.setattr(data.Image, "open", lambda *a, **k: (_ for _ in ()).throw(AssertionError("decoded")))
    again = load_images(str(root), 16, cache_dir=str(tmp_path / "cache"))
    assert torch.equal(again.images, s.images) and again.paths == s.paths


def test_cache_follows_the_files(tmp_path):
    root = make_folder(tmp_path / "ds")
    a = load_images(str(root), 8, cache_dir=str(tmp_path / "c"))
    path = root / "a_cat" / "img1.png"
    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(path)
    os.utime(path, ns=(1, 10**18))
    b = load_images(str(root), 8, cache_dir=str(tmp_path / "c"))
    assert not torch.equal(a.images, b.images)
    assert len(os.listdir(tmp_path / "c" / "images")) == 2  # one per content and size
    assert load_images(str(root), 12, cache_dir=str(tmp_path / "c")).images.shape[-1] == 12


def test_bad_images(tmp_path, caplog):
    root = make_folder(tmp_path / "ds")
    bad = root / "b_dog" / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match="cannot read image .*broken.jpg"):
        load_images(str(root), 8, cache_dir=str(tmp_path / "c"))
    s = load_images(str(root), 8, cache_dir=str(tmp_path / "c"), skip_bad=True)
    assert len(s) == 6 and "skipped 1 unreadable image" in caplog.text


def test_missing_and_empty_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such dataset folder"):
        load_images(str(tmp_path / "nope"), 8, cache_dir=str(tmp_path / "c"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no class folders"):
        load_images(str(tmp_path / "empty"), 8, cache_dir=str(tmp_path / "c"))
    (tmp_path / "empty" / "cls").mkdir()
    with pytest.raises(ValueError, match="holds no images"):
        load_images(str(tmp_path / "empty"), 8, cache_dir=str(tmp_path / "c"))


def test_parse_spec():
    assert parse_spec("some/dir") == ("folder", "some/dir", None)
    assert parse_spec("torchvision:cifar10") == ("torchvision", "cifar10", "train")
    assert parse_spec("torchvision:oxford-pets:test") == ("torchvision", "oxford-pets", "test")
    with pytest.raises(ValueError, match="unknown dataset"):
        parse_spec("torchvision:imagenet")
    with pytest.raises(ValueError, match="has no split 'val'"):
        parse_spec("torchvision:cifar10:val")


class FakeCIFAR10:
    """Stands in for torchvision.datasets.CIFAR10 (the real one downloads)."""
    calls = []

    def __init__(self, root, download, train):
        FakeCIFAR10.calls.append(dict(root=root, download=download, train=train))
        rng = np.random.default_rng(1)
        self.data = rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
        self.classes = ["airplane", "automobile"]

    def __len__(self):
        return 5

    def __getitem__(self, i):
        return Image.fromarray(self.data[i]), i % 2


def test_torchvision_datasets_download_and_cache(tmp_path, monkeypatch):
    import torchvision.datasets as tvd
    monkeypatch.setattr(tvd, "CIFAR10", FakeCIFAR10)
    s = load_images("torchvision:cifar10:test", 32, cache_dir=str(tmp_path / "c"))
    assert FakeCIFAR10.calls[-1] == dict(root=str(tmp_path / "c" / "torchvision"), download=True, train=False)
    assert s.images.shape == (5, 3, 32, 32) and s.labels.tolist() == [0, 1, 0, 1, 0]
    assert torch.equal(s.images[2], torch.from_numpy(FakeCIFAR10(None, False, False).data[2]).permute(2, 0, 1))
    n = len(FakeCIFAR10.calls)
    load_images("torchvision:cifar10:test", 32, cache_dir=str(tmp_path / "c"))
    assert len(FakeCIFAR10.calls) == n  # cached: not opened again


def test_torchvision_failure_is_one_clear_error(tmp_path, monkeypatch):
    import torchvision.datasets as tvd

    def offline(**kw):
        raise OSError("network unreachable")
    monkeypatch.setattr(tvd, "DTD", offline)
    with pytest.raises(RuntimeError, match="cannot load torchvision:dtd:train.*network unreachable"):
        load_images("torchvision:dtd", 32, cache_dir=str(tmp_path / "c"))


def test_list_file_of_images(tmp_path):
    """A .txt list (one path per line, relative to the list or absolute): unlabelled images
    in the listed order; missing files and empty lists are one clear error."""
    make_folder(tmp_path / "imgs")
    files = sorted(str(p) for p in (tmp_path / "imgs").rglob("*.*g"))
    lst = tmp_path / "lists" / "pick.txt"
    lst.parent.mkdir()
    lst.write_text(os.path.relpath(files[3], lst.parent) + "\n\n" + files[0] + "\n")
    s = load_images(str(lst), 8, cache_dir=str(tmp_path / "cache"))
    assert len(s) == 2 and s.classes == [] and s.labels.tolist() == [-1, -1]
    assert [os.path.realpath(p) for p in s.paths] == [os.path.realpath(files[3]), os.path.realpath(files[0])]
    whole = load_images(str(tmp_path / "imgs"), 8, cache_dir=str(tmp_path / "cache"))
    assert torch.equal(s.images[1], whole.images[whole.paths.index(files[0])])
    (tmp_path / "bad.txt").write_text(files[0] + "\n" + str(tmp_path / "gone.png") + "\n")
    with pytest.raises(FileNotFoundError, match="lists a missing image: .*gone.png"):
        load_images(str(tmp_path / "bad.txt"), 8, cache_dir=str(tmp_path / "cache"))
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(ValueError, match="lists no images"):
        load_images(str(tmp_path / "empty.txt"), 8, cache_dir=str(tmp_path / "cache"))
    with pytest.raises(FileNotFoundError, match="no such image list"):
        load_images(str(tmp_path / "nope.txt"), 8, cache_dir=str(tmp_path / "cache"))
