"""`birdcnn train`: a seeded, resumable training run that writes a results folder.

The run folder holds the model (model.safetensors + model.json), metrics.json, history.json,
training_curves.png and checkpoint.pt (written atomically every epoch and on Ctrl-C, so
`--resume` continues a killed run).
"""
from __future__ import annotations

import json
import math
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from . import data as D
from . import sources as S
from .atomic import save_figure, write_atomic, write_text
from .augment import Augment, PhotoViews, alternating_flip
from .errors import BirdcnnError, DataError, TrainingInterrupted
from .metrics import binary_report, expected_calibration_error, fit_temperature, threshold_for_precision
from .modelfile import Classifier, pick_device, save_model
from .models import FastNet, build
from .runs import default_run_dir

# Each architecture's recipe; any CLI flag overrides its entry.
RECIPES: dict[str, dict] = {
    # airbench94's recipe (Jordan 2024): SGD-Nesterov with a short warm-up then linear decay,
    # label smoothing 0.2, a 64x higher learning rate for BatchNorm biases, alternating flip + 2 px
    # translate, Lookahead averaging, 6-view test-time augmentation. A faithful port of airbench94
    # on the shared JPEG CIFAR-10 measured 89.7% (no TTA), 90.2% (flip), 90.4% (flip-translate):
    # docs/RESULTS.md.
    "fast": dict(classes="all", optimizer="sgd", epochs=10.0, batch_size=1024, lr=11.5, momentum=0.85,
                 weight_decay=0.0153, bias_scaler=64.0, label_smoothing=0.2, tta="flip-translate",
                 lookahead=dict(start_epoch=3, every=5, decay=0.95, power=3.0), alternating_flip=True,
                 augment=dict(flip=True, shift=2, rotate=0.0, blur=0.0)),
    # The original article: Adam 1e-3, batch 96, flips, +-25 degree rotations, blur; bird vs not-bird.
    "article": dict(classes="binary", optimizer="adam", epochs=15.0, batch_size=96, lr=1e-3, momentum=0.0,
                    weight_decay=0.0, bias_scaler=1.0, label_smoothing=0.0, tta="none", lookahead=None,
                    augment=dict(flip=True, shift=0, rotate=25.0, blur=3.0)),
}
RECIPES["tiny"] = dict(RECIPES["fast"], batch_size=256)


@dataclass
class TrainConfig:
    data: str | list[str]               # one --data source or several, trained as one
    arch: str = "fast"
    classes: str | None = None          # "all" (every class) or "binary" (positive vs rest)
    positive: str = "bird"
    extra_positive: str | None = None
    balance: bool = False               # sample classes equally often (sampling weights)
    source_weights: list[float] | None = None  # per --data source: drawn w x as often as its size implies
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
    recipe: dict = field(default_factory=dict)

    def resolved(self) -> "TrainConfig":
        if self.arch not in RECIPES:
            raise BirdcnnError(f"unknown --arch {self.arch!r}; known: {', '.join(RECIPES)}")
        r = dict(RECIPES[self.arch])
        aug = {**r.pop("augment"), **(self.augment or {})}
        for key in ("classes", "epochs", "batch_size", "lr", "label_smoothing"):
            if getattr(self, key) is None:
                setattr(self, key, r[key])
        self.augment = aug
        self.recipe = r
        if self.classes not in ("all", "binary"):
            raise BirdcnnError(f"--classes must be 'all' or 'binary', not {self.classes!r}")
        if self.epochs <= 0 or self.batch_size <= 0:
            raise BirdcnnError("--epochs and --batch-size must be positive")
        return self


# ---------------------------------------------------------------- data preparation

def data_sources(cfg: TrainConfig) -> list[str]:
    return [cfg.data] if isinstance(cfg.data, str) else list(cfg.data)


def prepare_data(cfg: TrainConfig, size: int = 32) -> S.Mixed:
    """Every source's training images (at store size), validation and test splits, with the
    positive class applied; see `birdcnn.sources`."""
    specs = data_sources(cfg)
    mixed = S.load_sources(specs, size, cfg.seed, cfg.source_weights, cfg.val_size)
    if cfg.positive not in mixed.train.classes:
        raise DataError(f"positive class {cfg.positive!r} is not among the data's classes: {', '.join(mixed.train.classes)}")
    if cfg.extra_positive:
        S.add_extra_positive(mixed, cfg.extra_positive, cfg.positive)
    if cfg.classes == "binary":
        mixed.train, mixed.val = D.to_binary(mixed.train, cfg.positive), D.to_binary(mixed.val, cfg.positive)
        mixed.tests = [(n, D.to_binary(t, cfg.positive) if t is not None else None) for n, t in mixed.tests]
    return mixed


