"""Errors that reach the user as one clear line, never as a traceback."""
from __future__ import annotations

from pathlib import Path


class BirdcnnError(Exception):
    """A problem with the user's input or files: printed as one line, exit code 2."""

    exit_code = 2


class ImageError(BirdcnnError):
    """An image file that cannot be used; names the file and the problem."""

    def __init__(self, path: str | Path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")


class ModelFileError(BirdcnnError):
    """A model file that is missing, not ours, tampered with, or inconsistent with its metadata."""

    def __init__(self, path: str | Path, problem: str):
        self.path = str(path)
        super().__init__(f"{path}: {problem}")


class DataError(BirdcnnError):
    """A data source that cannot be read (missing, empty, corrupt, bad checksum)."""
