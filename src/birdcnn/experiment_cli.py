"""`birdcnn experiment NAME`: reproducible experiments, each a module with add_arguments/run."""
from __future__ import annotations

import argparse
import importlib

# name -> (module, one-line help)
EXPERIMENTS: dict[str, tuple[str, str]] = {
    "tunnel-vision": ("birdcnn.experiments.tunnel_vision",
                      "MNIST 8-or-not: dense nets' tunnel vision, sliding windows, more data, convolutions"),
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="experiment", metavar="EXPERIMENT", required=True)
    for name, (module, help_) in EXPERIMENTS.items():
        e = sub.add_parser(name, help=help_, description=help_)
        e.set_defaults(_experiment=module)
        importlib.import_module(module).add_arguments(e)


def run(args: argparse.Namespace) -> int:
    return importlib.import_module(args._experiment).run(args)
