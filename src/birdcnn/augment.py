"""Synthetic training data: random flips, shifts, rotations and blur, on whole batches.

Every operation works on an (N, C, H, W) float tensor at once, with per-image random
parameters: on 2 cores a per-image Python/PIL pipeline would starve training, while these
batched tensor ops cost a few percent of a training step.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F


@dataclass
class Augment:
    flip: bool = True       # random horizontal mirror, p = 0.5
    shift: int = 2          # random translation by up to this many pixels (reflect-padded crop)
    rotate: float = 0.0     # random rotation, uniform in +-rotate degrees
    blur: float = 0.0       # Gaussian blur with sigma uniform in [0, blur] ...
    blur_p: float = 0.5     # ... applied to this fraction of images

    def to_dict(self) -> dict:
        return asdict(self)

    def __call__(self, x: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
        if self.flip:
            x = random_flip(x, gen)
        if self.rotate > 0:
            x = random_rotate(x, self.rotate, gen)
        if self.shift > 0:
            x = random_shift(x, self.shift, gen)
        if self.blur > 0 and self.blur_p > 0:
            x = random_blur(x, self.blur, self.blur_p, gen)
        return x


def _rand(n: int, gen: torch.Generator | None, device) -> torch.Tensor:
    return torch.rand(n, generator=gen, device="cpu").to(device)


def random_flip(x: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
    mask = (_rand(len(x), gen, x.device) < 0.5).view(-1, 1, 1, 1)
    return torch.where(mask, x.flip(-1), x)


def alternating_flip(x: torch.Tensor, first_flip: torch.Tensor, epoch: int) -> torch.Tensor:
    """airbench's alternating flip: image i is mirrored when `first_flip[i]` xor the epoch is odd.

    `first_flip` (one random bool per image in the batch, fixed for the whole run) replaces a
    fresh coin toss per epoch, so every pair of epochs shows both versions of every image.
    """
    mask = (first_flip.to(x.device) ^ bool(epoch % 2)).view(-1, 1, 1, 1)
    return torch.where(mask, x.flip(-1), x)


def random_shift(x: torch.Tensor, pad: int, gen: torch.Generator | None = None) -> torch.Tensor:
    """Translate each image by (dy, dx) in [-pad, pad] using a reflect-padded crop (one gather)."""
    n, c, h, w = x.shape
    xp = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen).to(x.device)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen).to(x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device)[None])  # n, h
    cols = (dx[:, None] + torch.arange(w, device=x.device)[None])  # n, w
    idx_n = torch.arange(n, device=x.device)[:, None, None]
    out = xp.permute(0, 2, 3, 1)[idx_n, rows[:, :, None], cols[:, None, :]]  # n, h, w, c
    return out.permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format)


def random_rotate(x: torch.Tensor, degrees: float, gen: torch.Generator | None = None) -> torch.Tensor:
    """Rotate each image by a uniform random angle in +-degrees (one affine_grid + grid_sample)."""
    n = len(x)
    theta = (_rand(n, gen, x.device) * 2 - 1) * math.radians(degrees)
    cos, sin = torch.cos(theta), torch.sin(theta)
    zero = torch.zeros_like(theta)
    mat = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1).to(x.dtype)
    grid = F.affine_grid(mat, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def gaussian_kernels(sigma: torch.Tensor, radius: int) -> torch.Tensor:
    """(N, 2*radius+1) normalised 1-D Gaussian kernels; sigma 0 gives the identity kernel."""
    t = torch.arange(-radius, radius + 1, dtype=torch.float32, device=sigma.device)
    s = sigma.clamp_min(1e-3)[:, None]
    k = torch.exp(-0.5 * (t[None] / s) ** 2)
    return k / k.sum(1, keepdim=True)


def random_blur(x: torch.Tensor, max_sigma: float, p: float, gen: torch.Generator | None = None) -> torch.Tensor:
    """Blur a random fraction p of the images, each with its own sigma in [0, max_sigma]."""
    n, c, h, w = x.shape
    sigma = _rand(n, gen, x.device) * max_sigma
    sigma = torch.where(_rand(n, gen, x.device) < p, sigma, torch.zeros_like(sigma))
    radius = max(1, min(int(math.ceil(2 * max_sigma)), h // 2 - 1))
    k = gaussian_kernels(sigma, radius).to(x.dtype)            # n, k
    kk = k.repeat_interleave(c, 0)                               # n*c, k
    y = x.reshape(1, n * c, h, w)                                # grouped conv: one kernel per image
    y = F.pad(y, (radius, radius, radius, radius), mode="reflect")
    y = F.conv2d(y, kk[:, None, None, :], groups=n * c)          # horizontal pass
    y = F.conv2d(y, kk[:, None, :, None], groups=n * c)          # vertical pass
    return y.reshape(n, c, h, w)
