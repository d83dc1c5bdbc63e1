"""`birdcnn train`: a seeded, resumable training run that writes a results folder.

The run folder holds the model (model.safetensors + model.json), metrics.json, history.json,
training_curves.png and checkpoint.pt (written atomically every epoch and on Ctrl-C, so
`--resume` continues a killed run).
"""
from __future__ import annotations

import json
import math
import os
import pickle
import sys
import time
import types
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from datetime import datetime
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from . import data as D
from . import distributed
from . import sources as S
from .argtypes import SEED_MAX
from .atomic import save_figure, write_atomic, write_text
from .augment import MIXES, Augment, Mix, PhotoViews, alternating_flip, shrink
from .calibrate import calibrate_and_measure
from .devices import fast_bf16
from .errors import BirdcnnError, DataError, TrainingInterrupted, display_path
from .heap import reuse_freed_memory
from .interrupts import StopOnCtrlC
from .mining import HardMining
from .modelfile import Classifier, default_model_path, load_model, pick_device, read_metadata, save_model
from .models import HEAD_SCALE, build, head_name
from .muon import MuonSGD
from .runs import default_run_dir

# airbench's Lookahead (`Lookahead`): from the 4th epoch (index 3), every 5 steps, decay 0.95 per step x (step/total)^3.
LOOKAHEAD = dict(start_epoch=3, every=5, decay=0.95, power=3.0)

# Each architecture's recipe; any CLI flag overrides its entry.
RECIPES: dict[str, dict] = {
    # airbench94's recipe (Jordan 2024): SGD-Nesterov with a short warm-up then linear decay,
    # label smoothing 0.2, a 64x higher learning rate for BatchNorm biases, alternating flip + 2 px
    # translate, Lookahead averaging, 6-view test-time augmentation. A faithful port of airbench94
    # on the shared JPEG CIFAR-10 measured 89.7% (no TTA), 90.2% (flip), 90.4% (flip-translate):
    # docs/RESULTS.md.
    "fast": dict(classes="all", optimizer="sgd", epochs=10.0, batch_size=1024, lr=11.5, momentum=0.85,
                 weight_decay=0.0153, bias_scaler=64.0, label_smoothing=0.2, tta="flip-translate",
                 lookahead=LOOKAHEAD, alternating_flip=True,
                 augment=dict(flip=True, shift=2, rotate=0.0, blur=0.0)),
    # The original article: Adam 1e-3, batch 96, flips, +-25 degree rotations, blur; bird vs not-bird.
    "article": dict(classes="binary", optimizer="adam", epochs=15.0, batch_size=96, lr=1e-3, momentum=0.0,
                    weight_decay=0.0, bias_scaler=1.0, label_smoothing=0.0, tta="none", lookahead=None,
                    augment=dict(flip=True, shift=0, rotate=25.0, blur=3.0)),
}
RECIPES["tiny"] = dict(RECIPES["fast"], batch_size=256)

# `--optimizer muon` for the fast networks: airbench94_muon's settings (Jordan 2024), which reach
# airbench94's accuracy in 8 epochs instead of 9.9: Muon for the filters (lr 0.24, momentum 0.6),
# SGD-Nesterov (momentum 0.85) for biases (0.053) and the last layer (0.67 on airbench's scale),
# weight decay 2e-6 per example, no warm-up, no Lookahead (`--lookahead` adds it: +0.2 points on the
# 16-epoch quick schedule, docs/RESULTS.md).
OPTIMIZERS = ("sgd", "muon")  # --optimizer: the fast networks' choices
MUON = dict(optimizer="muon", lr=0.24, muon_momentum=0.6, momentum=0.85, bias_lr=0.053, head_lr=0.67,
            weight_decay=2e-6, lookahead=None)

# Presets: other settings of TrainConfig's own fields for another aim, on the recipe of `arch`.
PRESETS: dict[str, dict] = {
    # "As good as possible in a few minutes" (issue 15), measured with benchmarks/time_to_accuracy.py
    # on the shared JPEG CIFAR-10 (docs/RESULTS.md): 90.1% test accuracy after 492 s of training on
    # the 2-core CPU (89.7% after 469 s at 8.5 epochs, before denormals were flushed). A narrower
    # network (0.57x the FLOPs, 1.4x the images/s at 32 px) gets more epochs into the minutes;
    # epochs 1-4 at 24 px (~1,400 images/s);
    # Muon for the filters (+1 point over SGD after 7 epochs, +0.25 after 9: SGD at batch 256 had
    # 89.8% after 480 s), batch 512 at Muon lr 0.12 (airbench's 0.24 at batch 2,000 scaled by
    # sqrt(batch); batch 2,000 is 15-20% slower per image here); 1,000 held out.
    "quick": dict(arch="fast", widths=[48, 192, 192], optimizer="muon", lr=0.12, epochs=9.0, batch_size=512,
                  start_size=24, start_epochs=4.0, val_size=1000),
}


def _as_list(x) -> list:
    return list(x) if isinstance(x, (list, tuple)) else [x]


