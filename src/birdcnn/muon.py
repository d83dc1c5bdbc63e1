"""Muon for convolution filters, SGD-Nesterov for the rest, in one optimizer.

Muon (Jordan et al. 2024) keeps SGD's Nesterov momentum but replaces each filter bank's update by
an approximately orthogonal matrix of the same shape (a few Newton-Schulz iterations), so every
direction of a layer learns at the same rate; the filters are renormalised every step, which
makes weight decay unnecessary for them. airbench94_muon reaches airbench94's CIFAR-10 accuracy
in 8 epochs instead of 9.9.

Written here rather than taken from torch.optim.Muon, which accepts 2-D parameters only: a
convolution's filters are 4-D (flattened per output channel here, as airbench does). One
optimizer for both kinds of group keeps checkpoints, DDP and the learning-rate schedule as they
are for plain SGD.
"""
from __future__ import annotations

import torch

from .devices import fast_bf16


def orthogonalise(g: torch.Tensor, steps: int = 3, eps: float = 1e-7) -> torch.Tensor:
    """An approximately orthogonal matrix with g's singular vectors (singular values ~0.5-1.5):
    airbench's quintic Newton-Schulz iteration, in bf16 where the device has fast bf16 matmuls."""
    dtype = torch.bfloat16 if fast_bf16(g.device) else torch.float32
    x = g.to(dtype)
    x = x / (x.norm() + eps)  # the top singular value <= 1
    wide = x.size(0) <= x.size(1)
    x = x if wide else x.T
    a, b, c = 3.4445, -4.7750, 2.0315
    for _ in range(steps):
        s = x @ x.T
        x = a * x + (b * s + c * s @ s) @ x
    return (x if wide else x.T).to(g.dtype)


class MuonSGD(torch.optim.Optimizer):
    """Parameter groups with `orthogonal=True` take Muon steps (lr: the step's size per filter
    bank); the others take torch.optim.SGD's Nesterov step with `weight_decay`."""

    def __init__(self, groups: list[dict], momentum: float, muon_momentum: float):
        super().__init__(groups, dict(lr=0.0, weight_decay=0.0, orthogonal=False, momentum=momentum))
        for g in self.param_groups:
            if g["orthogonal"]:
                g["momentum"] = muon_momentum

    @torch.no_grad()
    def step(self, closure=None) -> None:
        for group in self.param_groups:
            lr, m = group["lr"], group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad if group["orthogonal"] else p.grad.add(p, alpha=group["weight_decay"])
                buf = self.state[p].setdefault("momentum_buffer", torch.zeros_like(p))
                buf.mul_(m).add_(g)
                g = g.add(buf, alpha=m)  # Nesterov
                if group["orthogonal"]:
                    p.mul_(len(p) ** 0.5 / p.norm().clamp_min(1e-12))
                    g = orthogonalise(g.reshape(len(g), -1)).view_as(p)
                p.add_(g, alpha=-lr)
