"""The JSON-lines record of a search: what `--output FILE.jsonl` holds, what `--resume` continues,
and what the other outputs (CSV, MegaDetector JSON) and `--merge` are rendered from.

Line 1 is a header naming the search: {"format": "birdcnn-search", "folder", "root", "model",
"class", "crops", "tta", "zoom", "boxes", "shard", "min_probability", "version"} (boxes, shard and
min_probability since shards and formats, zoom since search's zoom view: older logs read as boxes
false, no shard, no min probability, no zoom view). Then one
line per photo, flushed as it is scored: {"path", "probability", "top", "top_probability"} (with
`--boxes`, a match also has "size" [w, h] and "boxes" [{"box": [x0, y0, x1, y1], "probability"}]
in photo pixels), or {"path", "error"}. A failure retried by --resume appears twice: the last
line of a photo wins.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from .atomic import write_text
from .errors import BirdcnnError, display_path

LOG_FORMAT = "birdcnn-search"

# Header fields that make two logs parts of one search: key -> (name in messages, value in logs
# written before the field was recorded).
SETTINGS: dict[str, tuple[str, object]] = {
    "root": ("folder", None), "model": ("model", None), "class": ("class", None),
    "crops": ("--crops setting", False), "tta": ("--no-tta setting", None), "zoom": ("zoom view size", None),
    "boxes": ("--boxes setting", False),
    "shard": ("--shard", None), "min_probability": ("--min-probability", None),
}
# --resume may change the min probability (matches are recomputed from the probabilities),
# except with --boxes: it decided which photos were located.
RESUME_KEYS = ("root", "model", "class", "crops", "tta", "zoom", "boxes", "shard")


def setting(header: dict, key: str) -> object:
    """A header's value for `key`, with the default of logs written before it was recorded."""
    return header.get(key, SETTINGS[key][1])


def first_difference(a: dict, b: dict, keys: tuple[str, ...]) -> tuple[str, object, object] | None:
    """(name, a's value, b's value) of the first setting in `keys` where headers a and b differ."""
    for key in keys:
        if setting(a, key) != setting(b, key):
            return SETTINGS[key][0], setting(a, key), setting(b, key)
    return None


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_probability(v: object) -> bool:
    return _is_number(v) and 0 <= v <= 1


def _is_text(v: object) -> bool:
    """A str that can be written out as UTF-8 (JSON's "\\udc80" reads as a lone surrogate, which cannot)."""
    return isinstance(v, str) and not any("\ud800" <= ch <= "\udfff" for ch in v)


def _shown(v: object) -> str:
    """A JSON value for a message: short, one line (and no repr of a deeply nested value)."""
    if isinstance(v, dict) or isinstance(v, list) and any(isinstance(x, (dict, list)) for x in v):
        return "an object" if isinstance(v, dict) else "a nested list"
    return repr(v)[:60]


def _header_problem(header: dict) -> str | None:
    """What is wrong with a header line that names the search (None: nothing); see the module doc."""
    if "class" not in header:
        return 'no "class" (the class searched for)'
    if not _is_text(header["class"]) or not header["class"].isprintable() or not header["class"]:
        return f'"class" must be the class searched for (text), not {_shown(header["class"])}'
    if header.get("min_probability") is not None and not _is_probability(header["min_probability"]):
        return f'"min_probability" must be a number from 0 to 1, not {_shown(header["min_probability"])}'
    return None


def _is_box(b: object) -> bool:
    return (isinstance(b, dict) and _is_probability(b.get("probability")) and isinstance(b.get("box"), list)
            and len(b["box"]) == 4 and all(map(_is_number, b["box"])))


def _record_problem(rec: object) -> str | None:
    """What is wrong with a photo's line (None: nothing): every field a reader of the log uses
    (where its path lies is checked by `parse_log`, which works out the path within the folder once)."""
    if not isinstance(rec, dict):
        return f"not a photo's record: {_shown(rec)}"
    path = rec.get("path")
    if not isinstance(path, str) or not path:
        return f'"path" must be the photo\'s file name, not {_shown(path)}'
    if "error" in rec and not _is_text(rec["error"]):
        return f'"error" must be text, not {_shown(rec["error"])}'
    if "error" not in rec and "probability" not in rec:
        return 'neither "probability" nor "error"'
    for key in ("probability", "top_probability"):
        if key in rec and not _is_probability(rec[key]):
            return f'"{key}" must be a number from 0 to 1, not {_shown(rec[key])}'
    if "top" in rec and not _is_text(rec["top"]):
        return f'"top" must be a class name, not {_shown(rec["top"])}'
    size = rec.get("size")
    if size is not None and not (isinstance(size, list) and len(size) == 2
                                 and all(_is_number(v) and v > 0 for v in size)):
        return f'"size" must be the photo\'s [width, height] in pixels, not {_shown(size)}'
    boxes = rec.get("boxes")
    if boxes is not None and not (isinstance(boxes, list) and all(map(_is_box, boxes))):
        return f'"boxes" must be a list of {{"box": [x0, y0, x1, y1], "probability"}}, not {_shown(boxes)}'
    return None


