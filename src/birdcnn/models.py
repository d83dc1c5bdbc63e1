"""The networks, registered by name: a new architecture is one decorated function.

* ``article``: the original article's network, kept faithfully.
* ``fast`` (default): an airbench-style CNN (Jordan 2024, "94% on CIFAR-10 in 3.29 seconds"),
  which trains to 94% CIFAR-10 accuracy in about ten epochs.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {}


def register(name: str):
    def deco(fn: Callable[..., nn.Module]):
        ARCHITECTURES[name] = fn
        return fn
    return deco


def build(arch: str, num_classes: int, **kwargs) -> nn.Module:
    if arch not in ARCHITECTURES:
        raise KeyError(f"unknown architecture {arch!r}; known: {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[arch](num_classes=num_classes, **kwargs)


def head_name(net: nn.Module) -> str | None:
    """The name of the network's last linear layer, whose rows are its classes (None: it has none)."""
    names = [name for name, m in net.named_modules() if isinstance(m, nn.Linear)]
    return names[-1] if names else None


# ---------------------------------------------------------------- the article's network

@register("article")
def article(num_classes: int = 2, input_size: int = 32) -> nn.Module:
    """conv 3x3x32 -> max-pool 2 -> conv 3x3x64 -> conv 3x3x64 -> max-pool 2 -> dense 512 -> dropout 0.5 -> output."""
    flat = 64 * (input_size // 4) ** 2
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
        nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(flat, 512), nn.ReLU(),
        nn.Dropout(0.5),
        nn.Linear(512, num_classes),
    )


# ---------------------------------------------------------------- the fast default network

class BatchNorm(nn.BatchNorm2d):
    """BatchNorm with a learned shift only: the scale is redundant before GELU+conv (airbench)."""

    def __init__(self, num_features: int, momentum: float = 0.6, eps: float = 1e-12):
        super().__init__(num_features, eps=eps, momentum=1 - momentum)
        self.weight.requires_grad = False


class Conv(nn.Conv2d):
    def __init__(self, cin: int, cout: int):
        super().__init__(cin, cout, kernel_size=3, padding="same", bias=False)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        # Identity ("dirac") init of the first cin filters: the block starts as a pass-through,
        # which airbench measured as worth ~0.1-0.2% at a fixed short budget.
        nn.init.dirac_(self.weight.data[: self.weight.size(1)])


