"""The search engine: score every photo in a folder of 100,000 for a bird (or any class).

The pipeline streams, so memory stays flat however large the collection is:

    walk (walk.py: main process, sorted, symlink loops reported) -> chunks of paths
      -> worker processes decode only the pixels needed (JPEG draft mode) to the model's views and
         a photo's zoom view (decode_workers.py)
      -> main process scores batches of views with the network
      -> one flushed JSON line per photo in the log (search_log.py), matches kept as (path, probability)

At most a few chunks are in flight at a time (back-pressure), so neither the list of paths
nor decoded images pile up. Workers import no torch: they are small and start fast.

`resume` re-reads the JSON lines file and skips photos it already scored, so a run killed
by a power cut or `kill -9` continues where it stopped (a half-written last line is dropped).
The log is the resumable record: `--format csv|megadetector` files are rendered from it at the
end (search_formats.py). `shard` scores a fixed part of the photos and `--merge` joins the
parts' logs (shards.py). The command line is search_cli.py, the HTML page contact_sheet.py.
"""
from __future__ import annotations

import math
import multiprocessing
import os
import sys
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterator

import numpy as np

from . import __version__
from .decode_workers import InProcessPool, decode_chunk, worker_init
from .errors import BirdcnnError, FileProblem
from .images import OtherFiles
from .interrupts import StopOnCtrlC
from .search_log import LOG_FORMAT, ResultLog
from .shards import Shard
from .walk import walk_images

if TYPE_CHECKING:
    from .modelfile import Classifier

CHUNK = 64             # photos per worker task: large enough to amortise inter-process overhead
BATCH = 256            # photos per network batch
# A view whose single score for the class is this many log-odds below the threshold is not
# scored again mirrored (nor at the zoom size). The full view set raised the bird log-odds of
# 24,597 test images (CIFAR-10, realphotos, Tiny ImageNet, Caltech-101, natural images, the 40
# photos) over the single view by at most 4.7, so no decision changes, and on a library of mostly
# other things the network does a fraction of the work (docs/RESULTS.md, "Search speed").
MIRROR_MARGIN = 6.0


def mirror_floor(min_probability: float, margin: float = MIRROR_MARGIN) -> float:
    """The least single-view probability that gets the mirror pass: `min_probability`'s odds
    divided by e^`margin`, as a probability (0 -> 0, 1 -> 1: no infinities)."""
    return min_probability / (min_probability + (1 - min_probability) * math.exp(margin))


@dataclass
class SearchResult:
    """What a search found. `matches`: (path, probability), most confident first."""

    folder: str
    target: str
    min_probability: float
    matches: list[tuple[str, float]] = field(default_factory=list)
    scored: int = 0                 # photos scored in this run
    resumed: int = 0                # photos already scored in --output by an earlier run
    failed: list[FileProblem] = field(default_factory=list)    # photos that could not be read
    skipped: list[FileProblem] = field(default_factory=list)   # folders not scanned (walk_images)
    other: OtherFiles = field(default_factory=OtherFiles)  # files that are not images, by suffix
    shard: str | None = None        # "K/N" with --shard
    outside_shard: int = 0          # photos left to the other shards
    mirrored: int = 0               # views also scored mirrored (the rest were far below the threshold)
    interrupted: bool = False
    seconds: float = 0.0

    @property
    def photos_per_second(self) -> float:
        return self.scored / self.seconds if self.seconds > 0 else 0.0

    def unreadable(self) -> str:
        """'2 unreadable' for the summary, and the folders that could not be read (a name too long, no
        permission): each was reported above, so the summary must not say '0 unreadable' alone."""
        folders = sum(s.serious for s in self.skipped)
        return f"{len(self.failed)} unreadable" + (f", {folders} unreadable folder{'s' * (folders != 1)}"
                                                   if folders else "")

    def summary(self) -> dict:
        reasons = Counter(f.problem.split(" (")[0] for f in self.failed)
        return {
            "folder": self.folder, "class": self.target, "min_probability": round(self.min_probability, 6),
            "scanned": self.scored + self.resumed + len(self.failed), "scored": self.scored + self.resumed,
            "scored_now": self.scored, "resumed": self.resumed,
            "matched": len(self.matches), "failed": len(self.failed), "failure_reasons": dict(reasons),
            "failures": [{"path": f.path, "problem": f.problem} for f in self.failed],
            "skipped": [{"path": s.path, "problem": s.problem} for s in self.skipped],
            "shard": self.shard, "outside_shard": self.outside_shard, "mirrored": self.mirrored,
            "interrupted": self.interrupted, "seconds": round(self.seconds, 2),
            "photos_per_second": round(self.photos_per_second, 1),
        }


