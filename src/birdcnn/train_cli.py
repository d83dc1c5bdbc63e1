"""`birdcnn train` arguments -> `train.TrainConfig`."""
from __future__ import annotations

import argparse
import shlex
import sys

from .argtypes import non_negative_float, non_negative_int, positive_float, positive_int, ranged, seed_int
from .augment import MIXES
from .devices import add_device_argument, check_device
from .models import ARCHITECTURES
from .train import OPTIMIZERS, PRESETS


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", action="append", metavar="SOURCE",
                   help="'cifar10' (download), the CIFAR-10 archive or folder, or a folder/tar of class folders; "
                        "repeat to train on several sources at once (classes merge by name: car = automobile)")
    p.add_argument("--source-weights", type=positive_float, nargs="+", metavar="W",
                   help="one per --data: a source of weight W is drawn W times as often as its size implies "
                        "(default 1 each)")
    p.add_argument("--arch", choices=sorted(ARCHITECTURES), help="network (default: fast, or the --init model's)")
    p.add_argument("--init", metavar="MODEL",
                   help="fine-tune: start from a trained model's weights ('default': the shipped model; or a run "
                        "folder or NAME.json), not from scratch. Its network, view sizes and normalisation are "
                        "kept; each class starts from its row for the class of the same name, if it has one")
    p.add_argument("--classes", choices=["all", "binary"],
                   help="learn every class, or positive-vs-rest (default: per arch)")
    p.add_argument("--positive", default="bird", help="the positive class (default: bird)")
    p.add_argument("--extra-positive", metavar="DIR",
                   help="extra positive images merged into training: a folder of images, or a class-folder source "
                        "(folder or archive) whose training split has a folder named like the positive class")
    p.add_argument("--balance", action="store_true", help="draw every class equally often (sampling weights)")
    p.add_argument("--balance-negatives", action="store_true",
                   help="within each --data source, draw every class but the positive one equally often; the "
                        "positive class and each source keep their share (with --classes all)")
    p.add_argument("--hard-mining", type=non_negative_float, metavar="F",
                   help="hard-example mining: from the second epoch, draw an image 1 + F times as often when the "
                        "network's p(positive) for it was fully wrong when last trained on (default 0: off)")
    p.add_argument("--mix", choices=MIXES,
                   help="CutMix (a box of one image pasted into another), MixUp (two images blended) or both, "
                        "labels mixed in proportion (default: off)")
    p.add_argument("--mix-p", type=ranged(float, 0, 1, above=True), metavar="P",
                   help="fraction of batches mixed (default 0.5)")
    p.add_argument("--epochs", type=positive_float, help="epochs (default: per arch; fractions allowed)")
    p.add_argument("--batch-size", type=positive_int)
    p.add_argument("--lr", type=positive_float, help="learning rate (default: per arch)")
    p.add_argument("--optimizer", choices=OPTIMIZERS,
                   help="the fast networks' optimizer: sgd (airbench94's recipe, the default) or muon (Muon for "
                        "the filters, airbench94_muon's settings; --lr is then Muon's rate)")
    p.add_argument("--lookahead", action=argparse.BooleanOptionalAction, default=None,
                   help="airbench's weight averaging: the weights move to an average of themselves every 5 steps "
                        "(default: on for sgd, off for muon)")
    p.add_argument("--label-smoothing", type=ranged(float, 0, 1, below=True))
    p.add_argument("--val-size", type=positive_int,
                   help="training images held out to pick threshold and temperature (default 5000, or 10%%)")
    p.add_argument("--target-precision", type=ranged(float, 0, 1, above=True),
                   help="decision threshold target on validation (default 0.97)")
    p.add_argument("--seed", type=seed_int, default=0, help="random seed, 0 to 2**32-1 (default 0)")
    p.add_argument("--out", metavar="RUN_DIR", help="run folder (default: runs/train-DATE)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--recalibrate", action="store_true",
                   help="choose the finished run's temperature and thresholds in --out again on its validation split "
                        "(e.g. with another --target-precision); the weights are untouched")
    add_device_argument(p)
    p.add_argument("--input-size", type=positive_int, metavar="PX",
                   help="the model's view of an image, in pixels (default 32, or the --init model's; CIFAR-10's "
                        "thumbnails are upsampled)")
    p.add_argument("--zoom-size", type=non_negative_int, metavar="PX",
                   help="photos larger than the view are also seen at PX (a second view of the same decode, "
                        "averaged in by predict and evaluate; e.g. 48 for a 40-px view); with --recalibrate: "
                        "set on a finished run (0: remove)")
    p.add_argument("--widths", type=positive_int, nargs=3, metavar="C",
                   help="the fast network's channel widths (default 64 256 256; a step's time grows about as "
                        "the square of the width)")
    p.add_argument("--stem-stride", type=int, choices=(1, 2), metavar="S",
                   help="the fast network's first layer moves by S pixels (default 1); 2 sees a 2N-px view for "
                        "little more than an N-px one costs (e.g. --input-size 64 --stem-stride 2)")
    p.add_argument("--start-size", type=positive_int, nargs="+", metavar="PX",
                   help="progressive resizing: train the first --start-epochs at this smaller size (faster); "
                        "several sizes, smallest first, are stages in turn "
                        "(e.g. --start-size 24 28 --start-epochs 4 2)")
    p.add_argument("--start-epochs", type=positive_float, nargs="+", metavar="N", help="epochs at each --start-size")
    p.add_argument("--preset", choices=sorted(PRESETS),
                   help="quick: as good as possible in a few minutes (a narrower network, Muon, fewer and "
                        "smaller epochs; docs/RESULTS.md); without it, the recipe of the best model")
    p.add_argument("--no-bf16", dest="bf16", action="store_false",
                   help="train in float32 (by default: bf16 autocast where the processor computes bf16 natively)")
    add_augment_arguments(p)