class MaxPool(nn.MaxPool2d):
    """2x2 max-pooling; at inference on bf16 CPU tensors, the max of the four strided slices.

    PyTorch's CPU max-pool kernel is slow on the network's first bf16 channels-last map: at a
    40-px view, batch 256, 15.4 ms against 3.5 ms for the slices, the same values
    (benchmarks/pool_speed.py, docs/RESULTS.md), so the forward pass is 1.15x faster for predict,
    search and locate. Training keeps the
    kernel: its backward pass needs the kernel's indices (hand-written, the backward was slower).
    Exports trace the kernel, so an ONNX file has a MaxPool node."""

    def __init__(self):
        super().__init__(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (torch.is_grad_enabled() or x.dtype != torch.bfloat16 or x.device.type != "cpu"
                or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()):
            return super().forward(x)
        h, w = x.shape[-2] // 2 * 2, x.shape[-1] // 2 * 2  # floor, as the kernel does for odd sizes
        rows = torch.maximum(x[..., 0:h:2, :w], x[..., 1:h:2, :w])
        return torch.maximum(rows[..., 0::2], rows[..., 1::2])


class ConvGroup(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv1 = Conv(cin, cout)
        self.pool = MaxPool()
        self.norm1 = BatchNorm(cout)
        self.conv2 = Conv(cout, cout)
        self.norm2 = BatchNorm(cout)
        self.activ = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Pool right after the first conv: the BN/GELU run on 4x fewer pixels.
        x = self.activ(self.norm1(self.pool(self.conv1(x))))
        return self.activ(self.norm2(self.conv2(x)))


class Scale(nn.Module):
    def __init__(self, factor: float):
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor


WHITENING_BIAS_EPOCHS = 3  # airbench: the first layer's bias learns for 3 epochs, then stays put
HEAD_SCALE = 1 / 9  # the logits' scale after the last linear layer


class FastNet(nn.Sequential):
    """whiten (2x2 conv, frozen) -> 3 x [conv-pool-BN-GELU-conv-BN-GELU] -> max-pool -> linear.

    `stem_stride` 2 moves the whitening filters by 2 pixels: the groups then see a 2N-px input at the
    map size an N-px one gives at stride 1 (measured at 64 px against 32: the training step 6% slower,
    a training epoch of photos about 30% slower, partly as their crops come from larger copies), and
    the finer detail reaches them through the whitened 2x2 patches (the filters are +-eigenvectors of
    the patch covariance, so no information is lost)."""

    def __init__(self, num_classes: int = 10, widths: tuple[int, int, int] = (64, 256, 256), stem_stride: int = 1):
        if stem_stride not in (1, 2):
            raise ValueError(f"stem_stride must be 1 or 2, not {stem_stride!r}")
        whiten_width = 2 * 3 * 2 * 2
        super().__init__(
            nn.Conv2d(3, whiten_width, kernel_size=2, stride=stem_stride, padding=0, bias=True),
            nn.GELU(),
            ConvGroup(whiten_width, widths[0]),
            ConvGroup(widths[0], widths[1]),
            ConvGroup(widths[1], widths[2]),
            nn.AdaptiveMaxPool2d(1),
            nn.Flatten(),
            nn.Linear(widths[2], num_classes, bias=False),
            Scale(HEAD_SCALE),  # small logits at init: lets the high learning rate start stable
        )
        self[0].weight.requires_grad = False
        nn.init.zeros_(self[0].bias)

    def parameter_groups(self) -> list[dict]:
        """The parameters by training role (read by `train.make_optimizer`): BatchNorm shifts, which
        airbench trains at a higher learning rate; the whitening bias, trained for the first
        `WHITENING_BIAS_EPOCHS` epochs only (its filters stay frozen); the convolution filters;
        and the last linear layer's weights."""
        norm = [p for m in self.modules() if isinstance(m, nn.BatchNorm2d) for p in m.parameters() if p.requires_grad]
        filters = [p for m in self.modules() if isinstance(m, Conv) for p in m.parameters()]
        return [dict(params=norm, role="norm"),
                dict(params=[self[0].bias], role="bias", until_epoch=WHITENING_BIAS_EPOCHS),
                dict(params=filters, role="filters"),
                dict(params=[self[-2].weight], role="head")]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The whitening layer runs in float32 even under bf16 autocast: its filters scale the
        # faint high-frequency directions up to ~45x, and bf16's 8-bit mantissa turns them into
        # noise (measured: up to 17% relative error in those channels).
        with torch.autocast(x.device.type, enabled=False):
            x = self[0](x.float())
        for layer in list(self)[1:]:
            x = layer(x)
        return x

    @torch.no_grad()
    def init_whitening(self, x: torch.Tensor, eps: float = 5e-4) -> None:
        """Set the first layer to whiten 2x2 patches of (normalised) training images `x`.

        A fixed PCA-whitening first layer (from airbench/hlb-CIFAR10) decorrelates pixels so the
        rest of the network trains faster; its filters are +-eigenvectors, so no information is lost
        through the GELU.
        """
        conv = self[0]
        c, (h, w) = x.shape[1], conv.weight.shape[2:]
        patches = x.float().unfold(2, h, 1).unfold(3, w, 1).transpose(1, 3).reshape(-1, c * h * w)
        cov = patches.T @ patches / len(patches)
        eigval, eigvec = torch.linalg.eigh(cov)
        eigval, eigvec = eigval.flip(0), eigvec.T.flip(0)
        filt = (eigvec / torch.sqrt(eigval[:, None] + eps)).reshape(c * h * w, c, h, w)
        conv.weight.copy_(torch.cat([filt, -filt]))


@register("fast")
def fast(num_classes: int = 10, widths: tuple[int, int, int] = (64, 256, 256), stem_stride: int = 1) -> nn.Module:
    return FastNet(num_classes, tuple(widths), stem_stride)


@register("tiny")
def tiny(num_classes: int = 10) -> nn.Module:
    """The fast design at 1/8 width: for tests and quick experiments, not accuracy."""
    return FastNet(num_classes, (16, 32, 32))
