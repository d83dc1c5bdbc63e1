"""Decoding photos in worker processes: each photo to the views the network scores, and a
stand-in pool for when there are no workers. Nothing here imports torch, so workers start fast."""
from __future__ import annotations

import os
import signal
from typing import Any, Callable, Iterable, Iterator

import numpy as np
from PIL import Image

from .errors import ImageError
from .images import model_view, open_for_model, zoom_view


def model_views(im: Image.Image, size: int, crops: bool) -> np.ndarray:
    """The views the network scores for one photo: the whole frame (central square, as predict
    sees it) and, with `crops`, the four quadrants and the centre half (a small bird fills 4x
    more of a quadrant than of the frame). Returns (V, size, size, 3) uint8, V = 1 or 6."""
    views = [model_view(im, size)]
    if crops:
        w, h = im.size
        cw, ch = max(1, w // 2), max(1, h // 2)
        for x0, y0 in ((0, 0), (w - cw, 0), (0, h - ch), (w - cw, h - ch), ((w - cw) // 2, (h - ch) // 2)):
            views.append(model_view(im.crop((x0, y0, x0 + cw, y0 + ch)), size))
    return np.stack(views)


def decode_chunk(paths: list[str], size: int, crops: bool, zoom_size: int | None = None
                 ) -> list[tuple[str, np.ndarray | str, np.ndarray | None]]:
    """One worker task: (path, its `model_views`, the frame's zoom view at `zoom_size` px or None
    (`images.zoom_view`: photos only)) for each photo, or (path, problem, None) if unreadable."""
    out: list[tuple[str, np.ndarray | str, np.ndarray | None]] = []
    for p in paths:
        try:
            # Crops are half the frame, so decode at twice the input size; draft mode does the rest.
            im = open_for_model(p, max(size, zoom_size or 0), zoom=2 if crops else 1)  # as predict decodes
            out.append((p, model_views(im, size, crops), zoom_view(im, size, zoom_size)))
        except ImageError as e:
            # The walk listed it, so a file that is not there is a link to nothing (checked only
            # on failure: no extra system calls per photo).
            broken = e.problem == "no such file" and os.path.islink(p)
            out.append((p, "broken symbolic link" if broken else e.problem, None))
    return out


def worker_init() -> None:
    """The initializer of a pool of decoding processes."""
    # Ctrl-C goes to the whole process group: only the main process handles it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class InProcessPool:
    """No worker processes: each task runs at once in this process, behind the interface of the
    pools it stands in for (multiprocessing.Pool's apply_async, ProcessPoolExecutor's map)."""

    class _Done:
        def __init__(self, value):
            self.value = value

        def get(self):
            return self.value

    def apply_async(self, fn: Callable, args: tuple) -> "InProcessPool._Done":
        return self._Done(fn(*args))

    @staticmethod
    def map(fn: Callable, it: Iterable, chunksize: int = 1) -> Iterator[Any]:
        return map(fn, it)

    def terminate(self) -> None:
        pass

    def join(self) -> None:
        pass

    def __enter__(self) -> "InProcessPool":
        return self

    def __exit__(self, *exc) -> bool:
        return False
