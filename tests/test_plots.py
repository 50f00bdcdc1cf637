"""The report's figures: each written whole as a PNG; a clear ImportError without matplotlib."""
import os
import sys

import numpy as np
import pytest

from simcore import plots

needs_mpl = pytest.mark.skipif(not plots.available(), reason="needs matplotlib (the [plot] extra)")
PNG = b"\x89PNG\r\n\x1a\n"


def _is_png(path):
    with open(path, "rb") as f:
        return f.read(8) == PNG


@needs_mpl
def test_every_figure_is_a_whole_png(tmp_path):
    scores = np.linspace(0.9, 0.6, 30)
    out = [
        plots.round_scores(scores, np.full(30, 10), 0.7, "criterion", 20, str(tmp_path / "rounds.png")),
        plots.round_scores([], [], None, "budget", None, str(tmp_path / "empty_rounds.png")),
        plots.composition_bars({"SimCore": {"target-class": 60.0, "other": 40.0},
                                "random": {"target-class": 5.0, "other": 95.0}}, str(tmp_path / "comp.png")),
        plots.image_grid([[np.zeros((8, 8, 3), np.uint8)] * 3, [np.full((8, 8, 3), 255, np.uint8)]],
                         str(tmp_path / "sub" / "grid.png"), ["a", "b"]),
        plots.accuracy_bars({"X": (40.0, 1.0), "X + random": (41.0, 2.0), "X + SimCore": (45.0, 1.5)},
                            str(tmp_path / "acc.png")),
        plots.accuracy_bars({"X": 40.0}, str(tmp_path / "acc1.png")),
    ]
    assert all(_is_png(p) for p in out)
    assert sorted(os.listdir(tmp_path)) == sorted(["rounds.png", "empty_rounds.png", "comp.png", "sub",
                                                   "acc.png", "acc1.png"])


@needs_mpl
def test_image_grid_refuses_nothing(tmp_path):
    with pytest.raises(ValueError, match="at least one image"):
        plots.image_grid([], str(tmp_path / "g.png"))
    assert not os.listdir(tmp_path)


def test_shares_of():
    assert plots.shares_of(["a", "b", "a", "a"]) == {"a": 75.0, "b": 25.0}
    assert plots.shares_of(["a"], order=["b", "a"]) == {"b": 0.0, "a": 100.0}
    assert plots.shares_of([]) == {}


def test_without_matplotlib_the_error_says_how_to_fix(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert not plots.available()
    with pytest.raises(ImportError, match="pip install matplotlib"):
        plots.accuracy_bars({"X": 1.0}, str(tmp_path / "a.png"))