# ---------------------------------------------------------------- optimisation

def make_optimizer(net: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    r = cfg.recipe
    if r["optimizer"] == "adam":
        return torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=cfg.lr)
    # airbench's parametrisation: lr and weight decay are "per 1024 examples" with a summed loss.
    momentum = r["momentum"]
    kilostep = 1024 * (1 + 1 / (1 - momentum))
    lr, wd = cfg.lr / kilostep, r["weight_decay"] * cfg.batch_size / kilostep
    lr_biases = lr * r["bias_scaler"]
    norm_biases = [p for n, p in net.named_parameters() if "norm" in n and p.requires_grad]
    others = [p for n, p in net.named_parameters() if "norm" not in n and (p.requires_grad or n == "0.bias")]
    # PyTorch multiplies weight decay by the lr: dividing by it makes the decay per step independent
    # of the lr ("decoupled"), as airbench does.
    groups = [dict(params=norm_biases, lr=lr_biases, weight_decay=wd / lr_biases),
              dict(params=others, lr=lr, weight_decay=wd / lr)]
    for g in groups:
        g["initial_lr"] = g["lr"]
    return torch.optim.SGD(groups, momentum=momentum, nesterov=True)


def lr_factor(step: int, total: int, optimizer: str) -> float:
    """Warm up from 0.2x over the first 23% of steps, then decay linearly to 0.07x (airbench)."""
    if optimizer == "adam":
        return 1.0
    warm = max(1, int(total * 0.23))
    if step < warm:
        return 0.2 + 0.8 * step / warm
    return 1.0 + (0.07 - 1.0) * (step - warm) / max(1, total - warm)


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
                  cfg: TrainConfig, autocast: Callable) -> tuple[float, torch.Tensor]:
    """One optimisation step on an augmented, normalised batch; returns (loss, logits)."""
    with autocast():
        out = net(x)
        # airbench sums the loss (its lr is per 1024 examples); Adam, as in the article, averages.
        loss = F.cross_entropy(out.float(), y, label_smoothing=cfg.label_smoothing,
                               reduction="sum" if cfg.recipe["optimizer"] == "sgd" else "mean")
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.item(), out


# ---------------------------------------------------------------- the run

class _StopFlag:
    """First Ctrl-C: finish the current step, checkpoint, stop. Second: stop at once."""

    def __init__(self):
        self.set = False

    def __enter__(self):
        self._old = signal.getsignal(signal.SIGINT)

        def handler(signum, frame):
            if self.set:
                signal.signal(signal.SIGINT, self._old)
                raise KeyboardInterrupt
            self.set = True
            print("\nstopping after this step (Ctrl-C again to abort without saving)...", file=sys.stderr)
        try:
            signal.signal(signal.SIGINT, handler)
        except ValueError:  # not in the main thread
            pass
        return self

    def __exit__(self, *exc):
        try:
            signal.signal(signal.SIGINT, self._old)
        except ValueError:
            pass
        return False


def _save_checkpoint(path: Path, net, opt, step: int, history: list, cfg: TrainConfig, norm: dict,
                     lookahead: Lookahead | None, command: str) -> None:
    state = {"model": net.state_dict(), "optimizer": opt.state_dict(), "step": step, "command": command,
             "history": json.dumps(history), "config": json.dumps(asdict(cfg)), "norm": json.dumps(norm),
             "lookahead": lookahead.avg if lookahead is not None else {}}
    write_atomic(path, lambda tmp: torch.save(state, tmp))


