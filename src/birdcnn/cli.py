"""The `birdcnn` command line: one sub-command per module, imported only when used.

User errors (bad files, bad arguments) print one line and exit 2, never a traceback;
commands that process many inputs exit 1 when some of them failed.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import NoReturn

from .errors import BirdcnnError

# name -> (module, one-line help). Each module has add_arguments(parser) and run(args) -> int.
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("birdcnn.train_cli", "train a network on CIFAR-10 or a folder of class folders"),
    "predict": ("birdcnn.predict", "classify photos: is there a bird?"),
    "evaluate": ("birdcnn.evaluate_cli",
                 "measure a model honestly: precision, recall, calibration, galleries, report.html"),
    "search": ("birdcnn.search_cli", "search a folder of photos (recursively) for birds or any class"),
    "locate": ("birdcnn.locate", "find where the bird is in a photo: sliding-window heat map and boxes"),
    "explain": ("birdcnn.explain", "show, step by step, what the network sees in one photo"),
    "export": ("birdcnn.export",
               "the network as an ONNX (float32 or int8) or TorchScript file, checked on real images"),
    "serve": ("birdcnn.serve", "a web page and a JSON API for photos (FastAPI + uvicorn, 127.0.0.1:8000)"),
    "augment-preview": ("birdcnn.augment_preview", "a grid of the synthetic training versions of one image"),
    "experiment": ("birdcnn.experiment_cli", "reproducible experiments (tunnel-vision: why convolutions)"),
}


class Parser(argparse.ArgumentParser):
    """argparse, with a refused argument as one line, like every other user error:
    "birdcnn train: error: argument --lr: must be a number above 0, not -1" (exit 2).

    argparse's usage block is kept where it helps: when no command (or no experiment) is given,
    since it lists them. Sub-parsers are made of this class too (add_subparsers uses type(self)).
    """

    def error(self, message: str) -> NoReturn:
        if self._subparsers is not None and message.startswith("the following arguments are required"):
            self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser(command: str | None) -> argparse.ArgumentParser:
    """The parser, with the arguments of `command` only: each command's module imports torch (~3 s),
    so `birdcnn --help` and `--version` (command None) load none, and `birdcnn train ...` one."""
    from . import __version__

    parser = Parser(prog="birdcnn", description="Is there a bird in this photo? Train, evaluate and use a CNN.")
    parser.add_argument("--version", action="version", version=f"birdcnn {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(_module=module)
        if name == command:
            importlib.import_module(module).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    # Commands only write picture files: matplotlib's file backend, set in this one place (a
    # library user's own MPLBACKEND wins; without a display matplotlib picks Agg by itself).
    os.environ.setdefault("MPLBACKEND", "Agg")
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(argv[0] if argv and argv[0] in COMMANDS else None)
    args, extra = parser.parse_known_args(argv)
    if extra:  # named by the command's own parser: argparse would name the top-level one, "birdcnn"
        command = parser._subparsers._group_actions[0].choices[args.command]
        command.error(f"unrecognized arguments: {' '.join(extra)}")
    args._argv = list(argv)
    try:
        return int(importlib.import_module(args._module).run(args) or 0)
    except BirdcnnError as e:
        print(f"birdcnn {args.command}: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"birdcnn {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `birdcnn predict ... | head`
        return 0


if __name__ == "__main__":
    sys.exit(main())