def add_augment_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("synthetic data (defaults: per arch)")
    g.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None, help="random horizontal flips")
    g.add_argument("--shift", type=non_negative_int, metavar="PX", help="random shifts of up to PX pixels (0: off)")
    g.add_argument("--rotate", type=non_negative_float, metavar="DEG",
                   help="random rotations within +-DEG degrees (0: off)")
    g.add_argument("--blur", type=non_negative_float, metavar="SIGMA",
                   help="random Gaussian blur up to SIGMA pixels (0: off)")
    g.add_argument("--blur-p", type=ranged(float, 0, 1), metavar="P", help="fraction of images blurred (default 0.5)")


def augment_overrides(args: argparse.Namespace) -> dict:
    keys = {"flip": "flip", "shift": "shift", "rotate": "rotate", "blur": "blur", "blur_p": "blur_p"}
    return {k: getattr(args, a) for k, a in keys.items() if getattr(args, a, None) is not None}


def run(args: argparse.Namespace) -> int:
    from .errors import BirdcnnError
    from .train import TrainConfig, init_settings, recalibrate, train

    if args.recalibrate:
        if not args.out:
            raise BirdcnnError("--recalibrate needs --out RUN_DIR (the finished run)")
        recalibrate(args.out, args.target_precision, args.zoom_size, command="birdcnn " + shlex.join(args._argv))
        return 0
    if not args.data and not args.resume:
        raise BirdcnnError("--data is required (e.g. --data cifar10, or a folder of class folders)")
    if args.resume and not args.out:
        raise BirdcnnError("--resume needs --out RUN_DIR (the run to continue)")
    if args.mix_p is not None and args.mix is None and not args.resume:  # on --resume: ignored, below
        raise BirdcnnError("--mix-p needs --mix (cutmix, mixup or both)")
    if args.resume:
        ignored = [f"--{k.replace('_', '-')}"
                   for k in ("data", "init", "arch", "classes", "epochs", "batch_size", "lr", "optimizer",
                             "extra_positive",
                             "preset", "start_size", "start_epochs", "widths", "stem_stride", "zoom_size",
                             "hard_mining", "mix", "mix_p", "lookahead")
                   if getattr(args, k) is not None]
        if ignored:
            print(f"note: --resume continues the run as first configured; ignoring {', '.join(ignored)}",
                  file=sys.stderr)
    if args.device != "auto":  # checked before any data is loaded: a missing GPU is one line now, not a traceback later
        check_device(args.device)
    data = args.data or [""]
    # A fine-tuning run takes the network settings of the model it starts from, unless told otherwise.
    init = init_settings(args.init) if args.init and not args.resume else {}
    if init and args.arch not in (None, init["arch"]):
        raise BirdcnnError(f"--init {args.init} is a {init['arch']!r} network: --arch {args.arch} cannot start from it")
    zoom = args.zoom_size if args.zoom_size is not None else init.get("zoom_size")
    cfg = TrainConfig(data=data[0] if len(data) == 1 else data, source_weights=args.source_weights,
                      init=args.init, arch=args.arch or init.get("arch") or TrainConfig.arch,
                      widths=args.widths or init.get("widths"),
                      stem_stride=args.stem_stride or init.get("stem_stride") or TrainConfig.stem_stride,
                      classes=args.classes,
                      positive=args.positive,
                      extra_positive=args.extra_positive, balance=args.balance,
                      balance_negatives=args.balance_negatives, hard_mining=args.hard_mining or 0.0,
                      mix=args.mix, mix_p=args.mix_p or TrainConfig.mix_p,
                      epochs=args.epochs,
                      batch_size=args.batch_size, lr=args.lr, label_smoothing=args.label_smoothing,
                      augment=augment_overrides(args), val_size=args.val_size, seed=args.seed, out=args.out,
                      device=None if args.device == "auto" else args.device, bf16=args.bf16,
                      input_size=args.input_size or init.get("input_size") or TrainConfig.input_size,
                      start_size=args.start_size, start_epochs=args.start_epochs,
                      preset=args.preset, optimizer=args.optimizer, lookahead=args.lookahead,
                      zoom_size=zoom or None,
                      **({} if args.target_precision is None else {"target_precision": args.target_precision}))
    train(cfg, resume=args.resume, command="birdcnn " + shlex.join(args._argv))
    return 0
