"""Writing files so that nothing already written is lost: write a temporary file beside the
target, then rename it over the target (atomic on one file system). A crash, Ctrl-C or error
mid-write leaves the old file intact and no half-written one."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

from .errors import BirdcnnError, display_path


def write_atomic(path: str | Path, write: Callable[[Path], Any]) -> Path:
    """Call `write(tmp)` to fill a temporary file, then rename it to `path`.

    The temporary name keeps `path`'s suffix, so writers that infer the format from it
    (matplotlib, numpy's savez) still work; it starts with a dot and contains "tmp".
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp{path.suffix}")
    try:
        write(tmp)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def check_not_input(out: str | Path, source: str | Path) -> None:
    """Refuse an output that is the input it is made from (`locate photo.jpg --out photo.jpg`
    would replace the photo by its heat map), in one line naming both."""
    if os.path.exists(out) and os.path.exists(source) and os.path.samefile(out, source):
        raise BirdcnnError(f"{display_path(out)}: is the input {display_path(source)}; "
                           "choose another name for the output")


def write_text(path: str | Path, text: str) -> Path:
    return write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_bytes(path: str | Path, data: bytes) -> Path:
    return write_atomic(path, lambda tmp: tmp.write_bytes(data))


def save_figure(fig, path: str | Path, **savefig_kwargs) -> Path:
    """Save a matplotlib figure atomically, then close it (figures hold memory until closed)."""
    import matplotlib.pyplot as plt

    try:
        return write_atomic(path, lambda tmp: fig.savefig(tmp, **savefig_kwargs))
    finally:
        plt.close(fig)
