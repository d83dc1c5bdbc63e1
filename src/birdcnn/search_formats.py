"""Search results as files other programs read: CSV for spreadsheets and scripts, and the
MegaDetector batch-output JSON that camera-trap tools (Timelapse, AddaxAI) read.

Both are rendered from the search's JSON-lines log (search_log.py), which stays the resumable
record: at the end of a search, after Ctrl-C (what was scored so far), and by --merge. Each is
written whole and atomically, so a reader never meets half a file. Photos come in path order.

MegaDetector (https://lila.science/megadetector-output-format): one detection category, the
class searched for ("1": "bird"). Without boxes, every photo gets one whole-frame detection,
bbox [0, 0, 1, 1], conf = its probability, whether or not it reaches the min probability: as
MegaDetector keeps low-confidence detections and camera-trap tools filter by conf themselves
(the min probability is given as `typical_detection_threshold`, the default Timelapse offers).
A probability that rounds to 0 is no detection (an empty list, as MegaDetector writes it). With
--boxes, a matched photo's detections are its `locate` boxes (conf: the window's probability);
a match without a box, and every photo below the min probability, keeps the whole frame. The
whole-frame detection carries the photo's top class as its classification.
"""
from __future__ import annotations

import csv
import io
import json
import os
import time
from pathlib import Path

from .atomic import write_text
from .errors import BirdcnnError, display_path
from .search_log import SearchLog, write_log

FORMATS = ("jsonl", "csv", "megadetector")
_BY_SUFFIX = {".csv": "csv", ".json": "megadetector", ".jsonl": "jsonl"}
MD_FORMAT_VERSION = "1.4"
CONF_DIGITS, COORD_DIGITS = 3, 4  # as MegaDetector rounds them
CSV_COLUMNS = ("file", "path", "label", "match", "probability", "top_class", "top_probability", "boxes", "error")


def format_of(path: str | os.PathLike, fmt: str | None = None) -> str:
    """`fmt` when given, else the one `path`'s suffix names (.csv, .json: MegaDetector), else jsonl."""
    return fmt or _BY_SUFFIX.get(Path(path).suffix.lower(), "jsonl")


def target_name(target: str) -> str:
    """The searched class(es) as one name: "bird", "cat or dog"."""
    return target.replace(",", " or ")


# ---------------------------------------------------------------- CSV

def _csv_row(file: str, rec: dict, target: str, min_probability: float) -> list:
    if "error" in rec:
        return [display_path(file), display_path(rec["path"]), "", "", "", "", "", "", rec["error"]]
    p = rec["probability"]
    match = p >= min_probability
    boxes = json.dumps(rec["boxes"], separators=(",", ":")) if rec.get("boxes") else ""
    return [display_path(file), display_path(rec["path"]), target if match else f"not {target}",
            "true" if match else "false", p, rec.get("top", ""), rec.get("top_probability", ""), boxes, ""]


def csv_text(log: SearchLog, min_probability: float) -> str:
    """A header row, then one row per photo (a photo that could not be read: its `error` filled,
    the scores empty). `boxes`: the --boxes of a match, JSON as `birdcnn locate --json` prints them."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    target = target_name(log.header["class"])
    for file, rec in log.sorted_records():
        w.writerow(_csv_row(file, rec, target, min_probability))
    return buf.getvalue()


# ---------------------------------------------------------------- MegaDetector batch output

def _bbox(box: list[float], size: list[int]) -> list[float]:
    """[x0, y0, x1, y1] in photo pixels -> [x_min, y_min, width, height] as fractions of the photo."""
    w, h = size
    x0, y0 = min(1.0, max(0.0, box[0] / w)), min(1.0, max(0.0, box[1] / h))
    x1, y1 = min(1.0, max(x0, box[2] / w)), min(1.0, max(y0, box[3] / h))
    return [round(v, COORD_DIGITS) for v in (x0, y0, x1 - x0, y1 - y0)]


def _detections(rec: dict, min_probability: float, top_ids: dict[str, str]) -> list[dict]:
    if rec.get("boxes") and rec.get("size") and rec["probability"] >= min_probability:
        return [{"category": "1", "conf": round(float(b["probability"]), CONF_DIGITS),
                 "bbox": _bbox(b["box"], rec["size"])} for b in rec["boxes"]]
    conf = round(float(rec["probability"]), CONF_DIGITS)
    if conf == 0:
        return []
    det = {"category": "1", "conf": conf, "bbox": [0.0, 0.0, 1.0, 1.0]}
    if "top" in rec:
        det["classifications"] = [[top_ids[rec["top"]], round(float(rec.get("top_probability", 0)), CONF_DIGITS)]]
    return [det]


def _md_image(file: str, rec: dict, min_probability: float, top_ids: dict[str, str]) -> dict:
    if "error" in rec:
        return {"file": display_path(file), "failure": rec["error"], "detections": None}
    dets = _detections(rec, min_probability, top_ids)
    return {"file": display_path(file), "detections": dets,
            "max_detection_conf": max((d["conf"] for d in dets), default=0.0)}


def detector_name(header: dict) -> str:
    """What made the results: birdcnn's version and the model's weights fingerprint."""
    return f"birdcnn {header.get('version', '')} model {str(header.get('model', ''))[:12]}".replace("  ", " ")


def megadetector(log: SearchLog, min_probability: float, completed: str | None = None) -> dict:
    """The search as a MegaDetector batch-output document (see the module doc for the choices)."""
    records = log.sorted_records()
    tops = sorted({rec["top"] for _, rec in records if "top" in rec})
    top_ids = {name: str(i) for i, name in enumerate(tops)}
    completed = completed or time.strftime("%Y-%m-%d %H:%M:%S")
    name = detector_name(log.header)
    info = {"format_version": MD_FORMAT_VERSION, "detector": name, "detection_completion_time": completed,
            "detector_metadata": {"typical_detection_threshold": round(min_probability, CONF_DIGITS)}}
    if tops:
        info.update(classifier=name, classification_completion_time=completed)
    doc = {"info": info, "detection_categories": {"1": target_name(log.header["class"])}}
    if tops:
        doc["classification_categories"] = {i: top for top, i in top_ids.items()}
    doc["images"] = [_md_image(file, rec, min_probability, top_ids) for file, rec in records]
    return doc


# ---------------------------------------------------------------- writing

def write_output(log: SearchLog, out: str | os.PathLike, fmt: str, min_probability: float) -> Path:
    """Write `log` to `out` as `fmt` (jsonl: the log itself, whole), atomically."""
    out = Path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        if fmt == "jsonl":
            return write_log(out, log)
        if fmt == "csv":
            return write_text(out, csv_text(log, min_probability))
        return write_text(out, json.dumps(megadetector(log, min_probability), indent=1) + "\n")
    except OSError as e:
        raise BirdcnnError(f"{display_path(out)}: cannot write ({e.strerror or e})") from None
