"""Hard-example mining for the positive-vs-rest decision: draw often what the network gets wrong.

A photo collection is mostly things that are not birds, and a few of them (a crayfish, a
pineapple, a patch of a barn) pull p(bird) up. Every training step already computes the
network's p(positive) for its batch, so the mining is free: each image remembers how wrong that
probability was when it was last trained on, and the next epoch draws it `1 + strength x
hardness` times as often as its size (and the source weights) imply. Hardness is measured from
the label-smoothed target, so an image the network has learned counts 0 and one it has fully
wrong counts 1, on either side of the decision (a missed bird and a false "bird" alike).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist

from . import distributed


class HardMining:
    def __init__(self, n: int, positive: int, n_classes: int, label_smoothing: float, strength: float):
        self.strength, self.positive = strength, positive
        # the p(positive) the smoothed loss aims at for a positive image, and for any other
        self.high = 1 - label_smoothing + label_smoothing / n_classes
        self.low = label_smoothing / n_classes
        self.hardness = torch.zeros(n, dtype=torch.float64)   # as of the end of the last epoch: sets the draw
        self._sum = torch.zeros(n, dtype=torch.float64)       # this epoch's records, merged at its end
        self._count = torch.zeros(n, dtype=torch.float64)

    @torch.no_grad()
    def record(self, picked: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """Note how wrong p(positive) was for training images `picked` (CPU indices) in this step."""
        p = logits.float().softmax(1)[:, self.positive]
        positive = labels == self.positive
        # one-sided: a positive above its target, or a negative below, is not hard at all
        hard = (torch.where(positive, self.high - p, p - self.low) / (self.high - self.low)).clamp(0, 1)
        self._sum.index_add_(0, picked, hard.double().cpu())
        self._count.index_add_(0, picked, torch.ones(len(picked), dtype=torch.float64))

    def end_epoch(self, ranks: distributed.Ranks, device: torch.device) -> None:
        """Merge the epoch's records (every rank's share) into `hardness`; images not drawn keep theirs."""
        sums = torch.stack([self._sum, self._count])
        if ranks.parallel:
            sums = sums.to(device)
            dist.all_reduce(sums)
            sums = sums.cpu()
        seen = sums[1] > 0
        self.hardness[seen] = sums[0][seen] / sums[1][seen]
        self._sum.zero_(), self._count.zero_()

    def weights(self, base: np.ndarray | None) -> np.ndarray | None:
        """Sampling weights for the next epoch: `base` (None: uniform) times 1 + strength x hardness."""
        if not self.hardness.any():
            return base
        w = 1 + self.strength * self.hardness.numpy()
        return w if base is None else base * w

    def state(self) -> dict:
        return {"hardness": self.hardness, "sum": self._sum, "count": self._count}

    def load_state(self, state: dict) -> None:
        n = len(state["hardness"])
        if n != len(self.hardness):
            raise ValueError(f"hard-mining state for {n} images, the data has {len(self.hardness)}")
        self.hardness, self._sum, self._count = state["hardness"], state["sum"], state["count"]
