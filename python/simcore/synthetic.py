"""A procedurally generated fine-grained image dataset for `simcore demo`: no download.

    make_demo_data("demo-data", seed=0)   # -> the manifest dict

writes PNG ImageFolder trees:

    root/target/train/<class>/00000.png   the fine-grained target X
    root/target/test/<class>/00000.png    its labelled test split
    root/openset/<folder>/00000.png       the open-set U
    root/openset_classes.tsv              folder, source, class, group, images of U
    root/manifest.json                    parameters and counts, written last

The target is one family, a patterned disc on a cluttered background, in `classes`
variants that differ only in the pattern (stripes, rings, spots, ...) and its density
(coarse or fine: periods across the disc, so crops of the whole disc keep it). Those are
structures that survive SimCLR's flips, colour jitter and grayscale; position, size,
rotation, aspect, phase, colours, background, clutter and noise vary freely within a class.
U holds new draws of the target's classes ("target-class"), relatives ("related": with
related="variants" the family's other variants, other patterns on the same disc; with
"squares" the target's own variants drawn on a square, the same patterns on another
object) and ten visually distinct families with no disc ("other"). Every folder has
its own random stream (seed and folder name), so the same seed gives the same bytes.

Raw pixels are a poor classifier (cosine 20-NN on 8x8 thumbnails: ~30% on the six default
classes, chance 17%), while the patterns are plain to a small CNN: room for an encoder."""
from __future__ import annotations

import json
import numbers
import os
import shutil

import numpy as np
from PIL import Image
from tqdm import tqdm

from .leftovers import writer_gone

FORMAT = 1  # bump when the images change: old folders then no longer match
GROUPS = ("target-class", "related", "other")

PATTERNS = ("striped", "ringed", "spotted", "checked", "spoked", "wavy", "hatched")
DENSITIES = ("coarse", "fine")
# The target takes the first `classes` variants, "related" the rest: same family, other values.
VARIANTS = [(p, d) for p in PATTERNS for d in DENSITIES]
MAX_CLASSES = len(VARIANTS) - 2  # leave some variants to the related group


def _name(variant):
    return f"{variant[1]}-{variant[0]}-disc"  # e.g. coarse-striped-disc

PALETTE_SHARE = 0.85  # of a variant's discs drawn in its typical colours
CHUNK = 256  # images drawn per numpy call


# ---- drawing helpers: float32 images (n, S, S, 3) in [0, 1]; edges are 1-pixel ramps ----

def _grid(S):
    t = np.arange(S, dtype=np.float32) + 0.5  # pixel centres
    return t[None, :, None], t[None, None, :]  # y (1, S, 1), x (1, 1, S)


def _col(a):
    """Per-image values -> broadcastable against (n, H, W)."""
    return np.asarray(a, np.float32)[:, None, None]


def _colors(rng, n, lo=0.0, hi=1.0):
    return rng.uniform(lo, hi, (n, 1, 1, 3)).astype(np.float32)


def _mix(a, b, t):
    """a where t = 0, b where t = 1."""
    return a + (b - a) * t[..., None]


def _smooth(rng, n, S, cells, channels=3):
    """Random values on a cells x cells grid, bilinearly upsampled: a smooth field."""
    z = rng.uniform(0, 1, (n, cells, cells, channels)).astype(np.float32)
    pos = np.clip((np.arange(S) + 0.5) / S * cells - 0.5, 0, cells - 1)
    i0 = np.minimum(pos.astype(int), cells - 2) if cells > 1 else np.zeros(len(pos), int)
    w = (pos - i0).astype(np.float32)
    m = np.zeros((S, cells), np.float32)
    m[np.arange(len(pos)), i0] = 1 - w
    if cells > 1:
        m[np.arange(len(pos)), i0 + 1] += w
    return np.einsum("jb,nibc->nijc", m, np.einsum("ia,nabc->nibc", m, z))


def _segment(rng, n, S, y, x, length, width):
    """Soft masks (n, H, W) of one random line segment per image."""
    cx, cy = (_col(rng.uniform(0, S, n)) for _ in range(2))
    a = rng.uniform(0, np.pi, n)
    L = rng.uniform(*length, n) * S
    dx, dy = _col(np.cos(a) * L), _col(np.sin(a) * L)
    px, py = x - cx, y - cy
    t = np.clip((px * dx + py * dy) / (dx * dx + dy * dy), -0.5, 0.5)
    d = np.hypot(px - t * dx, py - t * dy)
    return np.clip(_col(rng.uniform(*width, n)) / 2 + 0.5 - d, 0, 1)