@dataclass
class TrainConfig:
    data: str | list[str]               # one --data source or several, trained as one
    arch: str = "fast"
    widths: list[int] | None = None     # the fast network's three channel widths (default 64, 256, 256)
    stem_stride: int = 1                # the fast network's whitening stride (2: a 2N-px view, little over N-px cost)
    classes: str | None = None          # "all" (every class) or "binary" (positive vs rest)
    positive: str = "bird"
    extra_positive: str | None = None
    balance: bool = False               # sample classes equally often (sampling weights)
    balance_negatives: bool = False     # within each source, every not-positive class equally often
    source_weights: list[float] | None = None  # per --data source: drawn w x as often as its size implies
    hard_mining: float = 0.0            # draw an image 1 + this x as often when p(positive) was wrong: `mining`
    mix: str | None = None              # "cutmix", "mixup" or "both" on a fraction mix_p of batches: `augment.Mix`
    mix_p: float = 0.5
    epochs: float | None = None
    batch_size: int | None = None
    lr: float | None = None
    label_smoothing: float | None = None
    augment: dict | None = None         # overrides of the recipe's Augment fields
    val_size: int | None = None         # images held out of training for threshold + temperature
    target_precision: float = 0.97
    seed: int = 0
    out: str | None = None
    device: str | None = None
    bf16: bool = True
    input_size: int = 32                # the model's view in px: what predict, search and locate feed it
    zoom_size: int | None = None        # photos' second view in px (predict, evaluate): `Classifier.logits`
    # progressive resizing: the first `start_epochs` at this smaller size; lists for several stages,
    # in order (e.g. [24, 28] px for [4, 2] epochs), then the rest at `input_size`
    start_size: int | list[int] | None = None
    start_epochs: float | list[float] | None = None
    preset: str | None = None           # a PRESETS entry: fills the fields left unset
    optimizer: str | None = None        # "muon" for the fast networks; default: the recipe's
    lookahead: bool | None = None       # airbench's weight averaging (`Lookahead`); default: the recipe's
    init: str | None = None             # fine-tuning: start from this model's weights ("default": the shipped one)
    init_sha256: str | None = None      # the sha256 of the weights it started from (set when the run starts)
    recipe: dict = field(default_factory=dict)

    def resolved(self) -> "TrainConfig":
        """A copy with the architecture's recipe filled in: `recipe`, `augment` (the recipe's,
        with this config's overrides) and every field left unset."""
        if self.arch not in RECIPES:
            raise BirdcnnError(f"unknown --arch {self.arch!r}; known: {', '.join(RECIPES)}")
        preset = {}
        if self.preset is not None:
            if self.preset not in PRESETS:
                raise BirdcnnError(f"unknown --preset {self.preset!r}; known: {', '.join(PRESETS)}")
            preset = dict(PRESETS[self.preset])
            if preset.pop("arch") != self.arch:
                raise BirdcnnError(f"--preset {self.preset} is a recipe for --arch {PRESETS[self.preset]['arch']}")
        r = dict(RECIPES[self.arch])
        aug = {**r.pop("augment"), **(self.augment or {})}
        if self.optimizer and preset.get("optimizer", self.optimizer) != self.optimizer:
            preset.pop("lr", None)  # the preset's rate is for its own optimizer
        optimizer = self.optimizer or preset.get("optimizer")
        if optimizer not in (None, r["optimizer"]):
            if optimizer != "muon" or r["optimizer"] != "sgd":
                raise BirdcnnError(f"--optimizer {optimizer} does not fit --arch {self.arch} "
                                   f"(its optimizer: {r['optimizer']}; muon is for the fast networks)")
            r |= MUON
        if self.lookahead and r["optimizer"] == "adam":  # --no-lookahead is what the article's recipe is anyway
            raise BirdcnnError("--lookahead is for the fast networks' SGD or Muon, not --arch article")
        if self.lookahead is not None:
            r["lookahead"] = LOOKAHEAD if self.lookahead else None
        unset = {k: v for k, v in preset.items() if getattr(self, k) is None}
        unset |= {k: r[k] for k in ("classes", "epochs", "batch_size", "lr", "label_smoothing")
                  if getattr(self, k) is None and k not in unset}
        cfg = replace(self, **unset, augment=aug, recipe=r)
        if cfg.classes not in ("all", "binary"):
            raise BirdcnnError(f"--classes must be 'all' or 'binary', not {cfg.classes!r}")
        if cfg.balance_negatives and cfg.classes != "all":
            raise BirdcnnError("--balance-negatives needs --classes all (binary labels have one negative class)")
        if cfg.epochs <= 0 or cfg.batch_size <= 0:
            raise BirdcnnError("--epochs and --batch-size must be positive")
        if cfg.hard_mining < 0:
            raise BirdcnnError(f"--hard-mining must be 0 or more, not {cfg.hard_mining}")
        if cfg.mix is not None and (cfg.mix not in MIXES or not 0 < cfg.mix_p <= 1):
            raise BirdcnnError(f"--mix is one of {', '.join(MIXES)} with --mix-p above 0 and at most 1")
        if not 8 <= cfg.input_size <= 256:
            raise BirdcnnError(f"--input-size must be 8 to 256 px, not {cfg.input_size}")
        cfg.check_zoom()
        if cfg.widths is not None and (cfg.arch != "fast" or len(cfg.widths) != 3 or min(cfg.widths) < 1):
            raise BirdcnnError("--widths takes three positive channel counts, for --arch fast")
        if cfg.stem_stride not in (1, 2) or (cfg.stem_stride != 1 and cfg.arch != "fast"):
            raise BirdcnnError("--stem-stride is 1 or 2, for --arch fast")
        smallest = 9 if cfg.stem_stride == 1 else 16  # the third 2x pooling of the fast network needs a 2x2 map
        if cfg.arch in ("fast", "tiny") and min(_as_list(cfg.start_size or cfg.input_size)) < smallest:
            raise BirdcnnError(f"the {cfg.arch} network at --stem-stride {cfg.stem_stride} needs images of at least "
                               f"{smallest} px (--input-size, --start-size)")
        if cfg.start_size is not None:
            if cfg.arch == "article":  # its dense layer is sized for one input
                raise BirdcnnError("--start-size needs a network that takes any input size (not --arch article)")
            sizes, epochs = _as_list(cfg.start_size), _as_list(cfg.start_epochs)
            if (len(sizes) != len(epochs) or sizes != sorted(sizes) or not 8 <= sizes[0] <= sizes[-1] <= cfg.input_size
                    or None in epochs or min(epochs) <= 0 or sum(epochs) >= cfg.epochs):
                raise BirdcnnError(self._start_size_problem(cfg, set(preset) & set(unset)))
            if len(sizes) == 1:  # one stage is stored as plain numbers, as before lists were allowed
                cfg = replace(cfg, start_size=sizes[0], start_epochs=epochs[0])
        return cfg

    def _start_size_problem(self, cfg: "TrainConfig", from_preset: set[str]) -> str:
        """Why `cfg`'s progressive resizing is impossible, naming what --preset set (the user
        never typed those values) and how to go on."""
        def told(key: str, flag: str) -> str:
            if key not in from_preset:
                return flag
            value = " ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in _as_list(getattr(cfg, key)))
            return f"{flag} {value} (from --preset {self.preset})"
        epochs = f"{cfg.epochs:g}" + (f", from --preset {self.preset}" if "epochs" in from_preset else "")
        text = (f"{told('start_size', '--start-size')} must be 8 px to --input-size ({cfg.input_size}), smallest "
                f"first, one {told('start_epochs', '--start-epochs')} each, together fewer than --epochs ({epochs})")
        if from_preset & {"start_size", "start_epochs", "epochs"}:
            small = _as_list(cfg.start_epochs)
            more = f"--epochs above {sum(small):g}" if None not in small else "more --epochs"
            text += f"; pass --start-size and --start-epochs that fit, or {more}"
        return text

    def check_zoom(self) -> None:
        if self.zoom_size is not None and (self.arch == "article" or not self.input_size < self.zoom_size <= 256):
            raise BirdcnnError(f"--zoom-size must be above the input size ({self.input_size}) and at most 256 px, "
                               f"for a network that takes any input size (not --arch article)")

    def size_at(self, epoch: int) -> int:
        """The training input size in `epoch` (0-based): small first, then the model's view.
        Training on smaller images first is faster; the last epochs at the view's size fix the
        statistics the network meets when it is used (FixRes, Touvron et al. 2019)."""
        if self.start_size is not None:
            end = 0.0
            for size, epochs in zip(_as_list(self.start_size), _as_list(self.start_epochs)):
                end += epochs
                if epoch < end:
                    return size
        return self.input_size

    def arch_kwargs(self) -> dict:
        """Architecture settings the model file records: the fast network's widths and stem stride,
        the article's input size (its dense layer depends on it)."""
        kw: dict = {"widths": list(self.widths)} if self.widths else {}
        kw |= {"stem_stride": self.stem_stride} if self.stem_stride != 1 else {}
        return kw | ({"input_size": self.input_size} if self.arch == "article" and self.input_size != 32 else {})


# ---------------------------------------------------------------- data preparation