@dataclass
class SearchLog:
    """A search's log as read: its header and each photo's last line, by path relative to the folder."""

    path: Path
    header: dict
    records: dict[str, dict] = field(default_factory=dict)
    dropped: int = 0          # lines that are not JSON (a half-written last line after kill -9)

    @property
    def folder(self) -> str:
        return self.header["folder"]

    def sorted_records(self) -> list[tuple[str, dict]]:
        """(relative path with forward slashes, record), in path order: the same whatever the
        order photos were scored in, so a merged search reads exactly like one run."""
        return sorted((rel.replace(os.sep, "/"), rec) for rel, rec in self.records.items())


def parse_log(path: str | os.PathLike, data: bytes) -> SearchLog:
    """A log from its bytes. Only complete lines count: a run killed mid-write leaves a partial one."""
    end = data.rfind(b"\n") + 1
    lines = data[:end].splitlines()
    try:
        header = json.loads(lines[0]) if lines else None
    except (ValueError, RecursionError):  # json raises RecursionError for a line nested too deeply
        header = None
    if (not isinstance(header, dict) or header.get("format") != LOG_FORMAT
            or not isinstance(header.get("folder"), str) or not header["folder"]):
        raise BirdcnnError(f"{display_path(path)}: not a birdcnn search results file (no header line)")
    problem = _header_problem(header)
    if problem:
        raise BirdcnnError(f"{display_path(path)}: line 1: {problem}")
    log = SearchLog(Path(path), header, dropped=int(end < len(data)))
    for n, line in enumerate(lines[1:], 2):
        try:
            rec = json.loads(line)
        except ValueError:  # not JSON (a line damaged by a crash): left out, and counted
            log.dropped += 1
            continue
        except RecursionError:
            raise BirdcnnError(f"{display_path(path)}: line {n}: nested too deeply to be a photo's record") from None
        problem = _record_problem(rec)
        if problem is None:
            rel = os.path.relpath(rec["path"], log.folder)
            if rel.split(os.sep)[0] == os.pardir:
                problem = f"{display_path(rec['path'])} is not in the folder searched, {display_path(log.folder)}"
        if problem:
            raise BirdcnnError(f"{display_path(path)}: line {n}: {problem}")
        log.records[rel] = rec
    return log


def read_log(path: str | os.PathLike) -> SearchLog:
    """Read a search log (a one-line error when it cannot be read or is not one)."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise BirdcnnError(f"{display_path(path)}: cannot read ({e.strerror or e})") from None
    return parse_log(path, data)


def is_search_log(path: str | os.PathLike) -> bool:
    """Whether `path` is an existing search log (read only as far as its header)."""
    try:
        with open(path, "rb") as f:
            first = f.readline(1 << 20)
        return json.loads(first).get("format") == LOG_FORMAT
    except (OSError, ValueError, AttributeError, RecursionError):
        return False


def write_log(path: str | os.PathLike, log: SearchLog) -> Path:
    """Write `log` whole (header, then the records in path order), atomically."""
    lines = [json.dumps(log.header)] + [json.dumps(rec) for _, rec in log.sorted_records()]
    return write_text(path, "\n".join(lines) + "\n")


class ResultLog:
    """The log of a running search: append-only, one flushed line per photo (see the module doc)."""

    def __init__(self, path: str | os.PathLike, header: dict, resume: bool):
        self.path = Path(path)
        self.done: dict[str, float] = {}  # relative path -> probability, from an earlier run
        self.dropped = 0                   # unreadable lines (a half-written last line after kill -9)
        exists = self.path.is_file() and self.path.stat().st_size > 0
        if exists and not resume:
            raise BirdcnnError(f"{self.path}: already exists (pass --resume to continue that search, "
                               "or choose another --output)")
        if exists:
            self._read(header)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._f = open(self.path, "a", encoding="utf-8")
        except OSError as e:
            raise BirdcnnError(f"{self.path}: cannot write ({e.strerror or e})") from None
        if not exists:
            self.write(header)
        self._since_sync = time.monotonic()

    def _read(self, header: dict) -> None:
        with open(self.path, "rb") as f:
            data = f.read()
        old = parse_log(self.path, data)
        end = data.rfind(b"\n") + 1
        if end < len(data):  # cut the partial line off, so that appended lines start clean
            with open(self.path, "r+b") as f:
                f.truncate(end)
        keys = RESUME_KEYS + (("min_probability",) if header.get("boxes") else ())
        diff = first_difference(old.header, header, keys)
        if diff:
            what, was, now = diff
            raise BirdcnnError(f"{self.path}: written for another {what} ({was!r}, now {now!r}); "
                               "use a new --output file")
        self.dropped = old.dropped
        # Failures are retried: the file may have been fixed since.
        self.done = {rel: float(rec["probability"]) for rel, rec in old.records.items() if "probability" in rec}

    def write(self, rec: dict) -> None:
        self._f.write(json.dumps(rec) + "\n")
        self._f.flush()  # survives kill -9

    def sync(self, force: bool = False) -> None:
        """fsync at most once a second: survives a power cut, losing at most the last second."""
        if force or time.monotonic() - self._since_sync > 1.0:
            os.fsync(self._f.fileno())
            self._since_sync = time.monotonic()

    def close(self) -> None:
        if not self._f.closed:
            self.sync(force=True)
            self._f.close()
