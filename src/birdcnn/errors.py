"""Errors that reach the user as one clear line, never as a traceback."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


def display_path(path: str | bytes | os.PathLike) -> str:
    """A file name as one line of valid text, for messages, plain output, figure titles and JSON.

    Printable names come back unchanged. Others are quoted the way bash writes them, $'...':
    bytes that are not text in the file system's encoding (a Latin-1 "é" on a UTF-8 system,
    which Python holds as a lone surrogate that cannot be printed or saved as UTF-8) become
    \\xNN, and control characters \\n, \\t, \\x1b...: a name is always one line, and can be
    pasted back into a shell.
    """
    text = os.fsdecode(path)
    if text.isprintable():
        return text
    out = []
    for ch in text:
        if "\udc80" <= ch <= "\udcff":  # surrogateescape's stand-in for an undecodable byte
            out.append(f"\\x{ord(ch) - 0xdc00:02x}")
        elif ch in "\\'":
            out.append("\\" + ch)
        elif ch.isprintable():
            out.append(ch)
        else:
            out.append(ch.encode("unicode_escape").decode("ascii"))
    return "$'" + "".join(out) + "'"


@dataclass(frozen=True, order=True)
class FileProblem:
    """A file or folder that could not be used, and why: an unreadable photo, a folder that cannot
    be listed, a link loop. The run goes on without it and reports it. `path` is the name as given
    (str() shows it as `display_path` does); `serious`: its contents are missed (the run exits 1),
    not only a warning (a second link to a folder already scanned)."""

    path: str
    problem: str
    serious: bool = True

    def __str__(self) -> str:
        """'path: problem', the line people read (as ImageError says it)."""
        return f"{display_path(self.path)}: {self.problem}"


class BirdcnnError(Exception):
    """A problem with the user's input or files: printed as one line, exit code 2."""

    exit_code = 2


class ImageError(BirdcnnError):
    """An image file that cannot be used; names the file and the problem."""

    def __init__(self, path: str | Path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{display_path(path)}: {problem}")


class ModelFileError(BirdcnnError):
    """A model file that is missing, not ours, tampered with, or inconsistent with its metadata."""

    def __init__(self, path: str | Path, problem: str):
        self.path = str(path)
        super().__init__(f"{display_path(path)}: {problem}")


class TrainingInterrupted(BirdcnnError):
    """Training stopped by Ctrl-C after saving a checkpoint: the message says how to resume."""

    exit_code = 130


class DataError(BirdcnnError):
    """A data source that cannot be read (missing, empty, corrupt, bad checksum)."""