def _clutter(rng, img, S, y, x, count, length=(0.15, 0.5), width=(0.6, 1.6)):
    """Paint up to `count` coloured segments (each present with probability 0.7); lengths are
    shares of the image side, widths pixels at 32 px."""
    n, width = len(img), (width[0] * S / 32, width[1] * S / 32)
    for _ in range(count):
        m = _segment(rng, n, S, y, x, length, width) * _col(rng.random(n) < 0.7)
        img = _mix(img, _colors(rng, n), m)
    return img


# ---- the target family: a patterned disc on a cluttered background ----

def _pattern(rng, n, name, density, u, v, rho):
    """A field in about [-1, 1] over the disc's own coordinates (u, v: the disc's radius is 1)."""
    lo, hi = (4.5, 5.5) if density == "fine" else (2.2, 3.0)  # periods across the diameter
    k = _col(np.pi * rng.uniform(lo, hi, n))

    def ph():
        return _col(rng.uniform(0, 2 * np.pi, n))

    if name == "striped":
        return np.sin(k * u + ph())
    if name == "ringed":
        return np.sin(k * rho + ph())
    if name == "spotted":
        return np.cos(k * u + ph()) + np.cos(k * v + ph()) - 1
    if name == "checked":
        return 2 * np.sin(k * u + ph()) * np.sin(k * v + ph())
    if name == "spoked":  # sectors: the count must be whole
        m = _col(rng.integers(6, 9, n) if density == "fine" else rng.integers(3, 5, n))
        return np.sin(m * np.arctan2(v, u) + ph())
    if name == "wavy":
        return np.sin(k * u + ph() + 1.5 * np.sin(0.8 * k * v + ph()))
    if name == "hatched":
        return np.maximum(np.sin(k * u + ph()), np.sin(k * v + ph())) - 0.5
    raise ValueError(f"unknown pattern {name!r}")


def _hsv(h, s, v):
    """Per-image HSV (arrays of n) -> RGB colours (n, 1, 1, 3)."""
    k = (np.array([5, 3, 1]) + (h[:, None] % 1) * 6) % 6
    rgb = v[:, None] * (1 - s[:, None] * np.clip(np.minimum(k, 4 - k), 0, 1))
    return rgb.astype(np.float32)[:, None, None, :]


def _tones(rng, n, hue):
    """A light and a dark colour. Like a breed's coat, a variant has typical hues, but only
    in part: colour is a weak cue next to the pattern, as in real fine-grained data."""
    typical = rng.random(n) < PALETTE_SHARE
    h = np.where(typical, hue + rng.normal(0, 0.05, n), rng.random(n))
    h2 = np.where(typical, hue + 0.5 + rng.normal(0, 0.1, n), rng.random(n))
    light = _hsv(h, rng.uniform(0.2, 0.9, n), rng.uniform(0.65, 1.0, n))
    dark = _hsv(h2, rng.uniform(0.2, 1.0, n), rng.uniform(0.05, 0.45, n))
    return light, dark


def _discs(rng, n, S, pattern, density, shape="disc"):
    y, x = _grid(S)
    img = _smooth(rng, n, S, 4)
    gray = img.mean(axis=3, keepdims=True)  # the background is duller than the object
    img = gray + (img - gray) * _col(rng.uniform(0.2, 0.8, n))[..., None]
    img = _clutter(rng, img * _col(rng.uniform(0.4, 1.0, n))[..., None], S, y, x, 4)
    # Rotation is uniform, so a flipped disc is as likely as the original.
    r = _col(rng.uniform(0.26, 0.42, n) * S)
    cx, cy = (_col(rng.uniform(0.3, 0.7, n) * S) for _ in range(2))
    a = rng.uniform(0, 2 * np.pi, n)
    c, s = _col(np.cos(a)), _col(np.sin(a))
    u = ((x - cx) * c + (y - cy) * s) / r
    v = (-(x - cx) * s + (y - cy) * c) / (r * _col(rng.uniform(0.75, 1.0, n)))  # a slight ellipse
    rho = np.hypot(u, v) if shape == "disc" else np.maximum(np.abs(u), np.abs(v))  # a square's "radius"
    f = _pattern(rng, n, pattern, density, u, v, rho)
    p = np.clip(0.5 + _col(rng.uniform(1.5, 4.0, n)) * f, 0, 1)
    # Golden-ratio steps spread the variants' typical hues around the circle.
    light, dark = _tones(rng, n, 0.618 * VARIANTS.index((pattern, density)))
    swap = rng.random((n, 1, 1, 1)) < 0.5  # which tone is the pattern's
    obj = _mix(np.where(swap, light, dark), np.where(swap, dark, light), p)
    obj *= (1 - _col(rng.uniform(0, 0.3, n)) * np.clip(rho, 0, 1) ** 2)[..., None]  # shading
    img = _mix(img, obj, np.clip((1 - rho) * r + 0.5, 0, 1))
    return _clutter(rng, img, S, y, x, 1, length=(0.3, 0.7))  # a twig in front, sometimes