def data_sources(cfg: TrainConfig) -> list[str]:
    return [cfg.data] if isinstance(cfg.data, str) else list(cfg.data)


def prepare_data(cfg: TrainConfig) -> S.Mixed:
    """Every source's training images (at store size), validation and test splits (at the model's
    view), with the positive class applied; see `birdcnn.sources`."""
    specs = data_sources(cfg)
    mixed = S.load_sources(specs, cfg.input_size, cfg.seed, cfg.source_weights, cfg.val_size)
    if cfg.positive not in mixed.train.classes:
        raise DataError(f"positive class {cfg.positive!r} is not among the data's classes: "
                        f"{', '.join(mixed.train.classes)}")
    if cfg.extra_positive:
        S.add_extra_positive(mixed, cfg.extra_positive, cfg.positive)
    if cfg.classes == "binary":
        mixed.train, mixed.val = D.to_binary(mixed.train, cfg.positive), D.to_binary(mixed.val, cfg.positive)
        mixed.tests = [(n, D.to_binary(t, cfg.positive) if t is not None else None) for n, t in mixed.tests]
    return mixed


# ---------------------------------------------------------------- fine-tuning

def init_model_path(spec: str) -> Path:
    """--init's model: "default" is the model shipped in the package; anything else a path as --model takes."""
    return default_model_path() if spec == "default" else Path(spec)


def init_settings(spec: str) -> dict:
    """The network settings of the model `spec` names, which a run that starts from it takes
    unless told otherwise: arch, widths, stem_stride, input_size, zoom_size (None: not set)."""
    if spec.endswith(".onnx"):
        raise BirdcnnError(f"--init {spec}: an ONNX export holds no trainable weights; give the model it was "
                           "exported from (NAME.json beside NAME.safetensors, or its run folder)")
    meta = read_metadata(init_model_path(spec))
    kw = meta.get("arch_kwargs", {})
    return {"arch": meta["arch"], "widths": kw.get("widths"), "stem_stride": kw.get("stem_stride"),
            "input_size": meta["input_size"], "zoom_size": meta.get("zoom_size")}


def load_init(cfg: TrainConfig) -> Classifier:
    """The model `cfg.init` names, checked to be the network this run trains (all but the last
    layer, which the run's classes shape)."""
    init = load_model(init_model_path(cfg.init), device="cpu")
    stride = init.meta.get("arch_kwargs", {}).get("stem_stride", 1)
    if (init.meta["arch"], stride) != (cfg.arch, cfg.stem_stride):
        raise BirdcnnError(f"--init {cfg.init}: a {init.meta['arch']!r} network at stem stride {stride}, "
                           f"not the {cfg.arch!r} network at stem stride {cfg.stem_stride} this run trains")
    ours = build(cfg.arch, len(init.classes), **cfg.arch_kwargs()).state_dict()
    for name, t in init.net.state_dict().items():
        if ours[name].shape != t.shape:
            raise BirdcnnError(f"--init {cfg.init}: its network does not fit this run's ({name}: {tuple(t.shape)} "
                               f"there, {tuple(ours[name].shape)} here; --widths must be the model's)")
    return init


@torch.no_grad()
def start_from(net: torch.nn.Module, init: Classifier, classes: list[str]) -> int:
    """Copy `init`'s weights (from `load_init`) into `net`: every layer as it is (the BatchNorm
    statistics and the whitening filters too), the last layer one row per class, matched by name;
    a class the model does not know keeps its fresh start. Returns how many of `classes` it knew."""
    head = f"{head_name(net)}."
    rows = [(i, init.classes.index(c)) for i, c in enumerate(classes) if c in init.classes]
    source = init.net.state_dict()
    for name, t in net.state_dict().items():
        if name.startswith(head):
            for i, j in rows:
                t[i] = source[name][j].to(t.device)
        else:
            t.copy_(source[name])
    return len(rows)


# ---------------------------------------------------------------- optimisation

def make_optimizer(net: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """The recipe's optimizer. For SGD and Muon, parameter groups by role: a network that knows its
    roles says so in `parameter_groups()` (FastNet); otherwise BatchNorm's parameters are "norm"."""
    r = cfg.recipe
    if r["optimizer"] == "adam":
        return torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=cfg.lr)
    if hasattr(net, "parameter_groups"):
        groups = net.parameter_groups()
    else:
        norm = [p for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
                for p in m.parameters()]
        groups = [dict(params=[p for p in norm if p.requires_grad], role="norm"),
                  dict(params=[p for p in net.parameters() if p.requires_grad and all(p is not q for q in norm)],
                       role="weights")]
    groups = [g for g in groups if g["params"]]
    if r["optimizer"] == "muon":
        return _muon(groups, cfg)
    # airbench's parametrisation: lr and weight decay are "per 1024 examples" with a summed loss.
    momentum = r["momentum"]
    kilostep = 1024 * (1 + 1 / (1 - momentum))
    lr, wd = cfg.lr / kilostep, r["weight_decay"] * cfg.batch_size / kilostep
    for g in groups:
        g["initial_lr"] = lr * r["bias_scaler"] if g.pop("role") == "norm" else lr
        # PyTorch multiplies weight decay by the lr: dividing by it makes the decay per step independent
        # of the lr ("decoupled"), as airbench does.
        g.update(lr=g["initial_lr"], weight_decay=wd / g["initial_lr"])
    return torch.optim.SGD(groups, momentum=momentum, nesterov=True)


def _muon(groups: list[dict], cfg: TrainConfig) -> MuonSGD:
    """airbench94_muon's optimizer: Muon at `cfg.lr` for the convolution filters; SGD-Nesterov at
    `bias_lr` for biases and BatchNorm shifts and at `head_lr` for the last layer, with weight
    decay per example (a summed loss)."""
    r = cfg.recipe
    wd = r["weight_decay"] * cfg.batch_size
    for g in groups:
        role = g.pop("role")
        if role == "filters":
            g.update(orthogonal=True, initial_lr=cfg.lr, lr=cfg.lr)
            continue
        # airbench's logits are W x / width with W of unit scale, ours W x * HEAD_SCALE: the same
        # step on the logits needs the rate scaled by the square of the ratio of the two.
        lr = r["head_lr"] / (HEAD_SCALE * g["params"][0].shape[1]) ** 2 if role == "head" else r["bias_lr"]
        g.update(initial_lr=lr, lr=lr, weight_decay=wd / lr)
    if not any(g.get("orthogonal") for g in groups):
        raise BirdcnnError(f"--optimizer muon needs a network whose filters it can tell apart "
                           f"(--arch fast or tiny), not --arch {cfg.arch}")
    return MuonSGD(groups, momentum=r["momentum"], muon_momentum=r["muon_momentum"])


def lr_factor(step: int, total: int, optimizer: str) -> float:
    """SGD: warm up from 0.2x over the first 23% of steps, then decay linearly to 0.07x (airbench);
    Muon: decay linearly from 1x to 0 (airbench94_muon); Adam: constant."""
    if optimizer == "adam":
        return 1.0
    if optimizer == "muon":
        return 1.0 - step / total
    warm = max(1, int(total * 0.23))
    if step < warm:
        return 0.2 + 0.8 * step / warm
    return 1.0 + (0.07 - 1.0) * (step - warm) / max(1, total - warm)


