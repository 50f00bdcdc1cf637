"""MAE (He et al., 2022): masked autoencoders. A random 75% of each image's patches is
dropped; the ViT encoder sees only the visible patches (and its class token); a light
decoder, given the encoded patches and a shared mask token at every dropped position,
predicts the dropped patches' pixels, each patch normalised by its own mean and variance
(the normalised-pixel loss). Only the dropped patches count in the loss.

As in the official code (facebookresearch/mae): one view per image, random resized crop
and flip only (no colour jitter; crop areas from the run's --min-crop, the official code
uses 0.2); masking by sorting per-image uniform noise (the first 25% of the shuffled
patches stay visible); decoder: a linear map to decoder_dim, transformer blocks, LayerNorm,
a linear map to pixels; features for extraction are the backbone's (the class token over
all patches). Differences: the decoder's position embeddings are learned rather than fixed
sine-cosine ones, and it is smaller by default (4 blocks of 256 wide, 8 heads; official
8 x 512, 16 heads). The masking noise is drawn by the trainer with the step's seeded
generator (`noise`), so a resumed run and a DDP run mask exactly as one process does.
Needs a ViT backbone (vit_tiny, vit_small, vit_base); the paper trains with AdamW
(--optimizer adamw)."""
from __future__ import annotations

import torch
from torch import nn
from torchvision.models.vision_transformer import EncoderBlock

from ..augment import Augment
from ..models import ViT, _resize_positions
from .heads import wide


def patchify(images: torch.Tensor, p: int) -> torch.Tensor:
    """[N, 3, H, W] -> [N, (H/p)(W/p), p*p*3]: patches in the ViT's raster order, each
    flattened row by row with the channels last (the official patchify)."""
    n, c, h, w = images.shape
    x = images.reshape(n, c, h // p, p, w // p, p)
    return torch.einsum("nchpwq->nhwpqc", x).reshape(n, (h // p) * (w // p), p * p * c)


def random_masking(noise: torch.Tensor, keep: int):
    """(indices of the `keep` visible patches [N, keep], mask [N, L] with 1 = dropped): the
    patches with the smallest noise stay visible."""
    shuffle = torch.argsort(noise, dim=1, stable=True)
    mask = torch.ones_like(noise)
    mask[:, :keep] = 0
    return shuffle[:, :keep], torch.gather(mask, 1, torch.argsort(shuffle, dim=1, stable=True))


def mae_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, norm_pix: bool = True) -> torch.Tensor:
    """Mean over the dropped patches of the per-patch mean squared error; the target
    patches normalised by their own mean and (unbiased) variance when norm_pix."""
    with torch.autocast(pred.device.type, enabled=False):  # the loss in float32
        pred, target = wide(pred), wide(target)
        if norm_pix:
            mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
            target = (target - mean) / (var + 1e-6) ** 0.5
        per_patch = ((pred - target) ** 2).mean(-1)
        return (per_patch * mask).sum() / mask.sum()


class MAE(nn.Module):
    """options: mask_ratio (0.75), decoder_dim (256), decoder_depth (4), decoder_heads (8),
    norm_pix (True)."""

    def __init__(self, backbone: nn.Module, mask_ratio: float = 0.75, decoder_dim: int = 256,
                 decoder_depth: int = 4, decoder_heads: int = 8, norm_pix: bool = True):
        super().__init__()
        if not isinstance(backbone, ViT):
            raise ValueError("MAE needs a ViT backbone: --arch vit_tiny, vit_small or vit_base")
        if not 0 < mask_ratio < 1:
            raise ValueError(f"mask_ratio must be in (0, 1), got {mask_ratio}")
        if decoder_dim % decoder_heads:
            raise ValueError(f"decoder_dim ({decoder_dim}) must be a multiple of decoder_heads ({decoder_heads})")
        self.backbone = backbone
        p, grid = backbone.patch_size, backbone.image_size // backbone.patch_size
        self.patches = grid * grid
        self.keep = max(1, int(self.patches * (1 - mask_ratio)))
        self.mask_ratio, self.norm_pix = mask_ratio, norm_pix
        self.decoder_embed = nn.Linear(backbone.hidden_dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.decoder_pos = nn.Parameter(torch.zeros(1, 1 + self.patches, decoder_dim))
        self.decoder = nn.Sequential(*[EncoderBlock(decoder_heads, decoder_dim, 4 * decoder_dim, 0.0, 0.0)
                                       for _ in range(decoder_depth)])
        self.decoder_norm = nn.LayerNorm(decoder_dim, eps=1e-6)
        self.decoder_pred = nn.Linear(decoder_dim, p * p * 3)
        nn.init.normal_(self.mask_token, std=0.02)
        nn.init.normal_(self.decoder_pos, std=0.02)

    @staticmethod
    def views(image_size: int, min_crop: float):
        return [Augment(image_size, scale=(min_crop, 1.0), jitter_p=0.0, gray_p=0.0)]

    def noise(self, batch: int, generator: torch.Generator, device) -> torch.Tensor:
        """The masking noise of a batch, drawn by the trainer."""
        return torch.rand(batch, self.patches, generator=generator, device=device)

    def encode_visible(self, images: torch.Tensor, keep_idx: torch.Tensor) -> torch.Tensor:
        """The backbone over the class token and the visible patches: [N, 1 + keep, hidden]."""
        vit = self.backbone
        n, _, h, w = images.shape
        x = vit.conv_proj(images).flatten(2).transpose(1, 2)  # [N, L, hidden]
        pos = vit.encoder.pos_embedding
        if pos.shape[1] != x.shape[1] + 1:
            pos = _resize_positions(pos, h // vit.patch_size, w // vit.patch_size)
        x = x + pos[:, 1:]
        x = torch.gather(x, 1, keep_idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        x = torch.cat([(vit.class_token + pos[:, :1]).expand(n, -1, -1), x], 1)
        return vit.encoder.ln(vit.encoder.layers(vit.encoder.dropout(x)))

    def forward(self, images: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        if noise.shape != (images.shape[0], self.patches):
            raise ValueError(f"MAE at {self.backbone.image_size} px takes noise of shape "
                             f"[batch, {self.patches}], got {tuple(noise.shape)}")
        keep_idx, mask = random_masking(noise, self.keep)
        x = self.decoder_embed(self.encode_visible(images, keep_idx))
        n, d = x.shape[0], x.shape[-1]
        # every patch position gets the mask token, then the visible ones their encoding
        patches = self.mask_token.to(x.dtype).expand(n, self.patches, d).clone()
        patches = patches.scatter(1, keep_idx.unsqueeze(-1).expand(-1, -1, d), x[:, 1:])
        x = torch.cat([x[:, :1], patches], 1) + self.decoder_pos
        pred = self.decoder_pred(self.decoder_norm(self.decoder(x)))[:, 1:]
        return mae_loss(pred, patchify(images, self.backbone.patch_size), mask.to(pred.dtype), self.norm_pix)

    def after_step(self, progress: float) -> None:
        pass