# ---- the "other" families: no disc ----

def _gradient(rng, n, S, y, x):
    a = _col(rng.uniform(0, 2 * np.pi, n))
    t = ((x - S / 2) * np.cos(a) + (y - S / 2) * np.sin(a)) / S + 0.5
    radial = np.hypot(x - _col(rng.uniform(0, S, n)), y - _col(rng.uniform(0, S, n))) / S
    t = np.where(_col(rng.random(n) < 0.3), radial, t)
    return _mix(_colors(rng, n), _colors(rng, n), np.clip(t, 0, 1))


def _noise(rng, n, S, y, x):
    w = rng.dirichlet(np.ones(4), n).astype(np.float32)
    g = sum(_col(w[:, i]) * _smooth(rng, n, S, c, 1)[..., 0] for i, c in enumerate((2, 4, 8, S)))
    lo, hi = g.min(axis=(1, 2), keepdims=True), g.max(axis=(1, 2), keepdims=True)
    img = _mix(_colors(rng, n), _colors(rng, n), (g - lo) / (hi - lo + 1e-6))
    return img + 0.3 * (_smooth(rng, n, S, 3) - 0.5)


def _grid_texture(rng, n, S, y, x):
    a = _col(rng.uniform(0, np.pi, n))
    k = _col(2 * np.pi * rng.uniform(2, 8, n) / S)
    u, v = x * np.cos(a) + y * np.sin(a), -x * np.sin(a) + y * np.cos(a)
    su, sv = np.sin(k * u + _col(rng.uniform(0, 7, n))), np.sin(k * v + _col(rng.uniform(0, 7, n)))
    f = np.where(_col(rng.random(n) < 0.5), 2 * su * sv, np.maximum(su, sv) - 0.6)  # checks or lines
    return _mix(_colors(rng, n), _colors(rng, n), np.clip(0.5 + 3 * f, 0, 1))


def _lines(rng, n, S, y, x):
    img = _smooth(rng, n, S, 2)
    return _clutter(rng, img, S, y, x, 12, length=(0.3, 1.2), width=(0.6, 2.0))


def _blobs(rng, n, S, y, x):
    img = _smooth(rng, n, S, 3)
    for _ in range(5):
        cx, cy = (_col(rng.uniform(0, S, n)) for _ in range(2))
        sig = _col(rng.uniform(0.08, 0.25, n) * S)
        m = np.clip(1.6 * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * sig**2)) - 0.3, 0, 1)
        img = _mix(img, _colors(rng, n), m * _col(rng.random(n) < 0.8))
    return img


def _glyphs(rng, n, S, y, x):
    """Rows of 3 x 5 random bitmaps, like text on paper."""
    g = max(1, round(S / 32))  # glyph pixel size
    rows, cols = S // (7 * g) + 2, S // (4 * g) + 2
    ink = rng.random((n, rows, 7, cols, 4)) < 0.5
    ink[:, :, 5:] = False  # line spacing
    ink[:, :, :, :, 3:] = False  # letter spacing
    ink &= rng.random((n, rows, 1, cols, 1)) < 0.8  # spaces between words
    ink = ink.reshape(n, rows * 7, cols * 4).repeat(g, 1).repeat(g, 2)
    oy, ox = rng.integers(0, 7 * g, n), rng.integers(0, 4 * g, n)
    ink = np.stack([ink[i, oy[i]:oy[i] + S, ox[i]:ox[i] + S] for i in range(n)])
    return _mix(_colors(rng, n, 0.6, 1.0), _colors(rng, n, 0.0, 0.4), ink.astype(np.float32))


def _horizon(rng, n, S, y, x):
    h = (_col(rng.uniform(0.3, 0.7, n) * S) + _col(rng.uniform(-0.3, 0.3, n)) * (x - S / 2)
         + _col(rng.uniform(0, 2, n)) * np.sin(x * _col(rng.uniform(0.1, 0.5, n)) + _col(rng.uniform(0, 7, n))))
    sky = _mix(_colors(rng, n, 0.4, 1.0), _colors(rng, n, 0.3, 1.0), np.broadcast_to(y / S, (n, S, 1)))
    ground = _smooth(rng, n, S, 6) * _col(rng.uniform(0.3, 0.8, n))[..., None]
    return _mix(sky, ground, np.clip(y - h + 0.5, 0, 1))