def set_learning_rates(opt: torch.optim.Optimizer, step: int, total: int, epoch: int, optimizer: str) -> None:
    """The schedule's rate for every group; 0 for a group past its `until_epoch` (the parameter
    stays put, and every process still computes its gradient, as DistributedDataParallel needs)."""
    f = lr_factor(step, total, optimizer)
    for g in opt.param_groups:
        if "initial_lr" in g:
            g["lr"] = g["initial_lr"] * f if epoch < g.get("until_epoch", math.inf) else 0.0


class Lookahead:
    """airbench's weight averaging: every few steps the weights move to an exponential average of
    themselves (Lookahead-style), with a decay that grows as (step/total)^power, so training moves
    fast early and averages strongly at the end. Every float tensor of the state is averaged,
    BatchNorm statistics included."""

    def __init__(self, net: torch.nn.Module, state: dict | None = None):
        self.avg = state if state is not None else {
            k: v.detach().clone() for k, v in net.state_dict().items() if v.is_floating_point()}

    @torch.no_grad()
    def update(self, net: torch.nn.Module, decay: float) -> None:
        current = net.state_dict()
        for k, a in self.avg.items():
            a.lerp_(current[k], 1 - decay)
            current[k].copy_(a)


def training_step(net: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
                  cfg: TrainConfig, autocast: Callable, processes: int = 1) -> tuple[float, torch.Tensor]:
    """One optimisation step on an augmented, normalised batch; returns (loss, logits). `y` holds
    class indices, or (N, classes) target probabilities for a mixed batch (`augment.Mix`).

    With `processes` data-parallel ranks, `x` is this rank's slice of the global batch: DDP
    averages the gradients, so a summed loss is scaled up to make the step that of one process."""
    with autocast():
        out = net(x)
        # airbench sums the loss (its lr is per 1024 examples); Adam, as in the article, averages.
        summed = cfg.recipe["optimizer"] != "adam"
        loss = F.cross_entropy(out.float(), y, label_smoothing=cfg.label_smoothing,
                               reduction="sum" if summed else "mean")
    opt.zero_grad(set_to_none=True)
    (loss * processes if summed else loss).backward()
    opt.step()
    return loss.item(), out


# ---------------------------------------------------------------- the inputs

