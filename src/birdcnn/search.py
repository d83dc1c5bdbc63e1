"""`birdcnn search`: find the photos that show a bird (or any class) in a folder of 100,000.

The pipeline streams, so memory stays flat however large the collection is:

    walk (main process, sorted, symlink loops reported) -> chunks of paths
      -> worker processes decode only the pixels needed (JPEG draft mode) to 32x32 views
      -> main process scores batches of views with the network
      -> one flushed JSON line per photo in the log (search_log.py), matches kept as (path, probability)

At most a few chunks are in flight at a time (back-pressure), so neither the list of paths
nor decoded images pile up. Workers import no torch: they are small and start fast.

`--resume` re-reads the JSON lines file and skips photos it already scored, so a run killed
by a power cut or `kill -9` continues where it stopped (a half-written last line is dropped).
The log is the resumable record: `--format csv|megadetector` files are rendered from it at the
end (search_formats.py). `--shard K/N` scores a fixed part of the photos and `--merge` joins the
parts' logs (shards.py).
"""
from __future__ import annotations

import argparse
import base64
import html
import io
import json
import multiprocessing
import os
import signal
import sys
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np
from PIL import Image

from . import __version__
from .atomic import write_text
from .backends import BACKENDS
from .devices import add_device_argument, chosen_device
from .errors import BirdcnnError, ImageError, display_path
from .images import IMAGE_SUFFIXES, OtherFiles, model_view, open_for_model, open_image
from .search_formats import FORMATS, format_of, write_output
from .search_log import LOG_FORMAT, ResultLog, SearchLog, is_search_log, read_log, setting
from .shards import Shard, merge_logs, shard_argument
from .sources import known_words

if TYPE_CHECKING:
    from .modelfile import Classifier

CHUNK = 64             # photos per worker task: large enough to amortise inter-process overhead
BATCH = 256            # photos per network batch
HTML_LIMIT = 1000      # thumbnails on the contact sheet (the best matches); the rest are counted
THUMB = 200            # thumbnail size in pixels


# ---------------------------------------------------------------- walking the folder

@dataclass(frozen=True)
class Skipped:
    """A folder entry that was not scanned. `serious`: its contents may be missed (exit code 1);
    a symbolic link loop or a second link to a folder already scanned is only a warning."""

    path: str
    problem: str
    serious: bool = True


def walk_images(root: str | os.PathLike, other: OtherFiles | None = None) -> Iterator[str | Skipped]:
    """Yield the image paths under `root` (recursively, sorted, following symbolic links) and a
    `Skipped` for every folder that cannot be read or would be scanned twice; `other` counts the
    files passed over as not images (hidden ones aside).

    Each real folder (device, inode) is entered once: a link back to an ancestor is reported as a
    loop instead of being followed forever, and a second link to a folder is not scanned twice.
    """
    root = os.fspath(root)
    st = os.stat(root)
    seen: dict[tuple[int, int], str] = {(st.st_dev, st.st_ino): root}
    stack: list[tuple[str, tuple[tuple[int, int], ...]]] = [(root, ((st.st_dev, st.st_ino),))]
    while stack:
        folder, ancestors = stack.pop()
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as e:
            yield Skipped(folder, f"cannot read folder ({e.strerror or e})")
            continue
        subfolders = []
        for e in entries:
            try:
                is_dir = e.is_dir()  # follows links
            except OSError:
                is_dir = False
            if is_dir:
                try:
                    s = e.stat()
                except OSError as err:
                    yield Skipped(e.path, f"cannot read folder ({err.strerror or err})")
                    continue
                key = (s.st_dev, s.st_ino)
                if key in ancestors:
                    yield Skipped(e.path, f"symbolic link loop (back to {seen[key]}): not followed", serious=False)
                elif key in seen:
                    yield Skipped(e.path, f"same folder as {seen[key]}: not scanned twice", serious=False)
                else:
                    seen[key] = e.path
                    subfolders.append((e.path, ancestors + (key,)))
            elif os.path.splitext(e.name)[1].lower() in IMAGE_SUFFIXES:
                # A broken link (or a cycle of links) is a photo we cannot read: report it as one.
                yield e.path
            elif other is not None and not e.name.startswith("."):
                other.add(e.name)
        stack.extend(reversed(subfolders))  # depth-first, in name order


# ---------------------------------------------------------------- decoding (worker processes)

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


def _decode_chunk(paths: list[str], size: int, crops: bool) -> list[tuple[str, np.ndarray | str]]:
    out: list[tuple[str, np.ndarray | str]] = []
    for p in paths:
        try:
            # Crops are half the frame, so decode at twice the input size; draft mode does the rest.
            im = open_for_model(p, size, zoom=2 if crops else 1)  # as predict decodes
            out.append((p, model_views(im, size, crops)))
        except ImageError as e:
            # The walk listed it, so a file that is not there is a link to nothing (checked only
            # on failure: no extra system calls per photo).
            broken = e.problem == "no such file" and os.path.islink(p)
            out.append((p, "broken symbolic link" if broken else e.problem))
    return out


def _worker_init() -> None:
    # Ctrl-C goes to the whole process group: only the main process handles it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


# ---------------------------------------------------------------- the search

@dataclass
class SearchResult:
    """What a search found. `matches`: (path, probability), most confident first."""

    folder: str
    target: str
    min_probability: float
    matches: list[tuple[str, float]] = field(default_factory=list)
    scored: int = 0                 # photos scored in this run
    resumed: int = 0                # photos already scored in --output by an earlier run
    failed: list[tuple[str, str]] = field(default_factory=list)   # (path, problem)
    skipped: list[Skipped] = field(default_factory=list)
    other: OtherFiles = field(default_factory=OtherFiles)  # files that are not images, by suffix
    shard: str | None = None        # "K/N" with --shard
    outside_shard: int = 0          # photos left to the other shards
    interrupted: bool = False
    seconds: float = 0.0

    @property
    def photos_per_second(self) -> float:
        return self.scored / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> dict:
        reasons = Counter(problem.split(" (")[0] for _, problem in self.failed)
        return {
            "folder": self.folder, "class": self.target, "min_probability": round(self.min_probability, 6),
            "scanned": self.scored + self.resumed + len(self.failed), "scored": self.scored + self.resumed,
            "scored_now": self.scored, "resumed": self.resumed,
            "matched": len(self.matches), "failed": len(self.failed), "failure_reasons": dict(reasons),
            "failures": [{"path": p, "problem": m} for p, m in self.failed],
            "skipped": [{"path": s.path, "problem": s.problem} for s in self.skipped],
            "shard": self.shard, "outside_shard": self.outside_shard,
            "interrupted": self.interrupted, "seconds": round(self.seconds, 2),
            "photos_per_second": round(self.photos_per_second, 1),
        }


def _chunks(folder: str, done: set[str], result: SearchResult, shard: Shard | None) -> Iterator[list[str]]:
    """The photos to score, in chunks: not those already `done`, nor another shard's."""
    chunk: list[str] = []
    for item in walk_images(folder, result.other):
        if isinstance(item, Skipped):
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


class _StopOnCtrlC:
    """First Ctrl-C: stop after the batch being scored, so the results file, the list and the
    counts agree. A second Ctrl-C stops at once (KeyboardInterrupt)."""

    def __init__(self):
        self.set = False

    def __enter__(self):
        def handler(signum, frame):
            if self.set:
                raise KeyboardInterrupt
            self.set = True
        try:
            self._old = signal.signal(signal.SIGINT, handler)
        except ValueError:  # not the main thread: Ctrl-C stays a KeyboardInterrupt
            self._old = None
        return self

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
        return False