def _mosaic(rng, n, S, y, x):
    """Blocks of random colours, 3 to 9 per side."""
    c = _col(rng.integers(3, 10, n))
    pal = rng.uniform(0, 1, (n, 9, 9, 3)).astype(np.float32)
    iy, ix = (y * c / S).astype(int), (x * c / S).astype(int)
    return pal[np.arange(n)[:, None, None], iy, ix]


def _waves(rng, n, S, y, x):
    g = 0
    for _ in range(3):
        a, k = _col(rng.uniform(0, np.pi, n)), _col(2 * np.pi * rng.uniform(0.5, 4, n) / S)
        g = g + np.sin(k * (x * np.cos(a) + y * np.sin(a)) + _col(rng.uniform(0, 7, n)))
    return _mix(_colors(rng, n), _colors(rng, n), 0.5 + g / 6)


def _rectangles(rng, n, S, y, x):
    img = np.broadcast_to(_colors(rng, n), (n, S, S, 3))
    for _ in range(7):
        x0, y0 = (_col(rng.uniform(-0.2, 0.9, n) * S) for _ in range(2))
        w, h = (_col(rng.uniform(0.1, 0.6, n) * S) for _ in range(2))
        inside = np.minimum(np.minimum(x - x0, x0 + w - x), np.minimum(y - y0, y0 + h - y))
        img = _mix(img, _colors(rng, n), np.clip(inside + 0.5, 0, 1) * _col(rng.random(n) < 0.8))
    return img


# folder -> (description for the TSV, renderer)
OTHERS = {
    "gradient": ("smooth gradient", _gradient),
    "noise": ("noise texture", _noise),
    "grid": ("checkerboard or grid", _grid_texture),
    "lines": ("random lines", _lines),
    "blobs": ("soft blobs", _blobs),
    "glyphs": ("text-like glyphs", _glyphs),
    "horizon": ("horizon scene", _horizon),
    "mosaic": ("colour mosaic", _mosaic),
    "waves": ("wave interference", _waves),
    "rectangles": ("overlapping rectangles", _rectangles),
}


def _render(draw, rng, n, S):
    """n uint8 images (n, S, S, 3), with sensor noise."""
    img = draw(rng, n, S)
    img = img + rng.normal(0, 1, img.shape).astype(np.float32) * _col(rng.uniform(0.005, 0.04, n))[..., None]
    return np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8)


def _disc_drawer(pattern, density, shape="disc"):
    return lambda rng, n, S: _discs(rng, n, S, pattern, density, shape)


def _other_drawer(fn):
    return lambda rng, n, S: fn(rng, n, S, *_grid(S))


def _write_png(path, pixels):
    Image.fromarray(pixels).save(path, compress_level=1)


# ---- the dataset ----

def _check(seed, image_size, classes, sizes, shares):
    def whole(name, v, lo, hi=None):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < lo or (hi is not None and v > hi):
            bound = f"between {lo} and {hi}" if hi is not None else f">= {lo}"
            raise ValueError(f"{name} must be an integer {bound}, got {v!r}")

    whole("seed", seed, 0)
    whole("image_size", image_size, 8)
    whole("classes", classes, 2, MAX_CLASSES)
    for name, v in sizes.items():
        whole(name, v, 1)
    for name, v in shares.items():
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not 0 <= v < 1:
            raise ValueError(f"{name} must be a number in [0, 1), got {v!r}")
    if sum(shares.values()) >= 1:
        raise ValueError(f"share_target + share_related must be < 1, got {sum(shares.values())!r}")