def _chunks(folder: str, done: set[str], result: SearchResult, shard: Shard | None) -> Iterator[list[str]]:
    """The photos to score, in chunks: not those already `done`, nor another shard's."""
    chunk: list[str] = []
    for item in walk_images(folder, result.other):
        if isinstance(item, FileProblem):
            result.skipped.append(item)
            continue
        rel = os.path.relpath(item, folder) if done or shard else ""
        if shard and not shard.holds(rel):
            result.outside_shard += 1
        elif rel in done:
            continue
        else:
            chunk.append(item)
            if len(chunk) == CHUNK:
                yield chunk
                chunk = []
    if chunk:
        yield chunk


def search(folder: str | os.PathLike, model: "Classifier", target: str | None = None,
           min_probability: float | None = None, workers: int | None = None,
           output: str | os.PathLike | None = None, resume: bool = False, crops: bool = False,
           progress: bool | None = None, tta: bool = True, shard: Shard | None = None,
           boxes: bool = False) -> SearchResult:
    """Score every photo under `folder` for class `target` (default: the model's positive class;
    several comma-separated words score the probability of any of them: "cat,dog").

    A photo's probability is the calibrated probability of `target` for the whole frame, or with
    `crops` the largest over the whole frame, the four quadrants and the centre. Photos with
    probability >= `min_probability` (default: the model's threshold) are the matches.
    `progress`: None shows a bar only when stderr is a terminal. Each view is scored with
    its mirror image averaged in where that can matter, and for a photo (not a thumbnail) the
    flip pair of its frame at the model's `zoom_size` too (where the model is calibrated for it:
    `Classifier.zoom_tta`): a view `MIRROR_MARGIN` log-odds or more below `min_probability` keeps
    its single score (with that view's own calibration), so every decision is the full view set's
    for less network work (`tta=False`: one view for all). `predict` may average more views (the
    model's `tta`), so probabilities can differ slightly from it.
    Ctrl-C stops cleanly: the result says `interrupted` and holds everything scored until then.

    `output`: the JSON-lines log (search_log.py), resumed with `resume`. `shard`: score only that
    part of the photos (shards.py). `boxes`: record `locate`'s boxes of each match in the log
    (about a second a match on a CPU).
    """
    folder = os.fspath(folder)
    if boxes and output is None:
        raise BirdcnnError("boxes are recorded in the results file: give an output file")
    if not os.path.isdir(folder):
        raise BirdcnnError(f"{folder}: not a folder" if os.path.exists(folder) else f"{folder}: no such folder")
    ci = model.class_indices(target)
    target = ",".join(model.classes[i] for i in ci)
    # At most the flip pair: a model's 6-view TTA would triple the network's share of the time
    # for a gain in the third decimal (docs/RESULTS.md). Its own temperature and threshold apply.
    views_mode = "flip" if tta and model.tta != "none" else "none"
    # Photos' zoom view (a 48-px flip pair of the frame), where the model's flip calibration has it:
    # worth 0.02-0.09 bird AP on varied photos (docs/RESULTS.md), for photos near the threshold only.
    zoom_size = model.zoom_size if views_mode == "flip" and "flip" in model.zoom_tta else None
    if min_probability is None:
        min_probability = model.default_min_probability(ci, views_mode)
    result = SearchResult(folder, target, float(min_probability), shard=str(shard) if shard else None)
    floor = mirror_floor(min_probability)

    log = None
    if output is not None:
        header = {"format": LOG_FORMAT, "folder": folder, "root": os.path.realpath(folder),
                  "model": model.meta.get("weights_sha256", ""), "class": target, "crops": bool(crops),
                  "tta": views_mode, "zoom": zoom_size, "boxes": bool(boxes), "shard": result.shard,
                  "min_probability": round(float(min_probability), 6), "version": __version__}
        log = ResultLog(output, header, resume)
        result.resumed = len(log.done)
        result.matches = [(os.path.join(folder, rel), p) for rel, p in log.done.items() if p >= min_probability]
        if log.dropped:
            print(f"birdcnn search: note: {output}: ignored {log.dropped} incomplete line(s) from an interrupted run",
                  file=sys.stderr)
    done = set(log.done) if log else set()

    import torch
    from tqdm import tqdm

    from .modelfile import stack_zoomed

    workers = (os.cpu_count() or 1) if workers is None else workers
    pool = (multiprocessing.Pool(workers, initializer=worker_init) if workers > 0 else InProcessPool())
    # Decoding is most of the work and has the cores; the network gets what is left (at least
    # one thread): on 2 cores, 2 threads fighting 2 decoders measured ~20% slower than 1.
    threads = torch.get_num_threads()
    if model.device.type == "cpu" and workers > 0:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) - workers))
    bar = tqdm(unit=" photos", desc="searching", disable=None if progress is None else not progress,
               file=sys.stderr, smoothing=0.1)
    pending: deque = deque()
    batch: list[tuple[str, np.ndarray, np.ndarray | None]] = []  # (path, its views, its zoom view)
    start = time.perf_counter()
    # The first Ctrl-C stops after the batch being scored, so the results file, the list and the counts agree.
    stop = StopOnCtrlC()

    def score(batch: list[tuple[str, np.ndarray, np.ndarray | None]]) -> None:
        views = np.concatenate([v for _, v, _ in batch])
        if views_mode == "flip":
            # A photo's zoom view belongs with its first view, the whole frame.
            first = np.cumsum([0] + [len(v) for _, v, _ in batch[:-1]])
            zoomed = stack_zoomed([z for _, _, z in batch])
            if zoomed is not None:
                zoomed = (first[zoomed[0]], zoomed[1])
            probs, mirrored = model.flip_pair_where_close(views, ci, floor, zoomed)
            result.mirrored += int(mirrored.sum())
        else:
            probs = model.probabilities(views, tta="none")
        wanted = probs[:, ci].sum(1)  # several words: any of them
        at = 0
        for path, v, _ in batch:
            if boxes and stop.set:  # locating takes about a second a match: Ctrl-C does not wait for the batch
                break
            best = at + int(wanted[at:at + len(v)].argmax())  # the view that scored highest
            at += len(v)
            p = float(wanted[best])
            if log:
                locate = target if boxes and p >= min_probability else None
                log.write(_record(path, p, probs[best], model, locate))
            if p >= min_probability:
                result.matches.append((path, p))
            result.scored += 1
            bar.update(1)
        bar.set_postfix(matched=len(result.matches), failed=len(result.failed), refresh=False)

    def collect(decoded: list[tuple[str, np.ndarray | str, np.ndarray | None]]) -> None:
        for path, v, zoom in decoded:
            if isinstance(v, str):
                result.failed.append(FileProblem(path, v))
                if log:
                    log.write({"path": path, "error": v})
            else:
                batch.append((path, v, zoom))
        if len(batch) >= BATCH:
            score(batch)
            batch.clear()
            if log:
                log.sync()

    try:
        with stop:
            # Keep a few chunks per worker in flight: workers never wait, and memory stays bounded.
            for chunk in _chunks(folder, done, result, shard):
                pending.append(pool.apply_async(decode_chunk, (chunk, model.input_size, crops, zoom_size)))
                if len(pending) > 3 * max(workers, 1):
                    collect(pending.popleft().get())
                if stop.set:
                    break
            while pending and not stop.set:
                collect(pending.popleft().get())
            if batch and not stop.set:
                score(batch)
            result.interrupted = stop.set
    except KeyboardInterrupt:
        result.interrupted = True
    finally:
        pool.terminate()
        pool.join()
        torch.set_num_threads(threads)
        bar.close()
        if log:
            log.close()
    result.seconds = time.perf_counter() - start
    result.matches.sort(key=lambda m: (-m[1], m[0]))
    return result


def _record(path: str, p: float, probs: np.ndarray, model: "Classifier", locate: str | None) -> dict:
    """A scored photo's log line: its probability, the top class of the view that gave it (`probs`)
    and, when `locate` names the class, where `birdcnn locate` finds it."""
    top = int(probs.argmax())
    rec = {"path": path, "probability": round(p, 6), "top": model.classes[top],
           "top_probability": round(float(probs[top]), 6)}
    if locate:
        from .locate import locate_file

        try:
            found = locate_file(path, model, target=locate)
            rec.update(size=list(found.size), boxes=found.boxes)
        except BirdcnnError:  # unreadable since it was decoded: it keeps the whole frame
            pass
    return rec