class _InProcess:
    """`--workers 0`: decode in the main process (same interface as a pool's apply_async)."""

    class _Done:
        def __init__(self, value):
            self.value = value

        def get(self):
            return self.value

    def apply_async(self, fn, args):
        return self._Done(fn(*args))

    def terminate(self):
        pass

    def join(self):
        pass


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
    its mirror image averaged in (`tta=False`: without, half the network work); `predict` may
    average more views (the model's `tta`), so probabilities can differ slightly from it. Ctrl-C
    stops cleanly: the result says `interrupted` and holds everything scored until then.

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
    if min_probability is None:
        min_probability = model.default_min_probability(ci, views_mode)
    result = SearchResult(folder, target, float(min_probability), shard=str(shard) if shard else None)

    log = None
    if output is not None:
        header = {"format": LOG_FORMAT, "folder": folder, "root": os.path.realpath(folder),
                  "model": model.meta.get("weights_sha256", ""), "class": target, "crops": bool(crops),
                  "tta": views_mode, "boxes": bool(boxes), "shard": result.shard,
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

    workers = (os.cpu_count() or 1) if workers is None else workers
    pool = (multiprocessing.Pool(workers, initializer=_worker_init) if workers > 0 else _InProcess())
    # Decoding is most of the work and has the cores; the network gets what is left (at least
    # one thread): on 2 cores, 2 threads fighting 2 decoders measured ~20% slower than 1.
    threads = torch.get_num_threads()
    if model.device.type == "cpu" and workers > 0:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) - workers))
    bar = tqdm(unit=" photos", desc="searching", disable=None if progress is None else not progress,
               file=sys.stderr, smoothing=0.1)
    pending: deque = deque()
    batch: list[tuple[str, np.ndarray]] = []
    start = time.perf_counter()
    stop = _StopOnCtrlC()

    def score(batch: list[tuple[str, np.ndarray]]) -> None:
        probs = model.probabilities(np.concatenate([v for _, v in batch]), tta=views_mode)
        wanted = probs[:, ci].sum(1)  # several words: any of them
        at = 0
        for path, v in batch:
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

    def collect(decoded: list[tuple[str, np.ndarray | str]]) -> None:
        for path, v in decoded:
            if isinstance(v, str):
                result.failed.append((path, v))
                if log:
                    log.write({"path": path, "error": v})
            else:
                batch.append((path, v))
        if len(batch) >= BATCH:
            score(batch)
            batch.clear()
            if log:
                log.sync()

    try:
        with stop:
            # Keep a few chunks per worker in flight: workers never wait, and memory stays bounded.
            for chunk in _chunks(folder, done, result, shard):
                pending.append(pool.apply_async(_decode_chunk, (chunk, model.input_size, crops)))
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


# ---------------------------------------------------------------- the contact sheet