def _split(total, parts):
    """total spread over `parts` counts that differ by at most one."""
    return [total // parts + (i < total % parts) for i in range(parts)]


def _plan(classes, train_per_class, test_per_class, openset_size, share_target, share_related, related):
    """[(folder under root, image count, drawer)] and the TSV rows (folder, class, group, images) of U."""
    target = VARIANTS[:classes]
    n_t, n_r = round(share_target * openset_size), round(share_related * openset_size)
    if related == "squares":  # the target's own patterns on another object
        rel = [(_name(v).replace("disc", "square"), _disc_drawer(*v, "square")) for v in target]
    else:  # the family's other patterns
        rel = [(_name(v), _disc_drawer(*v)) for v in VARIANTS[classes:]]
    u = ([(_name(v), _name(v).replace("-", " "), "target-class", _disc_drawer(*v), k)
          for v, k in zip(target, _split(n_t, len(target)))]
         + [(f, f.replace("-", " "), "related", draw, k) for (f, draw), k in zip(rel, _split(n_r, len(rel)))]
         + [(f, desc, "other", _other_drawer(fn), k)
            for (f, (desc, fn)), k in zip(OTHERS.items(), _split(openset_size - n_t - n_r, len(OTHERS)))])
    u = [row for row in u if row[-1]]  # no empty folders: folder readers reject them
    jobs = [(f"target/{split}/{_name(v)}", count, _disc_drawer(*v))
            for split, count in (("train", train_per_class), ("test", test_per_class)) for v in target]
    jobs += [(f"openset/{f}", k, draw) for f, _, _, draw, k in u]
    return jobs, [(f, cls, group, k) for f, cls, group, _, k in u]


def _read_manifest(root):
    try:
        with open(os.path.join(root, "manifest.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _remove_dead_tmp(root: str) -> None:
    """Half-written trees of killed generators (`root.tmp-PID` whose PID is gone)."""
    parent, base = os.path.split(os.path.abspath(root))
    for name in os.listdir(parent) if os.path.isdir(parent) else []:
        pid = name[len(base) + 5:] if name.startswith(base + ".tmp-") else ""
        if pid.isdigit() and writer_gone(int(pid)):
            shutil.rmtree(os.path.join(parent, name), ignore_errors=True)


def make_demo_data(root: str, seed: int = 0, *, image_size: int = 32, classes: int = 6,
                   train_per_class: int = 100, test_per_class: int = 50, openset_size: int = 6000,
                   share_target: float = 0.05, share_related: float = 0.15, related: str = "variants",
                   progress: bool = False) -> dict:
    """Write the demo dataset under `root` (see the module docstring) and return its manifest.
    A root that already holds this very dataset is returned as is."""
    sizes = dict(train_per_class=train_per_class, test_per_class=test_per_class, openset_size=openset_size)
    shares = dict(share_target=share_target, share_related=share_related)
    _check(seed, image_size, classes, sizes, shares)
    params = dict(seed=int(seed), image_size=int(image_size), classes=int(classes),
                  **{k: int(v) for k, v in sizes.items()}, **{k: float(v) for k, v in shares.items()})
    if related not in ("variants", "squares"):
        raise ValueError(f"related must be 'variants' or 'squares', got {related!r}")
    if related != "variants":  # older manifests (and folders) stay valid
        params["related"] = related

    root = os.path.normpath(os.fspath(root))  # no trailing slash: tmp must be a sibling
    if os.path.exists(root):
        old = _read_manifest(root)
        if old is not None and old.get("format") == FORMAT and old.get("params") == params:
            return old
        what = "demo data made with other parameters" if old is not None else "no demo data manifest"
        raise FileExistsError(f"{root} already exists and holds {what}; remove it or choose another folder")

    jobs, rows = _plan(classes, train_per_class, test_per_class, openset_size, share_target, share_related, related)
    _remove_dead_tmp(root)
    tmp = f"{root}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)  # left by an earlier, killed run of this pid
    try:
        with tqdm(total=sum(k for _, k, _ in jobs), desc="demo data", unit="img", disable=not progress) as bar:
            for folder, count, draw in jobs:
                out = os.path.join(tmp, *folder.split("/"))
                os.makedirs(out)
                rng = np.random.default_rng([params["seed"], *folder.encode()])  # a stream per folder
                width = max(5, len(str(count - 1)))
                for start in range(0, count, CHUNK):
                    for i, pixels in enumerate(_render(draw, rng, min(CHUNK, count - start), image_size)):
                        _write_png(os.path.join(out, f"{start + i:0{width}d}.png"), pixels)
                    bar.update(min(CHUNK, count - start))
        with open(os.path.join(tmp, "openset_classes.tsv"), "w") as f:
            f.write("folder\tsource\tclass\tgroup\timages\n")
            f.writelines(f"{folder}\tsynthetic\t{cls}\t{group}\t{k}\n" for folder, cls, group, k in rows)
        counts = dict(train=classes * train_per_class, test=classes * test_per_class, openset=openset_size,
                      **{g: sum(k for *_, group, k in rows if group == g) for g in GROUPS})
        manifest = dict(format=FORMAT, generator="simcore.synthetic", params=params,
                        classes=[_name(v) for v in VARIANTS[:classes]],
                        openset_folders=len(rows), counts=counts)
        with open(os.path.join(tmp, "manifest.json"), "w") as f:  # last: marks the tree complete
            json.dump(manifest, f, indent=2)
        os.replace(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest
