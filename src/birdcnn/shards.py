"""Splitting one search over many machines (`--shard K/N`) and joining the parts (`--merge`).

A photo belongs to shard K of N when the sha1 of its path relative to the searched folder (UTF-8,
forward slashes), read as a number, is K-1 modulo N. Every machine computes the same split from
the file names alone, without talking to the others, and a photo added later lands in one shard
whatever else changed. Each shard is an ordinary search with its own --output log, resumable on
its own; `merge_logs` joins the logs, refusing any that are not parts of one search.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import re
from dataclasses import dataclass

from .errors import BirdcnnError, display_path
from .search_log import SETTINGS, SearchLog, first_difference, read_log

# What shards of one search share (the shard itself differs, by design).
MERGE_KEYS = tuple(k for k in SETTINGS if k != "shard")


def shard_of(rel: str, count: int) -> int:
    """The shard (1..count) of the photo at `rel`, its path relative to the searched folder."""
    key = rel.replace(os.sep, "/").encode("utf-8", "surrogateescape")  # undecodable names: their own bytes
    return int.from_bytes(hashlib.sha1(key).digest()[:8], "big") % count + 1


@dataclass(frozen=True)
class Shard:
    """Shard `index` (1-based) of `count`."""

    index: int
    count: int

    @classmethod
    def parse(cls, text: str) -> Shard:
        """'2/8' -> Shard(2, 8); ValueError saying what is wrong otherwise."""
        m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
        if not m:
            raise ValueError(f"must be K/N, this machine's part K of N parts (e.g. 2/8), not {text!r}")
        k, n = int(m[1]), int(m[2])
        if n < 1:
            raise ValueError(f"N must be 1 or more, not {n} (in {text!r})")
        if not 1 <= k <= n:
            raise ValueError(f"K must be from 1 to N={n}, not {k} (in {text!r}; K counts from 1, "
                             "so a SLURM array is --array=1-N)")
        return cls(k, n)

    def holds(self, rel: str) -> bool:
        return shard_of(rel, self.count) == self.index

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def shard_argument(text: str) -> Shard:
    """argparse type for --shard: a bad value is a one-line usage error naming the option."""
    try:
        return Shard.parse(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _shard(log: SearchLog) -> Shard | None:
    text = log.header.get("shard")
    if text is None:
        return None
    try:
        return Shard.parse(str(text))
    except ValueError:
        raise BirdcnnError(f"{display_path(log.path)}: unreadable shard {text!r} in its header line") from None


def _check_same_search(logs: list[SearchLog]) -> None:
    first = logs[0]
    for log in logs[1:]:
        diff = first_difference(first.header, log.header, MERGE_KEYS)
        if diff:
            what, a, b = diff
            raise BirdcnnError(f"{display_path(log.path)}: made with another {what} than {display_path(first.path)} "
                               f"({b!r} vs {a!r}): only shards of one search can be merged")


def _check_shards(logs: list[SearchLog]) -> None:
    """The logs are the N shards of one split, each once: no photo twice, none missing."""
    if len(logs) == 1 and _shard(logs[0]) is None:
        return  # one whole search: merged alone it is converted (to CSV, MegaDetector...)
    seen: dict[Shard, SearchLog] = {}
    for log in logs:
        s = _shard(log)
        if s is None:
            raise BirdcnnError(f"{display_path(log.path)}: a whole search (no --shard): it overlaps every other "
                               "log given; merge the shards of one search")
        count = next(iter(seen)).count if seen else s.count
        if s.count != count:
            other = next(iter(seen.values()))
            raise BirdcnnError(f"{display_path(log.path)}: shard {s}, but {display_path(other.path)} is one of "
                               f"{count} shards: shards of one search split it the same way")
        if s in seen:
            raise BirdcnnError(f"{display_path(log.path)}: shard {s} again (also {display_path(seen[s].path)}): "
                               "each shard must be given once")
        seen[s] = log
    missing = [f"{k}/{count}" for k in range(1, count + 1) if Shard(k, count) not in seen]
    if missing:
        raise BirdcnnError(f"shard {', '.join(missing)} missing: the {len(logs)} logs given are not all "
                           f"{count} shards of the search")


def merge_logs(paths: list[str | os.PathLike]) -> SearchLog:
    """One log holding every photo of the shard logs at `paths`, as one unsharded search would.

    Refused, naming the file: a log that is not a search log, logs made with another model,
    class, folder or setting, a shard given twice, shards of different splits, or a missing shard.
    """
    logs = [read_log(p) for p in paths]
    _check_same_search(logs)
    _check_shards(logs)
    first = logs[0]
    # Joined, the shards are the whole search; one log alone keeps its header (a shard stays one).
    header = first.header if len(logs) == 1 else {**first.header, "shard": None,
                                                  "merged": [str(_shard(log)) for log in logs]}
    merged = SearchLog(first.path, header, dropped=sum(log.dropped for log in logs))
    for log in logs:
        for rel, rec in log.records.items():
            # The same folder given another way (a relative path from elsewhere): paths as in the first log.
            same = log.folder == first.folder
            merged.records[rel] = rec if same else {**rec, "path": os.path.join(first.folder, rel)}
    return merged