def _thumbnail(path: str) -> str:
    """A JPEG thumbnail as a data: URI (the page is self-contained), or '' if unreadable now."""
    try:
        im = open_image(path, min_size=THUMB)
    except ImageError:
        return ""
    im.thumbnail((THUMB, THUMB), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def write_contact_sheet(result: SearchResult, out: str | os.PathLike, workers: int | None = None) -> Path:
    """A self-contained HTML page of the best matches (thumbnails embedded), most confident first."""
    out = Path(out)
    shown = result.matches[:HTML_LIMIT]
    paths = [p for p, _ in shown]
    if workers == 0 or len(paths) < 50:
        thumbs = [_thumbnail(p) for p in paths]
    else:
        with multiprocessing.Pool(workers or os.cpu_count() or 1, initializer=_worker_init) as pool:
            thumbs = pool.map(_thumbnail, paths, chunksize=16)
    cards = []
    for (path, p), src in zip(shown, thumbs):
        href = html.escape(Path(path).resolve().as_uri(), quote=True)
        img = f'<img src="{src}" alt="" loading="lazy">' if src else '<div class="gone">unreadable</div>'
        cards.append(f'<a class="card" href="{href}" title="{html.escape(display_path(path), quote=True)}">{img}'
                     f'<b>{100 * p:.1f}%</b><span>{html.escape(display_path(os.path.basename(path)))}</span></a>')
    s = result.summary()
    more = len(result.matches) - len(shown)
    title = f"{s['matched']} photos showing a {result.target}"
    not_shown = f" The {more} less confident matches are not shown." if more > 0 else ""
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>birdcnn search: {html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5em; background: #fafafa; }}
.grid {{ display: flex; flex-wrap: wrap; gap: 10px; }}
.card {{ width: {THUMB}px; text-decoration: none; color: #222; background: #fff; padding: 6px;
        box-shadow: 0 1px 3px #0003; display: flex; flex-direction: column; }}
.card img {{ width: {THUMB}px; height: {THUMB}px; object-fit: contain; background: #eee; }}
.card span {{ font-size: 12px; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }}
.gone {{ width: {THUMB}px; height: {THUMB}px; background: #eee; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<p>Folder <code>{html.escape(display_path(result.folder))}</code>: {s['scanned']} photos scanned, {s['matched']} with
{html.escape(result.target)} probability &ge; {result.min_probability:.3g}, {_unreadable(result)}.
Most confident first; click a photo to open it.{not_shown}</p>
<div class="grid">
{chr(10).join(cards)}
</div></body></html>
"""
    out.parent.mkdir(parents=True, exist_ok=True)
    return write_text(out, page)


# ---------------------------------------------------------------- command line

def add_arguments(p: argparse.ArgumentParser) -> None:
    add_device_argument(p)
    p.add_argument("folder", metavar="FOLDER", nargs="?", help="folder to search, with all its sub-folders")
    p.add_argument("--for", dest="target", metavar="WORDS",
                   help="what to look for: one class or several, comma-separated (--for cat,dog); default: the "
                        f"model's positive class, bird. {known_words()}")
    p.add_argument("--min-probability", type=float, metavar="P",
                   help="list photos with at least this probability (default: the model's threshold for its "
                        "positive class, 0.5 for other classes)")
    p.add_argument("--model",
                   help="model file (.json/.safetensors or a run folder, or an .onnx made by 'birdcnn export'; "
                        "default: the shipped model)")
    p.add_argument("--backend", choices=BACKENDS, help="what runs the network: torch, or onnxruntime for an .onnx "
                                                       "export (default: by the model file)")
    p.add_argument("--json", action="store_true",
                   help='print {"matches": [{"path", "probability"}...], "summary": {...}}')
    p.add_argument("--html", metavar="OUT", help="also write a contact sheet of the matches (self-contained HTML page)")
    p.add_argument("--workers", type=int, metavar="N", help="decoding processes (default: one per CPU core; 0: none)")
    p.add_argument("--output", metavar="FILE",
                   help="write every photo's result: FILE.jsonl appends one JSON line per photo as it is scored; "
                        "FILE.csv and FILE.json (MegaDetector batch output, for Timelapse and AddaxAI) are written "
                        "at the end from that log, kept beside them as FILE.csv.jsonl (see --format, --log)")
    p.add_argument("--format", choices=FORMATS,
                   help="format of --output (default: from its suffix, .csv or .json, else jsonl)")
    p.add_argument("--log", metavar="FILE.jsonl",
                   help="with --format csv or megadetector: where the resumable JSON-lines log goes (default: "
                        "--output's name + .jsonl)")
    p.add_argument("--resume", action="store_true",
                   help="continue the search recorded in --output, skipping photos already scored")
    p.add_argument("--boxes", action="store_true",
                   help="also locate each match (as birdcnn locate, ~1 s a photo on a CPU): its boxes go in --output, "
                        "as MegaDetector detections")
    p.add_argument("--shard", type=shard_argument, metavar="K/N",
                   help="score only part K of N of the photos (by a hash of each path, so N machines split a folder "
                        "without talking); each shard has its own --output, and --merge joins them")
    p.add_argument("--merge", nargs="+", metavar=("OUT", "SHARD"),
                   help="instead of searching, join the --output logs (.jsonl) of the shards of one search into OUT "
                        "(in --format, or as OUT's suffix says); refuses logs of different searches, or a shard "
                        "twice or missing")
    p.add_argument("--no-tta", action="store_true",
                   help="score each photo once, without mirror averaging: ~1.2x faster on CPU")
    p.add_argument("--crops", action="store_true",
                   help="also score the four quadrants and the centre, keep the highest "
                        "(finds small birds; ~6x the network work)")


def _unreadable(r: SearchResult) -> str:
    """'2 unreadable' for the summary, and the folders that could not be read (a name too long, no
    permission): each was reported above, so the summary must not say '0 unreadable' alone."""
    folders = sum(s.serious for s in r.skipped)
    return f"{len(r.failed)} unreadable" + (f", {folders} unreadable folder{'s' * (folders != 1)}" if folders else "")


def _outputs(args: argparse.Namespace) -> tuple[str, str | None]:
    """(format of --output, the JSON-lines log the search appends to), refusing to overwrite."""
    if args.output is None:
        if args.resume:
            raise BirdcnnError("--resume needs --output FILE.jsonl (the file of the search to continue)")
        for option, given in (("--format", args.format), ("--log", args.log), ("--boxes", args.boxes)):
            if given:
                raise BirdcnnError(f"{option} needs --output FILE (where the results go)")
        return "jsonl", None
    # A log an older birdcnn wrote under a .json or .csv name (it wrote only JSON lines) stays one.
    fmt = args.format or ("jsonl" if is_search_log(args.output) else format_of(args.output))
    if fmt == "jsonl":
        if args.log:
            raise BirdcnnError("--log is for --format csv or megadetector: with jsonl, --output is the log")
        return fmt, args.output
    out, log = args.output, args.log or args.output + ".jsonl"
    if os.path.abspath(log) == os.path.abspath(out):
        raise BirdcnnError(f"{display_path(log)}: --log and --output must be different files")
    if os.path.exists(out) and not args.resume:
        raise BirdcnnError(f"{display_path(out)}: already exists (pass --resume to continue that search, "
                           "or choose another --output)")
    if os.path.exists(out) and not os.path.exists(log):
        raise BirdcnnError(f"{display_path(log)}: not found, and {display_path(out)} is written from it: that search "
                           "cannot be resumed (name its log with --log, or choose another --output)")
    return fmt, log


def result_from_log(log: SearchLog, min_probability: float) -> SearchResult:
    """A search's result as its log records it (for --merge: as if one run had scored every photo)."""
    r = SearchResult(log.folder, log.header["class"], float(min_probability))
    for rec in log.records.values():
        if "error" in rec:
            r.failed.append((rec["path"], rec["error"]))
            continue
        r.resumed += 1
        if rec["probability"] >= min_probability:
            r.matches.append((rec["path"], float(rec["probability"])))
    r.matches.sort(key=lambda m: (-m[1], m[0]))
    r.failed.sort()
    return r


def _show(r: SearchResult, args: argparse.Namespace) -> None:
    """The matches on stdout (a list, or --json), and the --html contact sheet."""
    if args.json:
        json.dump({"matches": [{"path": p, "probability": round(q, 6)} for p, q in r.matches], "summary": r.summary()},
                  sys.stdout, indent=2)
        print()
    else:
        for path, p in r.matches:
            print(f"{100 * p:5.1f}%  {display_path(path)}")
    if args.html:
        print(f"contact sheet: {write_contact_sheet(r, args.html, args.workers)}", file=sys.stderr)


def _merge(args: argparse.Namespace) -> int:
    """`--merge OUT SHARD...`: the shards' logs joined into OUT, listed as one search would list them."""
    out, shards = args.merge[0], args.merge[1:]
    if args.folder is not None:
        raise BirdcnnError("--merge takes no FOLDER: the logs name it (--merge OUT A.jsonl B.jsonl ...)")
    if not shards:
        raise BirdcnnError("--merge needs OUT and the logs to join: --merge OUT A.jsonl B.jsonl ...")
    for option, given in (("--output", args.output), ("--log", args.log), ("--resume", args.resume),
                          ("--shard", args.shard), ("--boxes", args.boxes), ("--crops", args.crops),
                          ("--no-tta", args.no_tta), ("--for", args.target), ("--model", args.model)):
        if given:
            raise BirdcnnError(f"--merge takes the search's settings from the logs, not {option} (only --format, "
                               "--min-probability, --json and --html apply)")
    for shard in shards:
        if os.path.exists(out) and os.path.exists(shard) and os.path.samefile(out, shard):
            raise BirdcnnError(f"{display_path(out)}: is one of the logs to merge: choose another OUT")
    log = merge_logs(shards)
    min_probability = (args.min_probability if args.min_probability is not None
                       else setting(log.header, "min_probability"))
    if min_probability is None:
        raise BirdcnnError(f"{display_path(shards[0])}: written before logs recorded the min probability: "
                           "pass --min-probability")
    fmt = format_of(out, args.format)
    write_output(log, out, fmt, min_probability)
    r = result_from_log(log, min_probability)
    _show(r, args)
    if log.dropped:
        print(f"birdcnn search: note: ignored {log.dropped} incomplete line(s) in the logs", file=sys.stderr)
    s = r.summary()
    print(f"birdcnn search: merged {len(shards)} log{'s' * (len(shards) != 1)} into {display_path(out)} ({fmt}): "
          f"{s['scanned']} photos, {s['matched']} show a {r.target} (p >= {r.min_probability:.3g}), {_unreadable(r)}",
          file=sys.stderr)
    return 0


def run(args: argparse.Namespace) -> int:
    from .modelfile import load_model

    if args.min_probability is not None and not 0 <= args.min_probability <= 1:
        raise BirdcnnError(f"--min-probability must be between 0 and 1, not {args.min_probability}")
    if args.merge:
        return _merge(args)
    if args.folder is None:
        raise BirdcnnError("the following arguments are required: FOLDER (or --merge OUT SHARD.jsonl ...)")
    fmt, log = _outputs(args)
    if args.workers is not None and args.workers < 0:
        raise BirdcnnError("--workers must be 0 or more")
    model = load_model(args.model, chosen_device(args.device), backend=args.backend)
    r = search(args.folder, model, args.target, args.min_probability, args.workers, log,
               args.resume, args.crops, tta=not args.no_tta, shard=args.shard, boxes=args.boxes)
    if r.summary()["scanned"] == 0 and not r.failed and not r.interrupted and not r.outside_shard:
        # Not the 57 suffixes Pillow reads: a line a person can read, with the files passed over.
        other = f"; passed over {len(r.other)} other files: {r.other}" if r.other else ""
        raise BirdcnnError(f"{display_path(args.folder)}: no photos found (JPEG, PNG, WebP, HEIC... any format Pillow "
                           f"reads, searched recursively){other}")
    if fmt != "jsonl":  # also after Ctrl-C: what was scored so far
        try:
            written = write_output(read_log(log), args.output, fmt, r.min_probability)
        except BirdcnnError as e:
            raise BirdcnnError(f"{e}; every score is kept in {display_path(log)}: --resume writes it again") from None
        print(f"birdcnn search: wrote {display_path(written)} ({fmt}, from the log {display_path(log)})",
              file=sys.stderr)
    _show(r, args)
    for s in r.skipped:
        print(f"birdcnn search: {'error' if s.serious else 'warning'}: {display_path(s.path)}: {s.problem}",
              file=sys.stderr)
    if r.other:
        print(f"birdcnn search: passed over {len(r.other)} files that are not images: {r.other}", file=sys.stderr)
    for path, problem in r.failed:
        print(f"birdcnn search: error: {display_path(path)}: {problem}", file=sys.stderr)
    s = r.summary()
    shard = f"shard {r.shard} ({r.outside_shard} photos in the other shards): " if r.shard else ""
    print(f"birdcnn search: {shard}{s['scanned']} photos scanned ({r.scored} now at {r.photos_per_second:.0f} photos/s"
          f"{f', {r.resumed} from {args.output}' if r.resumed else ''}), {s['matched']} show a {r.target} "
          f"(p >= {r.min_probability:.3g}), {_unreadable(r)}", file=sys.stderr)
    if r.interrupted:
        hint = f"; continue with --output {args.output} --resume" if args.output else ""
        print(f"birdcnn search: interrupted: the list above holds the {r.scored + r.resumed} photos "
              f"scored so far{hint}", file=sys.stderr)
        return 130
    return 1 if r.failed or any(s.serious for s in r.skipped) else 0