def _load_checkpoint(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)  # never unpickles code
    except Exception as e:  # noqa: BLE001
        raise BirdcnnError(f"{path}: not a usable checkpoint ({str(e).splitlines()[0][:200]})") from None


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
    """Train per `cfg`; returns the run folder.

    `on_epoch(epoch, classifier, train_seconds)` is called after each epoch, outside the timed part.
    """
    run_dir = Path(cfg.out) if cfg.out else default_run_dir()
    ckpt_path = run_dir / "checkpoint.pt"
    ckpt = None
    if resume:
        if not ckpt_path.is_file():
            raise BirdcnnError(f"{run_dir}: no checkpoint.pt to resume from")
        if (run_dir / "model.json").exists():
            raise BirdcnnError(f"{run_dir}: this run already finished (model.json exists); nothing to resume")
        ckpt = _load_checkpoint(ckpt_path)
        saved = json.loads(ckpt["config"])
        cfg = TrainConfig(**{**saved, "out": str(run_dir), "device": cfg.device or saved.get("device")})
        # The model records the command that started the run, then each that continued it.
        first = ckpt.get("command", "")
        command = f"{first}; continued with: {command}" if first and command else (first or command)
    else:
        if ckpt_path.exists() or (run_dir / "model.json").exists():
            raise BirdcnnError(f"{run_dir}: already holds a run; pass --resume to continue it, or choose another --out")
        cfg = cfg.resolved()
    device = pick_device(cfg.device)
    torch.manual_seed(cfg.seed)

    mixed = prepare_data(cfg)
    train_ds, val_ds = mixed.train, mixed.val
    classes = train_ds.classes
    aug_cfg = dict(cfg.augment)
    views = None
    if mixed.photo_views:
        # Crops replace Augment's shift: thumbnails are moved by the same +-shift inside PhotoViews.
        views = PhotoViews(size=32, shift=aug_cfg.get("shift", 0))
        aug_cfg["shift"] = 0
    aug = Augment(**aug_cfg)
    # The alternating flip replaces Augment's coin toss: one random first choice per image.
    first_flip = None
    if aug.flip and cfg.recipe.get("alternating_flip"):
        first_flip = torch.rand(len(train_ds), generator=torch.Generator().manual_seed(cfg.seed)) < 0.5
        aug = Augment(**{**aug_cfg, "flip": False})
    n_test = sum(len(t) for _, t in mixed.tests if t is not None)
    print(f"data: {len(train_ds)} training images {D.describe(train_ds) if len(classes) <= 20 else f'in {len(classes)} classes'}"
          f" from {len(mixed.infos)} source(s), {len(val_ds)} validation" + (f", {n_test} test" if n_test else ""),
          file=sys.stderr)

    images = torch.from_numpy(train_ds.images).to(device)
    labels = torch.from_numpy(train_ds.labels).to(device)
    photo = torch.from_numpy(np.asarray(mixed.photo)[mixed.train_source])
    positive = torch.from_numpy(train_ds.labels == classes.index(cfg.positive))
    if ckpt is not None:
        norm = json.loads(ckpt["norm"])
    else:
        x = train_ds.images.reshape(-1, 3).astype(np.float64) / 255
        norm = {"mean": x.mean(0).round(5).tolist(), "std": x.std(0).round(5).tolist()}
    mean = torch.tensor(norm["mean"], device=device).view(1, 3, 1, 1) * 255
    std = torch.tensor(norm["std"], device=device).view(1, 3, 1, 1) * 255

    def normalise(x: torch.Tensor) -> torch.Tensor:
        return ((x - mean) / std).contiguous(memory_format=torch.channels_last)

    def prep(u8: torch.Tensor) -> torch.Tensor:
        """Model-view uint8 images (N, H, W, 3) -> normalised input."""
        return normalise(u8.permute(0, 3, 1, 2).float())

    def train_view(idx: torch.Tensor, picked: torch.Tensor) -> torch.Tensor:
        """The augmented, normalised training input of images `idx` (`picked`: the same on the CPU)."""
        x = images[idx].permute(0, 3, 1, 2).float()
        if views is not None:
            x = views(x, photo[picked], positive[picked])
        return normalise(x)

    use_bf16 = cfg.bf16 and device.type in ("cpu", "cuda")

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16)

    net = build(cfg.arch, len(classes)).to(device)
    if isinstance(net, FastNet) and ckpt is None:
        # A random sample: the training set is ordered by class, its first 5000 are airplanes.
        sample = torch.randperm(len(images), generator=torch.Generator().manual_seed(cfg.seed))[:5000]
        x = images[sample.to(device)].permute(0, 3, 1, 2).float()
        net.init_whitening(normalise(F.avg_pool2d(x, mixed.store_scale) if mixed.photo_views else x))
    net = net.to(memory_format=torch.channels_last)
    opt = make_optimizer(net, cfg)
    batch = min(cfg.batch_size, len(train_ds))
    steps_per_epoch = max(1, len(train_ds) // batch)
    total_steps = max(1, math.ceil(cfg.epochs * steps_per_epoch))
    step, history = 0, []
    la_cfg, lookahead = cfg.recipe.get("lookahead"), None
    if ckpt is not None:
        net.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        step, history = int(ckpt["step"]), json.loads(ckpt["history"])
        if ckpt.get("lookahead"):
            lookahead = Lookahead(net, {k: v.to(device) for k, v in ckpt["lookahead"].items()})
        print(f"resuming {run_dir} at step {step}/{total_steps}", file=sys.stderr)
    run_dir.mkdir(parents=True, exist_ok=True)
    weights = D.balanced_weights(train_ds.labels, len(classes)) if cfg.balance else None
    if cfg.source_weights is not None:
        # A source of weight w is drawn w times as often as its size implies.
        w = np.asarray(cfg.source_weights, np.float64)[mixed.train_source]
        weights = w if weights is None else weights * w
    val_x, val_y = torch.from_numpy(val_ds.images).to(device), torch.from_numpy(val_ds.labels).to(device)

    def epoch_order(epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
        if weights is not None:
            return torch.multinomial(torch.from_numpy(weights), len(train_ds), replacement=True, generator=g)
        return torch.randperm(len(train_ds), generator=g)

    train_seconds = sum(h["seconds"] for h in history) if history else 0.0
    net.train()
    bar = tqdm(total=total_steps, initial=step, unit="step", desc=f"train {cfg.arch}", dynamic_ncols=True,
               disable=not sys.stderr.isatty() and os.environ.get("BIRDCNN_PROGRESS") != "1")
    epoch_loss, epoch_correct, epoch_seen = 0.0, 0, 0
    interrupted = False
    with _StopFlag() as stop:
        t0 = time.perf_counter()
        order_epoch, order = -1, None
        while step < total_steps:
            epoch, b = divmod(step, steps_per_epoch)
            if b == 0:
                epoch_loss, epoch_correct, epoch_seen = 0.0, 0, 0
            if epoch != order_epoch:  # once per epoch (also on resume mid-epoch), not every step
                order_epoch, order = epoch, epoch_order(epoch)
            picked = order[b * batch:(b + 1) * batch]
            idx = picked.to(device)
            torch.manual_seed(cfg.seed * 1_000_003 + step)  # dropout and augmentation: reproducible on resume
            x = train_view(idx, picked)
            if first_flip is not None:
                x = alternating_flip(x, first_flip[picked], epoch)
            x = aug(x)
            y = labels[idx]
            for g in opt.param_groups:
                g["lr"] = g["initial_lr"] * lr_factor(step, total_steps, cfg.recipe["optimizer"]) if "initial_lr" in g else g["lr"]
            if isinstance(net, FastNet):
                net[0].bias.requires_grad = epoch < 3  # train the whitening bias for 3 epochs only (airbench)
            loss, out = training_step(net, opt, x, y, cfg, autocast)
            step += 1
            if la_cfg and epoch >= la_cfg["start_epoch"] and step % la_cfg["every"] == 0:
                if lookahead is None:
                    lookahead = Lookahead(net)
                else:
                    lookahead.update(net, la_cfg["decay"] ** la_cfg["every"] * (step / total_steps) ** la_cfg["power"])
            n = len(y)
            epoch_loss += loss * (1 if cfg.recipe["optimizer"] == "sgd" else n)
            epoch_correct += (out.argmax(1) == y).sum().item()
            epoch_seen += n
            bar.update(1)
            bar.set_postfix(loss=f"{epoch_loss / epoch_seen:.3f}", img_s=f"{epoch_seen / max(1e-9, time.perf_counter() - t0):.0f}" if b else "")
            end_of_epoch = step % steps_per_epoch == 0 or step == total_steps
            if end_of_epoch:
                if lookahead is not None:
                    lookahead.update(net, 1.0)  # every epoch ends on the averaged weights
                dt = time.perf_counter() - t0
                train_seconds += dt
                val_acc = _accuracy(net, val_x, val_y, prep, autocast)
                history.append({"epoch": epoch + 1, "step": step, "train_loss": epoch_loss / epoch_seen,
                                "train_accuracy": epoch_correct / epoch_seen, "val_accuracy": val_acc,
                                "seconds": dt, "images_per_second": epoch_seen / dt})
                _save_checkpoint(ckpt_path, net, opt, step, history, cfg, norm, lookahead, command)
                tqdm.write(f"epoch {epoch + 1:>3}/{math.ceil(cfg.epochs)}  loss {epoch_loss / epoch_seen:.4f}  "
                           f"train acc {epoch_correct / epoch_seen:.4f}  val acc {val_acc:.4f}  "
                           f"{epoch_seen / dt:.0f} img/s  {train_seconds:.0f}s", file=sys.stderr)
                if on_epoch is not None:
                    net.eval()
                    on_epoch(epoch + 1, _classifier(net, cfg, classes, norm), train_seconds)
                    net.train()
                t0 = time.perf_counter()
            if stop.set and step < total_steps:
                train_seconds += time.perf_counter() - t0
                _save_checkpoint(ckpt_path, net, opt, step, history, cfg, norm, lookahead, command)
                interrupted = True
                break
    bar.close()
    if interrupted:
        raise TrainingInterrupted(f"interrupted at step {step}/{total_steps}; checkpoint saved. Continue with: "
                                  f"birdcnn train --out {run_dir} --resume")

    net.eval()
    clf = _classifier(net, cfg, classes, norm)
    meta, metrics = _finish(clf, cfg, mixed, history, command)
    write_text(run_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    write_text(run_dir / "history.json", json.dumps(history, indent=2) + "\n")
    plot_history(history, run_dir / "training_curves.png", title=f"{cfg.arch} on {' + '.join(S.folder_name(d) for d in data_sources(cfg))}")
    save_model(net, meta, run_dir / "model")  # last: model.json marks a finished run (see --resume)
    print(f"saved {run_dir / 'model.json'}", file=sys.stderr)
    return run_dir


def recalibrate(run_dir: str | Path, target_precision: float | None = None, command: str = "") -> Path:
    """Choose a finished run's temperature, decision threshold and window threshold again, on its
    own validation split (rebuilt exactly from the run's recorded config and data): after a
    change to how they are chosen, or for another `target_precision`. The weights are untouched."""
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
    clf = load_model(run_dir, device=cfg.device)
    new_meta, metrics = _finish(clf, cfg, prepare_data(cfg), history, meta["training"].get("command", ""))
    new_meta["training"]["recalibrated"] = {"command": command, "date": datetime.now().isoformat(timespec="seconds")}
    write_text(run_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    save_model(clf.net, new_meta, run_dir / "model")
    print(f"saved {run_dir / 'model.json'}", file=sys.stderr)
    return run_dir


def _classifier(net, cfg: TrainConfig, classes: list[str], norm: dict) -> Classifier:
    meta = {"arch": cfg.arch, "classes": classes, "positive": cfg.positive, "input_size": 32,
            "mean": norm["mean"], "std": norm["std"], "tta": cfg.recipe.get("tta", "none")}
    return Classifier(net, meta, device=next(net.parameters()).device)


def restricted_argmax(probs: np.ndarray, classes: list[str], allowed: list[str] | None) -> np.ndarray:
    """Predicted class indices, chosen among `allowed` only (a source's own classes: CIFAR-10's
    10-class accuracy from a model that knows more classes)."""
    if not allowed or len(allowed) == len(classes):
        return probs.argmax(1)
    idx = np.array([classes.index(c) for c in allowed])
    return idx[probs[:, idx].argmax(1)]


def choose_threshold(y: np.ndarray, scores: np.ndarray, groups: dict[str, np.ndarray], target: float) -> tuple[float, str]:
    """The lowest threshold reaching precision `target` on every group of the validation split
    that holds positives (thumbnails and photos apart: one threshold must serve both)."""
    found, unreachable = {}, []
    for name, m in groups.items():
        if y[m].sum() == 0:
            continue
        t = threshold_for_precision(y[m], scores[m], target)
        (unreachable.append(name) if t is None else found.__setitem__(name, t))
    if not found:
        return 0.5, f"0.5 (precision {target} unreachable on validation)"
    where = " and ".join(f"{k} ({v:.3f})" for k, v in found.items())
    rule = f"lowest threshold with precision >= {target} on the validation split: {where}"
    if unreachable:
        rule += f"; unreachable on {', '.join(unreachable)}"
    return max(found.values()), rule


def _finish(clf: Classifier, cfg: TrainConfig, mixed: S.Mixed, history: list, command: str) -> tuple[dict, dict]:
    """Calibrate on validation, pick the threshold on validation, measure on test, per source."""
    pos, classes, val = clf.positive_index, clf.classes, mixed.val
    val_logits = clf.logits(val.images).numpy()
    temperature = fit_temperature(val_logits, val.labels)
    clf.temperature = temperature
    val_probs = torch.softmax(torch.from_numpy(val_logits) / temperature, 1).numpy()
    photo_val = np.asarray(mixed.photo)[mixed.val_source]
    groups = {"all": np.ones(len(val), bool)}
    if photo_val.any() and not photo_val.all():
        groups = {"thumbnails": ~photo_val, "photos": photo_val}
    threshold, rule = choose_threshold(val.labels == pos, val_probs[:, pos], groups, cfg.target_precision)
    clf.threshold = threshold

    def measure(labels: np.ndarray, probs: np.ndarray, pred: np.ndarray) -> dict:
        y = labels == pos
        return {"n": len(labels), "accuracy": float((pred == labels).mean()),
                "ece": expected_calibration_error(probs, labels),
                "bird": {**binary_report(y, probs[:, pos], threshold),
                         "ece": expected_calibration_error(probs[:, pos], y)}}

    metrics: dict = {"validation": measure(val.labels, val_probs, val_probs.argmax(1))}
    if len(groups) > 1:
        metrics["validation_groups"] = {g: measure(val.labels[m], val_probs[m], val_probs[m].argmax(1))
                                        for g, m in groups.items()}
    per_source, test_parts = {}, []
    for k, (name, test) in enumerate(mixed.tests):
        m = mixed.val_source == k
        entry = {"validation": measure(val.labels[m], val_probs[m], val_probs[m].argmax(1))}
        if test is not None:
            probs = clf.probabilities(test.images)
            pred = restricted_argmax(probs, classes, test.source_classes)
            entry["test"] = measure(test.labels, probs, pred)
            test_parts.append((test.labels, probs, pred))
        per_source[name] = entry
    if test_parts:
        metrics["test"] = measure(*(np.concatenate(a) for a in zip(*test_parts)))
    if len(mixed.tests) > 1:
        metrics["sources"] = per_source
    metrics["train_seconds"] = sum(h["seconds"] for h in history)
    metrics["temperature"] = temperature
    metrics["threshold"] = threshold
    window = {}
    if photo_val.any():
        from .locate import calibrate_windows

        idx = np.nonzero(photo_val)[0]
        t, info = calibrate_windows(clf, [val.paths[i] for i in idx], val.labels[idx] == pos, cfg.target_precision)
        window = {"window_threshold": t if t is not None else max(threshold, 0.5),
                  "window_threshold_rule": (f"lowest probability at which a photo's best locate window means "
                                            f"{cfg.positive} with precision >= {cfg.target_precision} on "
                                            f"{info['photos']} validation photos ({info['positives']} {cfg.positive})")
                                           if t is not None else "unreachable on validation photos: the decision threshold"}
        metrics["window_threshold"] = window["window_threshold"]
    meta = {**clf.meta, "temperature": temperature, "threshold": threshold, "threshold_rule": rule, **window,
            "resize": "central square crop, bicubic (birdcnn.images.fit_square)",
            "training": {"command": command, "data": cfg.data, "data_fingerprint": mixed.train.fingerprint,
                         "sources": [i.to_json() for i in mixed.infos],
                         "config": asdict(cfg), "epochs_run": len(history),
                         "train_seconds": round(metrics["train_seconds"], 1), "torch": torch.__version__,
                         "date": datetime.now().isoformat(timespec="seconds")},
            "metrics": metrics}
    rows = [(split, m) for split, m in metrics.items() if isinstance(m, dict) and "accuracy" in m]
    rows += [(f"{g} (validation)", m) for g, m in metrics.get("validation_groups", {}).items()]
    rows += [(f"{S.folder_name(n)} ({split})", m) for n, e in metrics.get("sources", {}).items() for split, m in e.items()]
    for split, m in rows:
        b = m["bird"]
        # None is "undefined" (e.g. precision when nothing was predicted positive), not 0.
        prec, rec, ap = (f"{b[k]:.4f}" if b[k] is not None else "n/a" for k in ("precision", "recall", "average_precision"))
        print(f"{split}: accuracy {m['accuracy']:.4f}  {clf.positive}: precision {prec} "
              f"recall {rec} AP {ap}  ECE {m['ece']:.4f}", file=sys.stderr)
    return meta, metrics


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