class Inputs:
    """The network's inputs: stored training images on the device, their normalisation, and the
    synthetic version of every batch (photo crops, the alternating flip, shifts, rotations, blur)."""

    def __init__(self, mixed: S.Mixed, cfg: TrainConfig, device: torch.device, norm: dict):
        train_ds = mixed.train
        self.images = torch.from_numpy(train_ds.images).to(device)
        self.labels = torch.from_numpy(train_ds.labels).to(device)
        self.device, self.store_scale = device, mixed.store_scale if mixed.photo_views else 1
        self.photo = torch.from_numpy(np.asarray(mixed.photo)[mixed.train_source])
        self.positive = torch.from_numpy(train_ds.labels == train_ds.classes.index(cfg.positive))
        self.mean = torch.tensor(norm["mean"], device=device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(norm["std"], device=device).view(1, 3, 1, 1) * 255
        aug_cfg = dict(cfg.augment)
        self.views = None
        if mixed.photo_views:
            # Crops replace Augment's shift: thumbnails are moved by the same +-shift inside PhotoViews.
            self.views = PhotoViews(size=cfg.input_size, shift=aug_cfg.get("shift", 0))
            aug_cfg["shift"] = 0
        self.first_flip = None
        if aug_cfg.get("flip") and cfg.recipe.get("alternating_flip"):
            # The alternating flip replaces Augment's coin toss: one random first choice per image.
            self.first_flip = torch.rand(len(train_ds), generator=torch.Generator().manual_seed(cfg.seed)) < 0.5
            aug_cfg["flip"] = False
        self.augment = Augment(**aug_cfg)

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        return ((x - self.mean) / self.std).contiguous(memory_format=torch.channels_last)

    def prep(self, u8: torch.Tensor) -> torch.Tensor:
        """Model-view uint8 images (N, H, W, 3) -> normalised input."""
        return self.normalise(u8.permute(0, 3, 1, 2).float())

    def batch(self, picked: torch.Tensor, epoch: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The augmented, normalised `size`-px input and the labels of training images `picked` (CPU indices)."""
        idx = picked.to(self.device)
        x = self.images[idx].permute(0, 3, 1, 2).float()
        if self.views is not None:
            self.views.size = size
            x = self.views(x, self.photo[picked], self.positive[picked])
        else:  # thumbnails only, stored at the view's size (smaller in progressive resizing's first epochs)
            x = shrink(x, size)
        x = self.normalise(x)
        if self.first_flip is not None:
            x = alternating_flip(x, self.first_flip[picked], epoch)
        return self.augment(x), self.labels[idx]

    def whitening_sample(self, seed: int, n: int = 5000) -> torch.Tensor:
        """A random sample at the input size (the training set is ordered by class: its first
        5000 are airplanes), normalised, for the whitening layer's statistics."""
        sample = torch.randperm(len(self.images), generator=torch.Generator().manual_seed(seed))[:n]
        x = self.images[sample.to(self.device)].permute(0, 3, 1, 2).float()
        return self.normalise(shrink(x, x.shape[-1] // self.store_scale))


def data_norm(images: np.ndarray) -> dict:
    """Per-channel mean and standard deviation of uint8 images, on a 0-1 scale.

    Summed a chunk at a time: a float64 copy of 94k stored 80-px photos would be 14 GB."""
    pixels = images.reshape(-1, 3)
    total, squares = np.zeros(3), np.zeros(3)
    for i in range(0, len(pixels), 1 << 22):
        x = pixels[i:i + (1 << 22)].astype(np.float64) / 255
        total += x.sum(0)
        squares += (x * x).sum(0)
    mean = total / max(1, len(pixels))
    std = np.sqrt(np.maximum(squares / max(1, len(pixels)) - mean * mean, 0))
    return {"mean": mean.round(5).tolist(), "std": std.round(5).tolist()}


# ---------------------------------------------------------------- the run

def _save_checkpoint(path: Path, net, opt, step: int, history: list, cfg: TrainConfig, norm: dict,
                     lookahead: Lookahead | None, mining: HardMining | None, command: str,
                     classes: list[str] | None = None, train_images: int | None = None,
                     data_fingerprint: str | None = None) -> None:
    """`classes`, `train_images` and `data_fingerprint`: the data the run trains on, which --resume checks."""
    state = {"model": net.state_dict(), "optimizer": opt.state_dict(), "step": step, "command": command,
             "history": json.dumps(history), "config": json.dumps(asdict(cfg)), "norm": json.dumps(norm),
             "lookahead": lookahead.avg if lookahead is not None else {},
             "mining": mining.state() if mining is not None else {}}
    if classes is not None:
        state["classes"] = json.dumps(classes)
    if train_images is not None:
        state["train_images"] = train_images
    if data_fingerprint is not None:
        state["data_fingerprint"] = data_fingerprint
    write_atomic(path, lambda tmp: torch.save(state, tmp))


CHECKPOINT_KEYS = ("model", "optimizer", "step", "history", "config", "norm")


def _load_checkpoint(path: Path) -> dict:
    """The checkpoint at `path`, read without unpickling code, and checked here (the one place a
    checkpoint is read) to be one this birdcnn can continue: its keys, config, history,
    normalisation and weights, which must fit the network its config describes. Anything else
    is one line naming the file and what is wrong."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)  # never unpickles code
    except pickle.UnpicklingError as e:  # torch's message ends in its detail, then a pointer to its docs
        lines = [line.strip() for line in str(e).splitlines() if line.strip()] or [type(e).__name__]
        detail = lines[-2] if len(lines) > 1 and lines[-1].startswith("Check the documentation") else lines[0]
        problem = f"not plain weights and data, and birdcnn unpickles nothing else: {detail[:160]}"
    except Exception as e:  # noqa: BLE001
        problem = (str(e).splitlines() or [type(e).__name__])[0][:200]
    else:
        problem = _checkpoint_problem(ckpt)
    if problem is not None:
        raise BirdcnnError(f"{display_path(path)}: not a usable birdcnn checkpoint ({problem})")
    return ckpt


def _fits(value, hint) -> bool:
    """Whether a JSON value is of the type a TrainConfig field is annotated with."""
    if hint is type(None):
        return value is None
    origin = typing.get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        return any(_fits(value, h) for h in typing.get_args(hint))
    if origin is list:
        return isinstance(value, list) and all(_fits(v, typing.get_args(hint)[0]) for v in value)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is dict or origin is dict:
        return isinstance(value, dict)
    return isinstance(value, hint)


def _a(kind: type) -> str:
    name = kind.__name__
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name}"


def _type_name(hint) -> str:
    return hint.__name__ if isinstance(hint, type) else str(hint)


def _json_field(ckpt: dict, key: str, kind: type) -> tuple[object, str | None]:
    """A checkpoint entry stored as JSON text: (value, None), or (None, what is wrong)."""
    text = ckpt[key]
    if not isinstance(text, str):
        return None, f"its {key!r} is {_a(type(text))}, not JSON text"
    try:
        value = json.loads(text)
    except ValueError:
        return None, f"its {key!r} is not valid JSON"
    if not isinstance(value, kind):
        return None, f"its {key!r} is a JSON {type(value).__name__}, not a {'list' if kind is list else 'object'}"
    return value, None


def _checkpoint_problem(ckpt) -> str | None:
    """What makes `ckpt` (as torch.load read it) unusable for --resume; None: nothing."""
    if not isinstance(ckpt, dict):
        return f"it holds {_a(type(ckpt))}, not a checkpoint's dictionary"
    missing = [k for k in CHECKPOINT_KEYS if k not in ckpt]
    if missing:
        return "it lacks " + ", ".join(repr(k) for k in missing)
    saved, problem = _json_field(ckpt, "config", dict)
    if problem:
        return problem
    hints = typing.get_type_hints(TrainConfig)
    unknown = sorted(k for k in saved if k not in hints)
    if unknown:
        return f"unknown config key{'s' if len(unknown) > 1 else ''}: {', '.join(map(repr, unknown))}"
    absent = [f.name for f in fields(TrainConfig)
              if f.default is MISSING and f.default_factory is MISSING and f.name not in saved]
    if absent:
        return f"its config has no {', '.join(map(repr, absent))}"
    for k, v in saved.items():
        if not _fits(v, hints[k]):
            return f"config {k!r} is {json.dumps(v)[:60]}, not {_type_name(hints[k])}"
    if saved.get("arch", TrainConfig.arch) not in RECIPES:
        return f"unknown architecture {saved['arch']!r}; known: {', '.join(RECIPES)}"
    if not 0 <= saved.get("seed", 0) <= SEED_MAX:
        return f"config 'seed' is {saved['seed']}, not 0 to 2**32-1"
    cfg = TrainConfig(**saved)
    try:
        # the same checks as a new run's settings (the recipe itself stays the saved one)
        Augment(**cfg.resolved().augment)
    except BirdcnnError as e:
        return f"its config: {e}"
    except (TypeError, ValueError) as e:
        return f"its config's augment: {str(e)[:120]}"
    if _recipe_problem(cfg):
        return f"its config's recipe {_recipe_problem(cfg)}"
    if not isinstance(ckpt["step"], int) or isinstance(ckpt["step"], bool) or ckpt["step"] < 0:
        return f"its 'step' is {ckpt['step']!r:.60}, not a whole number 0 or more"
    history, problem = _json_field(ckpt, "history", list)
    if problem or not all(isinstance(h, dict) and isinstance(h.get("seconds"), (int, float)) for h in history):
        return problem or "its 'history' is not a list of epochs"
    norm, problem = _json_field(ckpt, "norm", dict)
    if problem or not all(isinstance(norm.get(k), list) and len(norm[k]) == 3 and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in norm[k]) for k in ("mean", "std")):
        return problem or "its 'norm' is not three means and three standard deviations"
    if not isinstance(ckpt["optimizer"], dict):
        return f"its 'optimizer' is {_a(type(ckpt['optimizer']))}, not an optimizer state"
    for key in ("command",):
        if key in ckpt and not isinstance(ckpt[key], str):
            return f"its {key!r} is {_a(type(ckpt[key]))}, not text"
    for key in ("mining",):
        if key in ckpt and not isinstance(ckpt[key], dict):
            return f"its {key!r} is {_a(type(ckpt[key]))}, not a dictionary"
    if "data_fingerprint" in ckpt and not isinstance(ckpt["data_fingerprint"], str):
        return "its 'data_fingerprint' is not text"
    if "train_images" in ckpt and (not isinstance(ckpt["train_images"], int) or isinstance(ckpt["train_images"], bool)):
        return "its 'train_images' is not a number of images"
    classes = None
    if "classes" in ckpt:
        classes, problem = _json_field(ckpt, "classes", list)
        if problem or not classes or not all(isinstance(c, str) for c in classes):
            return problem or "its 'classes' is not a list of class names"
    return _weights_problem(ckpt, cfg, classes)


def _recipe_problem(cfg: TrainConfig) -> str | None:
    """Whether the saved recipe holds every setting of its optimizer's, each of the right kind."""
    r = cfg.recipe
    if r.get("optimizer") not in ("sgd", "muon", "adam"):
        return f"has an unknown optimizer {r.get('optimizer')!r}"
    ref = {k: v for k, v in RECIPES[cfg.arch].items() if k != "augment"} | (MUON if r["optimizer"] == "muon" else {})
    lacking = sorted(set(ref) - set(r))
    if lacking:
        return f"lacks {', '.join(lacking)}"
    for k, v in ref.items():
        if k == "lookahead":
            la = r[k]
            if la is not None and not (isinstance(la, dict) and all(
                    _fits(la.get(key), float) for key in LOOKAHEAD)):
                return f"'lookahead' is {json.dumps(la)[:60]}"
        elif isinstance(v, (int, float)) and not isinstance(v, bool) and not _fits(r[k], float):
            return f"{k!r} is {json.dumps(r[k])[:60]}, not a number"
    return None


def _weights_problem(ckpt: dict, cfg: TrainConfig, classes: list[str] | None) -> str | None:
    """Whether the checkpoint's weights (and Lookahead's averages) are those of the network its config
    describes, with one row of the last layer per class."""
    model = ckpt["model"]
    if not isinstance(model, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in model.items()):
        return "its 'model' is not a network's weights"
    kw = cfg.arch_kwargs()
    try:
        net = build(cfg.arch, 2, **kw)
        head = f"{head_name(net)}.weight"
        if head not in model or model[head].ndim != 2 or len(model[head]) < 1:
            return f"its weights have no last layer ({head}) to fit the {cfg.arch!r} network"
        rows = len(model[head])
        if rows != 2:
            net = build(cfg.arch, rows, **kw)
    except (TypeError, ValueError, KeyError, RuntimeError) as e:  # settings the network cannot be built with
        return f"its config describes no network this birdcnn builds ({str(e)[:120]})"
    if classes is not None and len(classes) != rows:
        return f"its weights have {rows} classes, its 'classes' {len(classes)}"
    ours = net.state_dict()
    for name, t in model.items():
        if name not in ours:
            return f"its weights hold {name}, which the {cfg.arch!r} network has not"
        if tuple(t.shape) != tuple(ours[name].shape):
            return (f"its weights do not fit the {cfg.arch!r} network: {name} is {tuple(t.shape)} there, "
                    f"{tuple(ours[name].shape)} in the network")
    lacking = [name for name in ours if name not in model]
    if lacking:
        return f"its weights lack {', '.join(lacking[:3])}{' ...' if len(lacking) > 3 else ''}"
    lookahead = ckpt.get("lookahead", {})
    if not isinstance(lookahead, dict) or not all(
            k in ours and isinstance(v, torch.Tensor) and v.shape == ours[k].shape for k, v in lookahead.items()):
        return "its 'lookahead' averages do not fit its weights"
    return None


def _check_same_data(ckpt: dict, arch: str, classes: list[str], images: int, fingerprint: str,
                     ckpt_path: Path) -> None:
    """Refuse to resume a run on data other than it started on: the network's last layer has a row
    per class, and the epochs' orders and the hard-mining state index the training images. Old
    checkpoints record neither the classes nor the fingerprint: their last layer's rows tell the
    number of classes."""
    changes = []
    if "classes" in ckpt:
        then = json.loads(ckpt["classes"])
        added, gone = [c for c in classes if c not in then], [c for c in then if c not in classes]
        if added:
            changes.append(f"class{'es' if len(added) > 1 else ''} added: {', '.join(added)}")
        if gone:
            changes.append(f"class{'es' if len(gone) > 1 else ''} gone: {', '.join(gone)}")
        if then != classes and not added and not gone:
            changes.append("the classes are in another order")
    else:
        net = build(arch, 2)
        rows = len(ckpt["model"][f"{head_name(net)}.weight"])
        if rows != len(classes):
            changes.append(f"{len(classes)} classes now ({', '.join(classes)[:200]}), {rows} when it started")
    if ckpt.get("train_images", images) != images:
        changes.append(f"{images} training images now, {ckpt['train_images']} when it started")
    if changes:
        raise BirdcnnError(f"{display_path(ckpt_path)}: the data no longer matches what this run was started on "
                           f"({'; '.join(changes)}); it cannot continue on it: to train on the data as it is now, "
                           f"start a new run with another --out")
    if ckpt.get("data_fingerprint", fingerprint) != fingerprint:
        # Same classes, as many images: the files' times or contents differ (a copy of the folder on
        # another machine has other times). Nothing the run indexes changed, so it goes on, and says so.
        print(f"birdcnn train: note: the data's files changed since the run started (fingerprint {fingerprint}, "
              f"was {ckpt['data_fingerprint']}); going on with them", file=sys.stderr)


def open_run(run_dir: Path, cfg: TrainConfig, resume: bool, command: str) -> tuple[TrainConfig, dict | None, str]:
    """The run's configuration, its checkpoint when resuming, and the command line it records
    (the command that started the run, then each that continued it)."""
    ckpt_path = run_dir / "checkpoint.pt"
    if not resume:
        if ckpt_path.exists() or (run_dir / "model.json").exists():
            raise BirdcnnError(f"{run_dir}: already holds a run; pass --resume to continue it, or choose another --out")
        return cfg.resolved(), None, command
    if not ckpt_path.is_file():
        raise BirdcnnError(f"{run_dir}: no checkpoint.pt to resume from")
    if (run_dir / "model.json").exists():
        raise BirdcnnError(f"{run_dir}: this run already finished (model.json exists); nothing to resume")
    ckpt = _load_checkpoint(ckpt_path)
    saved = json.loads(ckpt["config"])
    cfg = TrainConfig(**{**saved, "out": str(run_dir), "device": cfg.device or saved.get("device")})
    first = ckpt.get("command", "")
    return cfg, ckpt, f"{first}; continued with: {command}" if first and command else (first or command)


@torch.no_grad()
def _accuracy(net, images: torch.Tensor, labels: torch.Tensor, prep: Callable, autocast, bs: int = 1000) -> float:
    net.eval()
    correct = 0
    for i in range(0, len(images), bs):
        with autocast():
            correct += (net(prep(images[i:i + bs])).argmax(1) == labels[i:i + bs]).sum().item()
    net.train()
    return correct / max(1, len(images))


def train(cfg: TrainConfig, resume: bool = False, command: str = "",
          on_epoch: Callable[[int, Classifier, float], None] | None = None) -> Path:
    """Train per `cfg`; returns the run folder. Under torchrun, every process runs this and
    trains one model data-parallel (see `birdcnn.distributed`); rank 0 writes the files.

    `on_epoch(epoch, classifier, train_seconds)` is called after each epoch, outside the timed part.
    """
    ranks = distributed.from_env()
    if ranks.parallel and not cfg.out:
        raise BirdcnnError("training with torchrun needs --out RUN_DIR (every process must name the same folder)")
    run_dir = Path(cfg.out) if cfg.out else default_run_dir()
    cfg, ckpt, command = open_run(run_dir, cfg, resume, command)
    device = distributed.start(ranks, pick_device(cfg.device))
    # Denormal floats to zero while training: x86 arithmetic on them is slow, and a Muon-trained
    # network produces some (measured: its conv, GELU and max-pool 1.2-2x slower; results unchanged).
    torch.set_flush_denormal(True)
    try:
        return _run(cfg, ckpt, command, run_dir, ranks, device, on_epoch)
    except (dist.DistError, RuntimeError) as e:
        if not ranks.parallel or isinstance(e, BirdcnnError) or not _peer_lost(e):
            raise
        raise BirdcnnError(f"rank {ranks.rank}: another training process stopped ({str(e).splitlines()[0][:160]}); "
                           f"continue from the last checkpoint with: torchrun ... -m birdcnn train --out {run_dir} "
                           "--resume") from None
    finally:
        torch.set_flush_denormal(False)
        distributed.stop(ranks)


def _peer_lost(e: Exception) -> bool:
    """A collective failed because another process went away (gloo/NCCL say so in their message)."""
    return isinstance(e, dist.DistError) or any(w in str(e).lower() for w in ("gloo", "nccl", "connection", "peer"))


def _run(cfg: TrainConfig, ckpt: dict | None, command: str, run_dir: Path, ranks: distributed.Ranks,
         device: torch.device, on_epoch: Callable | None) -> Path:
    torch.manual_seed(cfg.seed)
    init = load_init(cfg) if cfg.init and ckpt is None else None  # before the data: a wrong file fails fast
    mixed = prepare_data(cfg)
    train_ds, val_ds, classes = mixed.train, mixed.val, mixed.train.classes
    if ranks.main:
        n_test = sum(len(t) for _, t in mixed.tests if t is not None)
        described = D.describe(train_ds) if len(classes) <= 20 else f"in {len(classes)} classes"
        print(f"data: {len(train_ds)} training images {described} from {len(mixed.infos)} source(s), "
              f"{len(val_ds)} validation" + (f", {n_test} test" if n_test else "")
              + (f"; {ranks.world} processes" if ranks.parallel else ""), file=sys.stderr)
    if ckpt is not None:  # before anything is built from the data, or the checkpoint's weights are loaded
        _check_same_data(ckpt, cfg.arch, classes, len(train_ds), train_ds.fingerprint, run_dir / "checkpoint.pt")
        norm = json.loads(ckpt["norm"])
    elif init is not None:  # the weights expect the inputs normalised as they were trained
        norm = {"mean": init.meta["mean"], "std": init.meta["std"]}
    else:
        norm = data_norm(train_ds.images)
    inputs = Inputs(mixed, cfg, device, norm)
    use_bf16 = cfg.bf16 and fast_bf16(device)
    if ranks.main:
        print(f"device: {device}, " + ("bf16 autocast" if use_bf16 else "float32" + (
            " (this processor has no native bf16)" if cfg.bf16 else "")), file=sys.stderr)

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16)

    net = build(cfg.arch, len(classes), **cfg.arch_kwargs()).to(device)
    if init is not None:
        known = start_from(net, init, classes)
        cfg.init_sha256 = init.meta.get("weights_sha256")
        if ranks.main:
            print(f"starting from {cfg.init} ({len(init.classes)} classes): "
                  f"{known} of this run's {len(classes)} classes known to it", file=sys.stderr)
    elif hasattr(net, "init_whitening") and ckpt is None:
        net.init_whitening(inputs.whitening_sample(cfg.seed))
    net = net.to(memory_format=torch.channels_last)
    opt = make_optimizer(net, cfg)
    batch = min(cfg.batch_size, len(train_ds))
    steps_per_epoch = max(1, len(train_ds) // batch)
    total_steps = max(1, math.ceil(cfg.epochs * steps_per_epoch))
    step, history = 0, []
    la_cfg, lookahead = cfg.recipe.get("lookahead"), None
    if ckpt is not None:
        net.load_state_dict(ckpt["model"])
        try:
            opt.load_state_dict(ckpt["optimizer"])
        # e.g. a checkpoint of an older birdcnn, whose parameter groups differ, or a hand-edited state
        except (ValueError, KeyError, TypeError, IndexError, RuntimeError) as e:
            raise BirdcnnError(f"{run_dir / 'checkpoint.pt'}: "
                               f"its optimizer state does not fit this birdcnn ({e})") from None
        step, history = int(ckpt["step"]), json.loads(ckpt["history"])
        if ckpt.get("lookahead"):
            lookahead = Lookahead(net, {k: v.to(device) for k, v in ckpt["lookahead"].items()})
        if ranks.main:
            print(f"resuming {run_dir} at step {step}/{total_steps}", file=sys.stderr)
    model = distributed.wrap(net, ranks, device)  # `net` stays the plain network: state, validation, files
    if ranks.main:
        run_dir.mkdir(parents=True, exist_ok=True)
    weights = D.balanced_weights(train_ds.labels, len(classes)) if cfg.balance else None
    if cfg.balance_negatives:
        w = D.balanced_negative_weights(train_ds.labels, mixed.train_source, classes.index(cfg.positive))
        weights = w if weights is None else weights * w
    if cfg.source_weights is not None:
        # A source of weight w is drawn w times as often as its size implies.
        w = np.asarray(cfg.source_weights, np.float64)[mixed.train_source]
        weights = w if weights is None else weights * w
    mining = None
    if cfg.hard_mining:
        mining = HardMining(len(train_ds), classes.index(cfg.positive), len(classes), cfg.label_smoothing,
                            cfg.hard_mining)
        if ckpt is not None and ckpt.get("mining"):
            try:
                mining.load_state(ckpt["mining"])
            except (KeyError, ValueError) as e:
                raise BirdcnnError(f"{run_dir / 'checkpoint.pt'}: its hard-mining state does not fit ({e})") from None
    mix = Mix(cfg.mix, cfg.mix_p, len(classes)) if cfg.mix else None
    val_x, val_y = torch.from_numpy(val_ds.images).to(device), torch.from_numpy(val_ds.labels).to(device)

    def epoch_order(epoch: int) -> torch.Tensor:
        """The epoch's order of training images: the same on every rank (seeded), each takes its slice."""
        g = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
        w = mining.weights(weights) if mining is not None else weights
        if w is not None:
            return torch.multinomial(torch.from_numpy(w), len(train_ds), replacement=True, generator=g)
        return torch.randperm(len(train_ds), generator=g)

    def checkpoint() -> None:
        if ranks.main:
            _save_checkpoint(run_dir / "checkpoint.pt", net, opt, step, history, cfg, norm, lookahead, mining,
                             command, classes, len(train_ds), train_ds.fingerprint)

    train_seconds = sum(h["seconds"] for h in history) if history else 0.0
    net.train()
    bar = tqdm(total=total_steps, initial=step, unit="step", desc=f"train {cfg.arch}", dynamic_ncols=True,
               disable=not ranks.main or (not sys.stderr.isatty() and os.environ.get("BIRDCNN_PROGRESS") != "1"))
    epoch_loss, epoch_correct, epoch_seen = 0.0, 0, 0
    interrupted = False
    # The loop frees and allocates the same large tensors every step: keep them in the heap (`heap`).
    with StopOnCtrlC("\nstopping after this step (Ctrl-C again to abort without saving)...") as stop, \
            reuse_freed_memory():
        t0 = time.perf_counter()
        order_epoch, order = -1, None
        while step < total_steps:
            epoch, b = divmod(step, steps_per_epoch)
            if b == 0:
                epoch_loss, epoch_correct, epoch_seen = 0.0, 0, 0
            if epoch != order_epoch:  # once per epoch (also on resume mid-epoch), not every step
                order_epoch, order = epoch, epoch_order(epoch)
            picked = order[b * batch:(b + 1) * batch][ranks.rank::ranks.world]
            torch.manual_seed(cfg.seed * 1_000_003 + step)  # dropout and augmentation: reproducible on resume
            x, y = inputs.batch(picked, epoch, cfg.size_at(epoch))
            if mix is not None:
                x, y = mix(x, y)
            set_learning_rates(opt, step, total_steps, epoch, cfg.recipe["optimizer"])
            loss, out = training_step(model, opt, x, y, cfg, autocast, ranks.world)
            if y.ndim == 2:  # a mixed batch: its accuracy counts the larger share of each image
                y = y.argmax(1)
            elif mining is not None:
                mining.record(picked, out, y)
            step += 1
            if la_cfg and epoch >= la_cfg["start_epoch"] and step % la_cfg["every"] == 0:
                if lookahead is None:
                    lookahead = Lookahead(net)
                else:
                    lookahead.update(net, la_cfg["decay"] ** la_cfg["every"] * (step / total_steps) ** la_cfg["power"])
            n = len(y)
            epoch_loss += loss * (1 if cfg.recipe["optimizer"] != "adam" else n)
            epoch_correct += (out.argmax(1) == y).sum().item()
            epoch_seen += n
            bar.update(1)
            bar.set_postfix(loss=f"{epoch_loss / epoch_seen:.3f}",
                            img_s=f"{ranks.world * epoch_seen / max(1e-9, time.perf_counter() - t0):.0f}" if b else "")
            if step % steps_per_epoch == 0 or step == total_steps:
                if lookahead is not None:
                    lookahead.update(net, 1.0)  # every epoch ends on the averaged weights
                if mining is not None:
                    mining.end_epoch(ranks, device)
                loss_sum, correct, seen = distributed.total([epoch_loss, epoch_correct, epoch_seen], ranks, device)
                dt = time.perf_counter() - t0
                train_seconds += dt
                if ranks.main:
                    val_acc = _accuracy(net, val_x, val_y, inputs.prep, autocast)
                    history.append({"epoch": epoch + 1, "step": step, "train_loss": loss_sum / seen,
                                    "train_accuracy": correct / seen, "val_accuracy": val_acc,
                                    "seconds": dt, "images_per_second": seen / dt})
                    checkpoint()
                    tqdm.write(f"epoch {epoch + 1:>3}/{math.ceil(cfg.epochs)}  loss {loss_sum / seen:.4f}  "
                               f"train acc {correct / seen:.4f}  val acc {val_acc:.4f}  {seen / dt:.0f} img/s  "
                               f"{train_seconds:.0f}s", file=sys.stderr)
                    if on_epoch is not None:
                        net.eval()
                        on_epoch(epoch + 1, _classifier(net, cfg, classes, norm), train_seconds)
                        net.train()
                t0 = time.perf_counter()
            if distributed.any_rank(stop.set, ranks, device) and step < total_steps:
                train_seconds += time.perf_counter() - t0
                checkpoint()
                interrupted = True
                break
    bar.close()
    if interrupted:
        distributed.leave_together(ranks)
        if not ranks.main:
            return run_dir
        raise TrainingInterrupted(f"interrupted at step {step}/{total_steps}; checkpoint saved. Continue with: "
                                  f"birdcnn train --out {run_dir} --resume")
    distributed.check_replicas(net, ranks, device)
    if ranks.main:
        net.eval()
        _save_run(net, cfg, classes, norm, mixed, history, command, run_dir, ranks)
    distributed.leave_together(ranks)
    return run_dir


def _save_run(net: torch.nn.Module, cfg: TrainConfig, classes: list[str], norm: dict, mixed: S.Mixed,
              history: list[dict], command: str, run_dir: Path, ranks: distributed.Ranks) -> None:
    """Calibrate the trained network and write the run's files (rank 0 only)."""
    clf = _classifier(net, cfg, classes, norm)
    meta, metrics = calibrate_and_measure(clf, cfg, mixed, history, command)
    if ranks.parallel:
        meta["training"]["processes"] = ranks.world
    write_text(run_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    write_text(run_dir / "history.json", json.dumps(history, indent=2) + "\n")
    plot_history(history, run_dir / "training_curves.png",
                 title=f"{cfg.arch} on {' + '.join(S.folder_name(d) for d in data_sources(cfg))}")
    save_model(net, meta, run_dir / "model")  # last: model.json marks a finished run (see --resume)
    print(f"saved {run_dir / 'model.json'}", file=sys.stderr)


def recalibrate(run_dir: str | Path, target_precision: float | None = None, zoom_size: int | None = None,
                command: str = "") -> Path:
    """Choose a finished run's temperature, decision threshold and window threshold again, on its
    own validation split (rebuilt exactly from the run's recorded config and data): after a
    change to how they are chosen, for another `target_precision`, or with photos' second view
    at `zoom_size` px (0: none). The weights are untouched."""
    from .modelfile import load_model, read_metadata

    run_dir = Path(run_dir)
    meta = read_metadata(run_dir / "model.json")
    try:
        cfg = TrainConfig(**meta["training"]["config"])
        history = json.loads((run_dir / "history.json").read_text())
    except (KeyError, TypeError, OSError, ValueError) as e:
        raise BirdcnnError(f"{run_dir}: not a finished training run of this birdcnn ({e})") from None
    if target_precision is not None:
        cfg.target_precision = target_precision
    if zoom_size is not None:
        cfg.zoom_size = zoom_size or None
        cfg.check_zoom()
    clf = load_model(run_dir, device=cfg.device)
    clf.meta = {k: v for k, v in clf.meta.items() if k != "zoom_size"} | (
        {"zoom_size": cfg.zoom_size} if cfg.zoom_size else {})
    clf.zoom_size = cfg.zoom_size
    new_meta, metrics = calibrate_and_measure(clf, cfg, prepare_data(cfg), history, meta["training"].get("command", ""))
    new_meta["training"]["recalibrated"] = {"command": command, "date": datetime.now().isoformat(timespec="seconds")}
    write_text(run_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    save_model(clf.net, new_meta, run_dir / "model")
    print(f"saved {run_dir / 'model.json'}", file=sys.stderr)
    return run_dir


def _classifier(net, cfg: TrainConfig, classes: list[str], norm: dict) -> Classifier:
    meta = {"arch": cfg.arch, "classes": classes, "positive": cfg.positive, "input_size": cfg.input_size,
            "mean": norm["mean"], "std": norm["std"], "tta": cfg.recipe.get("tta", "none")}
    if cfg.arch_kwargs():
        meta["arch_kwargs"] = cfg.arch_kwargs()
    if cfg.zoom_size:
        meta["zoom_size"] = cfg.zoom_size
    return Classifier(net, meta, device=next(net.parameters()).device)


def plot_history(history: list[dict], path: Path, title: str = "") -> None:
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.plot(epochs, [h["train_loss"] for h in history], "o-", label="training loss")
    a.set_xlabel("epoch"), a.set_ylabel("loss"), a.legend(), a.grid(alpha=0.3)
    b.plot(epochs, [h["train_accuracy"] for h in history], "o-", label="training (augmented)")
    b.plot(epochs, [h["val_accuracy"] for h in history], "o-", label="validation")
    b.set_xlabel("epoch"), b.set_ylabel("accuracy"), b.legend(), b.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path, dpi=100)
