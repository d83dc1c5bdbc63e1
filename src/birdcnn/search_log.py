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


def _is_record(rec: object) -> bool:
    return (isinstance(rec, dict) and isinstance(rec.get("path"), str)
            and (isinstance(rec.get("probability"), (int, float)) or isinstance(rec.get("error"), str)))


@dataclass
class SearchLog:
    """A search's log as read: its header and each photo's last line, by path relative to the folder."""

    path: Path
    header: dict
    records: dict[str, dict] = field(default_factory=dict)
    dropped: int = 0          # lines that are not records (a half-written last line after kill -9)

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
    except ValueError:
        header = None
    if not isinstance(header, dict) or header.get("format") != LOG_FORMAT or not isinstance(header.get("folder"), str):
        raise BirdcnnError(f"{display_path(path)}: not a birdcnn search results file (no header line)")
    log = SearchLog(Path(path), header, dropped=int(end < len(data)))
    for line in lines[1:]:
        try:
            rec = json.loads(line)
        except ValueError:
            rec = None
        if _is_record(rec):
            log.records[os.path.relpath(rec["path"], log.folder)] = rec
        else:
            log.dropped += 1
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
    except (OSError, ValueError, AttributeError):
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
