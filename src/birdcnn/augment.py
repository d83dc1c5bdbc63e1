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
    layout = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
    return out.permute(0, 3, 1, 2).contiguous(memory_format=layout)


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


# ---------------------------------------------------------------- photo views (training on real photos)

@dataclass
class PhotoViews:
    """Cut each training image's view from its stored copy (`store` px, `STORE_SCALE` x the input).

    Thumbnails (CIFAR-10) keep their recipe: the whole image, moved by up to `shift` input pixels.
    (A thumbnail's stored copy repeats each pixel, so a 2x2 mean gives it back exactly.)
    Photos get what a photo meets in `predict`, `search --crops` and `locate`: random-resized
    crops (area `min_area`..1 of the model's square view, aspect 3:4..4:3) and colour changes;
    non-positive photos are cut down to `negative_min_area` (locate's smallest windows), so that
    pieces of non-bird photos are learned as "not bird". Positive photos stop at `min_area`, where
    a crop still holds most of the bird.
    """

    size: int = 32
    shift: int = 2
    min_area: float = 0.35
    negative_min_area: float = 0.03
    colour: float = 0.3      # brightness, contrast and saturation factors in 1 +- colour
    grey_p: float = 0.05     # some photos are black and white

    def __call__(self, x: torch.Tensor, photo: torch.Tensor, positive: torch.Tensor,
                 gen: torch.Generator | None = None) -> torch.Tensor:
        """x: (N, 3, S, S) float 0..255 stored images; photo, positive: (N,) bool. -> (N, 3, size, size)."""
        from torchvision.ops import roi_align

        n, c, s, _ = x.shape
        photo, positive = photo.to(x.device), positive.to(x.device)
        out = torch.empty(n, c, self.size, self.size, device=x.device)
        thumb = ~photo
        if thumb.any():  # the exact original (2x2 mean of repeated pixels), then the recipe's shift
            t = shrink(x[thumb], self.size)
            out[thumb] = random_shift(t, self.shift, gen) if self.shift else t
        m = int(photo.sum())
        if m:  # torchvision's RandomResizedCrop rule, batched
            lo = torch.where(positive[photo].cpu(), self.min_area, self.negative_min_area)
            area = lo + (1 - lo) * torch.rand(m, generator=gen)
            ratio = torch.exp((torch.rand(m, generator=gen) * 2 - 1) * math.log(4 / 3))
            cw = (s * torch.sqrt(area * ratio)).clamp(max=s)
            ch = (s * torch.sqrt(area / ratio)).clamp(max=s)
            cx, cy = torch.rand(m, generator=gen) * (s - cw), torch.rand(m, generator=gen) * (s - ch)
            boxes = torch.stack([torch.arange(m, dtype=torch.float32), cx, cy, cx + cw, cy + ch], 1).to(x.device)
            # roi_align: bilinear samples, 2x2 per output pixel, averaged (antialiased when shrinking).
            p = roi_align(x[photo].contiguous(), boxes, self.size, 1.0, 2, True)
            out[photo] = colour_jitter(p, self.colour, self.grey_p, gen)
        return out


def shrink(x: torch.Tensor, size: int) -> torch.Tensor:
    """(N, C, S, S) images at `size` px: an exact mean of pixel blocks when S is a multiple of
    `size` (a stored copy of repeated pixels gives its original back), otherwise an antialiased
    bilinear resampling (progressive resizing's smaller first epochs)."""
    s = x.shape[-1]
    if s == size:
        return x
    if s % size == 0:
        return F.avg_pool2d(x, s // size)
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def colour_jitter(x: torch.Tensor, amount: float, grey_p: float, gen: torch.Generator | None = None) -> torch.Tensor:
    """Random brightness, contrast and saturation (each a factor in 1 +- amount; saturation 0,
    i.e. grey, for a fraction grey_p), per image, on (N, 3, H, W) 0..255 floats.

    All three are linear in the pixel, so they fold into one 3x3 colour matrix and an offset per
    image: one batched matmul instead of a dozen full-size passes (measured 10x faster on 2 cores).
    """
    n, dev = len(x), x.device
    b, c, s = ((1 + (_rand(n, gen, dev) * 2 - 1) * amount) for _ in range(3))
    s = torch.where(_rand(n, gen, dev) < grey_p, torch.zeros_like(s), s)
    w = torch.tensor(GREY_WEIGHTS, device=dev)
    eye = torch.eye(3, device=dev)
    sat = s.view(-1, 1, 1) * eye + (1 - s).view(-1, 1, 1) * w.view(1, 1, 3)   # g + (x - g) * s
    mat = (c * b).view(-1, 1, 1) * sat                                         # contrast about the mean grey
    offset = (1 - c) * b * (x.mean((2, 3)) @ w)                                # ... of the brightened image
    y = torch.einsum("nij,njhw->nihw", mat, x) + offset.view(-1, 1, 1, 1)
    return y.clamp_(0, 255)


GREY_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R 601 luma, as Pillow's convert("L")


MIXES = ("cutmix", "mixup", "both")


class Mix:
    """CutMix or MixUp (torchvision's) on a random fraction `p` of training batches.

    CutMix pastes a box of one image into another, MixUp blends two whole images; either way the
    target is the two labels in proportion. For a bird-vs-rest decision that means pieces of birds
    on every kind of background, and backgrounds that must not be called a bird on their own:
    what `locate`'s windows and unseen photos ask of the network. "both" picks one per batch.
    (Measured in the one-hour multi-source recipe, it cost ranking, calibration and `locate`'s
    boxes: the network underfits there; docs/RESULTS.md, "Mixing".)
    Batches left unmixed keep their plain labels (hard-example mining learns from those only).
    """

    def __init__(self, kind: str, p: float, n_classes: int, alpha: float = 1.0):
        from torchvision.transforms import v2

        cutmix, mixup = v2.CutMix(alpha=alpha, num_classes=n_classes), v2.MixUp(alpha=alpha, num_classes=n_classes)
        self.ops = {"cutmix": [cutmix], "mixup": [mixup], "both": [cutmix, mixup]}[kind]  # `kind`: one of MIXES
        self.p = p

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(images, int labels) -> (images, labels): soft (N, classes) targets when mixed.
        Uses torch's global generator, which training seeds every step (reproducible on resume)."""
        if len(x) < 2 or torch.rand(()) >= self.p:
            return x, y
        op = self.ops[int(torch.randint(len(self.ops), ()))]
        return op(x, y)
