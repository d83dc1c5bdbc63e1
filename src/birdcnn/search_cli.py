"""`birdcnn search` arguments -> `search.search`; the matches listed, the --output files written, and --merge."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from .backends import BACKENDS
from .contact_sheet import write_contact_sheet
from .devices import add_device_argument, chosen_device
from .errors import BirdcnnError, FileProblem, display_path
from .images import is_image_path
from .search import SearchResult, search
from .search_formats import FORMATS, format_of, write_output
from .search_log import SearchLog, is_search_log, read_log, setting
from .shards import merge_logs, shard_argument
from .sources import known_words


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
                   help="also locate each match (as birdcnn locate: ~1,200 windows, about 5 s a photo on 2 CPU "
                        "cores in float32; docs/RESULTS.md): its boxes go in --output, as MegaDetector detections")
    p.add_argument("--shard", type=shard_argument, metavar="K/N",
                   help="score only part K of N of the photos (by a hash of each path, so N machines split a folder "
                        "without talking); each shard has its own --output, and --merge joins them")
    p.add_argument("--merge", nargs="+", metavar=("OUT", "SHARD"),
                   help="instead of searching, join the --output logs (.jsonl) of the shards of one search into OUT "
                        "(in --format, or as OUT's suffix says); refuses logs of different searches, or a shard "
                        "twice or missing")
    p.add_argument("--no-tta", action="store_true",
                   help="score each photo once, never mirrored nor zoomed (by default photos near the threshold "
                        "are also scored mirrored and, if larger than the view, at the model's zoom size, averaged): "
                        "up to 2.2x faster on CPU (docs/RESULTS.md), less accurate on varied photos")
    p.add_argument("--crops", action="store_true",
                   help="also score the four quadrants and the centre, keep the highest "
                        "(finds small birds; ~6x the network work)")


def _check_names(results: str | None, html_page: str | None) -> None:
    """Refuse output names that would put results over a photo: `--output IMG_0042.jpg` (a slip
    for the folder) or `--html photo.jpg`, before any work."""
    if results and is_image_path(results):
        raise BirdcnnError(f"{display_path(results)}: names an image, not a results file "
                           f"(.csv, .json or .jsonl)")
    if html_page and Path(html_page).suffix.lower() not in (".html", ".htm"):
        raise BirdcnnError(f"{display_path(html_page)}: --html writes a web page: name it .html")


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
            r.failed.append(FileProblem(rec["path"], rec["error"]))
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
        try:
            page = write_contact_sheet(r, args.html, args.workers)
        except OSError as e:
            raise BirdcnnError(f"{display_path(args.html)}: cannot write ({e.strerror or e})") from None
        print(f"contact sheet: {page}", file=sys.stderr)


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
    _check_names(out, args.html)
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
          f"{s['scanned']} photos, {s['matched']} show a {r.target} (p >= {r.min_probability:.3g}), {r.unreadable()}",
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
    _check_names(args.output, args.html)
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
        print(f"birdcnn search: {'error' if s.serious else 'warning'}: {s}", file=sys.stderr)
    if r.other:
        print(f"birdcnn search: passed over {len(r.other)} files that are not images: {r.other}", file=sys.stderr)
    for f in r.failed:
        print(f"birdcnn search: error: {f}", file=sys.stderr)
    s = r.summary()
    shard = f"shard {r.shard} ({r.outside_shard} photos in the other shards): " if r.shard else ""
    speed = r.photos_per_second
    print(f"birdcnn search: {shard}{s['scanned']} photos scanned ({r.scored} now at "
          f"{speed:.{0 if speed >= 10 else 1}f} photos/s"  # --boxes: seconds a photo, not "0 photos/s"
          f"{f', {r.resumed} from {args.output}' if r.resumed else ''}), {s['matched']} show a {r.target} "
          f"(p >= {r.min_probability:.3g}), {r.unreadable()}", file=sys.stderr)
    if r.interrupted:
        hint = f"; continue with --output {args.output} --resume" if args.output else ""
        print(f"birdcnn search: interrupted: the list above holds the {r.scored + r.resumed} photos "
              f"scored so far{hint}", file=sys.stderr)
        return 130
    return 1 if r.failed or any(s.serious for s in r.skipped) else 0
