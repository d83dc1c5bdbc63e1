"""Where a command's results go when the user names no place: `runs/<command>-<date>/`
(Ultralytics-style run folders), decided here for every command."""
from __future__ import annotations

from datetime import datetime
from pathlib import Path


def default_run_dir(prefix: str = "train") -> Path:
    """A new run folder name under ./runs, e.g. runs/evaluate-20261129-201500."""
    return Path("runs") / f"{prefix}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
